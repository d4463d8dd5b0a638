"""PlatformIO boards (esp32-s3, rpi-pico2): the generated project for the default model
in Q8_0. PlatformIO cannot fetch its platforms here, so the project is checked, not
built by pio: platformio.ini through PlatformIO's own parser, the weights' placement,
and the RP2350 sources compiled and linked with arm-none-eabi-gcc for a Cortex-M33."""

import dataclasses
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from edgellama.boards import builder
from edgellama.boards.targets import platformio as pio_target
from edgellama.errors import EdgeLlamaError

REPO = Path(__file__).resolve().parent.parent
# ctx per board: the Pico 2's 400 KiB arena holds 144 tokens of the default model's
# context (the planner's figure); the ESP32-S3's PSRAM arena holds all 512
CTX = {"esp32-s3": None, "rpi-pico2": 128}
M33 = ["-mcpu=cortex-m33", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv5-sp-d16"]
C_FLAGS = [*M33, "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-ffreestanding", "-O2",
           "-ffp-contract=off", "-fno-tree-loop-distribute-patterns"]


@pytest.fixture(scope="module")
def projects(tmp_path_factory):
    """{board: BuildResult} of `export_c` (the builder's path: model, plan check, emit)."""
    root = tmp_path_factory.mktemp("pio")
    return {name: builder.export_c(name, None, "q8_0", root / name, ctx) for name, ctx in CTX.items()}


def ini_path(result) -> Path:
    return result.out_dir / "src" / "platformio.ini"


def read_config(result):
    platformio_config = pytest.importorskip("platformio.project.config")
    config = platformio_config.ProjectConfig(str(ini_path(result)))
    assert config.validate(silent=True)
    config.as_tuple()  # every option read as its declared type
    assert config.warnings == []  # an unknown option would be warned about here
    return config


@pytest.mark.parametrize("name", list(CTX))
def test_platformio_ini_validates(projects, name):
    result = projects[name]
    config = read_config(result)
    board = result.context.board
    assert config.envs() == [name] and config.default_envs() == [name]
    section = f"env:{name}"
    assert config.get(section, "platform") == board.platformio["platform"]
    assert config.get(section, "board") == board.platformio["board"]
    assert config.get(section, "framework") == [board.platformio["framework"]]
    src_flags = config.get(section, "build_src_flags")
    assert "-ffp-contract=off" in src_flags and "-I$PROJECT_DIR/data" in src_flags
    assert f'-DEL_BOARD_NAME=\\"{name}\\"' in src_flags
    manifest = json.loads((result.out_dir / "manifest.json").read_text())
    assert manifest["platformio"]["env"] == name and manifest["flags"]["cflags"] == src_flags


@pytest.mark.parametrize("name", list(CTX))
def test_weights_in_flash_and_arena_placed(projects, name):
    result = projects[name]
    project = result.out_dir / "src"
    model = result.context.model_path
    assert model.read_bytes()[:4] == b"GGUF"
    assert (project / "data" / "model.gguf").read_bytes() == model.read_bytes()
    asm = (project / "src" / "el_model_flash.S").read_text()
    assert re.search(r"\.section\s+\.rodata\.el_model", asm) and ".balign 32" in asm
    assert '.incbin EL_MODEL_FILE' in asm and '#define EL_MODEL_FILE "model.gguf"' in asm
    ini = ini_path(result).read_text()
    board = result.context.board
    if name == "esp32-s3":
        assert "-DBOARD_HAS_PSRAM" in ini and "-DEL_ARENA_PSRAM=1" in ini
        assert "board_build.arduino.memory_type = qio_opi" in ini
        assert "board_build.partitions = default_16MB.csv" in ini  # a 6.25 MB app partition
        assert "board_upload.flash_size = 16MB" in ini
        assert board.arena > board.ram
    else:
        assert "-DEL_ARENA_PSRAM=0" in ini and "PSRAM" not in ini.split("[env:")[1].replace("EL_ARENA_PSRAM", "")
        assert f"-DEL_ARENA_BYTES={board.arena}" in ini and board.arena < board.ram
        assert "-DEL_MAX_MODEL_LEN=128" in ini


@pytest.mark.parametrize("name", list(CTX))
def test_plan_fits(projects, name):
    planner = pytest.importorskip("edgellama.boards.planner")
    board = projects[name].context.board
    plan = planner.plan(board, None, CTX[name], "q8_0")
    assert plan.fits, plan.reasons
    assert plan.weights_location == "flash"
    in_psram = pio_target.arena_in_psram(projects[name].context)
    assert plan.arena_location == ("PSRAM" if in_psram else "RAM")


def test_pico2_keeps_flash_for_models_over_the_line(projects, tmp_path):
    """The Pico 2's board file keeps 2 MiB of flash for models sent over the serial line:
    the project sizes the core's filesystem region to it, the port's store is compiled in,
    and the planner no longer offers that flash to the image's own model."""
    planner = pytest.importorskip("edgellama.boards.planner")
    board = projects["rpi-pico2"].context.board
    assert board.model_store == 2 << 20
    ini = ini_path(projects["rpi-pico2"]).read_text()
    assert re.search(r"^board_build\.filesystem_size = 2m$", ini, re.MULTILINE)
    assert "-DEL_PORT_MODEL_STORE=1" in ini and "filesystem_size" not in ini_path(projects["esp32-s3"]).read_text()
    plan = planner.plan(board, None, CTX["rpi-pico2"], "q8_0")
    without = planner.plan(dataclasses.replace(board, model_store=0), None, CTX["rpi-pico2"], "q8_0")
    assert without.weights_room - plan.weights_room == 2 << 20
    assert any("kept for models over the line" in note for note in plan.notes)
    # a store the image's own model would not fit beside: the image keeps the flash, with no store
    big = dataclasses.replace(board, model_store=board.flash - (600 << 10))  # leaves 88 KiB beside the program
    crowded = planner.plan(big, None, CTX["rpi-pico2"], "q8_0")
    assert crowded.fits and crowded.weights_room == without.weights_room
    assert any(note.startswith("no model store") for note in crowded.notes)
    # the default model in F32 (3.4 MB) needs that flash itself: its image builds as before, without a store
    f32 = ini_path(builder.export_c("rpi-pico2", None, "f32", tmp_path / "f32", CTX["rpi-pico2"])).read_text()
    assert "filesystem_size" not in f32 and "EL_PORT_MODEL_STORE" not in f32


def _run(cmd, cwd=None):
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, check=False, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(map(str, cmd))}\n{result.stdout}{result.stderr}"
    return result.stdout


STUB_PORT = r"""
/* The Arduino port's functions for a link test: no UART, a static arena. */
#include "el_port.h"
#include "el_runtime.h"

int el_app_main(void);
void _start(void);
el_runtime *el_port_runtime_open(void *memory, size_t memory_size, const uint8_t *model, size_t model_size,
                                 const el_engine_options *options, el_error *err);

static unsigned char stub_arena[4096] __attribute__((aligned(64)));
void port_init(void) {}
void port_putc(int c) { (void)c; }
int port_getc(void) { return '\n'; }
void port_exit(int code) { (void)code; for (;;) continue; }
uint64_t port_ticks(void) { return 0; }
uint32_t port_tick_hz(void) { return 0; }
el_runtime *el_port_runtime_open(void *memory, size_t memory_size, const uint8_t *model, size_t model_size,
                                 const el_engine_options *options, el_error *err)
{
    (void)memory;
    (void)memory_size;
    return el_runtime_open(stub_arena, sizeof stub_arena, model, model_size, options, err);
}
void _start(void) { el_app_main(); }
"""


def test_pico2_sources_compile_and_link_for_cortex_m33(projects, tmp_path):
    if not shutil.which("arm-none-eabi-gcc"):
        pytest.skip("arm-none-eabi-gcc is not installed (apt-get install gcc-arm-none-eabi)")
    project = projects["rpi-pico2"].out_dir / "src"
    src = project / "src"
    sources = sorted(src.glob("*.c"))
    assert {s.name for s in sources} >= {"el_app_arduino.c", "el_runtime.c", "el_engine.c"}
    objects = []
    for source in sources:  # every C source of the project, as C99 with warnings as errors
        obj = tmp_path / (source.stem + ".o")
        _run(["arm-none-eabi-gcc", *C_FLAGS, f"-I{src}", "-c", source, "-o", obj])
        objects.append(obj)
    blob = tmp_path / "el_model_flash.o"
    _run(["arm-none-eabi-gcc", *M33, f"-I{project / 'data'}", "-c", src / "el_model_flash.S", "-o", blob])
    model = (project / "data" / "model.gguf").read_bytes()
    section = tmp_path / "section.bin"
    _run(["arm-none-eabi-objcopy", "-O", "binary", "--only-section=.rodata.el_model", blob, section])
    assert section.read_bytes() == model  # the file, byte for byte
    assert re.search(r"\.rodata\.el_model\s.*\b32$", _run(["arm-none-eabi-readelf", "-SW", blob]), re.MULTILINE), \
        "the weights' section is not 32-byte aligned"
    # link with a stub port and the bare-metal app's libc-free memcpy & co.
    stub = tmp_path / "stub_port.c"
    stub.write_text(STUB_PORT)
    extra = []
    for source in (stub, REPO / "firmware" / "apps" / "baremetal" / "el_freestanding.c"):
        obj = tmp_path / (source.stem + "_stub.o")
        _run(["arm-none-eabi-gcc", *C_FLAGS, f"-I{src}", "-c", source, "-o", obj])
        extra.append(obj)
    elf = tmp_path / "edgellama-pico2.elf"
    _run(["arm-none-eabi-gcc", *M33, "-nostdlib", "-Wl,--entry=_start", "-o", elf, *objects, blob, *extra,
          "-lgcc"])
    symbols = {}
    for line in _run(["arm-none-eabi-nm", elf]).splitlines():
        parts = line.split()
        if len(parts) == 3:
            symbols[parts[2]] = int(parts[0], 16)
    start, end = symbols["el_model_start"], symbols["el_model_end"]
    assert start % 32 == 0 and end - start == len(model)
    assert {"el_app_main", "el_runtime_open", "el_port_runtime_open"} <= set(symbols)
    # the linked image holds the weights at el_model_start
    headers = _run(["arm-none-eabi-objdump", "-h", elf])
    m = re.search(r"^\s*\d+\s+\.rodata\s+([0-9a-f]+)\s+([0-9a-f]+)", headers, re.MULTILINE)
    assert m, headers
    rodata = tmp_path / "rodata.bin"
    _run(["arm-none-eabi-objcopy", "-O", "binary", "--only-section=.rodata", elf, rodata])
    offset = start - int(m.group(2), 16)
    assert rodata.read_bytes()[offset:offset + len(model)] == model


AN386_GLUE = r"""
/* The Arduino port's arena and entry, for running the project's sources on the AN386. */
#include "el_port.h"
#include "el_runtime.h"

int el_app_main(void);
int main(void);
el_runtime *el_port_runtime_open(void *memory, size_t memory_size, const uint8_t *model, size_t model_size,
                                 const el_engine_options *options, el_error *err);

static unsigned char arena[EL_ARENA_BYTES] __attribute__((aligned(64)));
el_runtime *el_port_runtime_open(void *memory, size_t memory_size, const uint8_t *model, size_t model_size,
                                 const el_engine_options *options, el_error *err)
{
    el_engine_options opts = *options;
    (void)memory;
    (void)memory_size;
    if (opts.max_batch_tokens == 0) opts.max_batch_tokens = EL_MAX_BATCH_TOKENS;
    return el_runtime_open(arena, sizeof arena, model, model_size, &opts, err);
}
int main(void) { return el_app_main(); }
"""


@pytest.mark.emulated
def test_pico2_sources_run_on_an_emulated_cortex_m(projects, tmp_path):
    """The project's own sources (the runtime, the main loop through el_app_arduino.c, the
    weights through el_model_flash.S) with the Pico 2's settings, on QEMU's mps2-an386
    (a Cortex-M4F: no Arduino core here, so the AN386 port stands in for it), give the
    host's greedy text, in the Pico 2's arena."""
    port = REPO / "firmware" / "ports" / "mps2-an386"
    if not shutil.which("arm-none-eabi-gcc") or not shutil.which("qemu-system-arm"):
        pytest.skip("needs arm-none-eabi-gcc and qemu-system-arm")
    assert all((port / f).is_file() for f in ("startup.c", "port.c", "link.ld"))
    from edgellama.runtime.build import host_program
    result = projects["rpi-pico2"]
    project = result.out_dir / "src"
    src = project / "src"
    ini = ini_path(result).read_text()
    defines = re.findall(r"^\s+(-DEL_\w+=\S+)$", ini, re.MULTILINE)
    defines = [d.replace('\\"', '"') for d in defines]
    m4 = ["-mcpu=cortex-m4", "-mthumb", "-mfpu=fpv4-sp-d16", "-mfloat-abi=hard"]
    flags = [*m4, *C_FLAGS[len(M33):], *defines, f"-I{src}"]
    glue = tmp_path / "glue.c"
    glue.write_text(AN386_GLUE)
    objects = []
    app = REPO / "firmware" / "apps" / "baremetal"
    for source in [*sorted(src.glob("*.c")), glue, port / "startup.c", port / "port.c", app / "el_memory_store.c",
                   app / "el_freestanding.c"]:
        obj = tmp_path / f"{source.parent.name}_{source.stem}.o"
        _run(["arm-none-eabi-gcc", *flags, "-c", source, "-o", obj])
        objects.append(obj)
    blob = tmp_path / "el_model_flash.o"
    _run(["arm-none-eabi-gcc", *m4, f"-I{project / 'data'}", "-c", src / "el_model_flash.S", "-o", blob])
    (tmp_path / "regions.ld").write_text('REGION_ALIAS("WEIGHTS", FLASH);\nREGION_ALIAS("ARENA", RAM);\n')
    elf = tmp_path / "app.elf"
    _run(["arm-none-eabi-gcc", *m4, "-nostdlib", "-T", port / "link.ld", f"-L{tmp_path}", "-o", elf, *objects, blob,
          "-lgcc"])
    prompt = "Once upon a time"
    run = subprocess.run(["qemu-system-arm", "-M", "mps2-an386", "-cpu", "cortex-m4", "-nographic", "-monitor", "none",
                          "-semihosting-config", "enable=on,target=native", "-serial", "stdio", "-kernel", str(elf)],
                         input=f"{prompt}\n/exit\n", check=False, capture_output=True, text=True, timeout=120)
    lines = run.stdout.splitlines()
    assert run.returncode == 0 and lines[0].startswith("edgellama ") and "board=rpi-pico2" in lines[0], run.stdout
    arena = int(re.search(r"-DEL_ARENA_BYTES=(\d+)", ini).group(1))
    assert f"arena={arena}" in lines[0] and "ctx=128" in lines[0]
    stats = next(line for line in lines if line.startswith("[stats]"))
    assert int(re.search(r"arena_hw=(\d+)", stats).group(1)) <= arena
    text = run.stdout.split("\n", 1)[1].split("\n[stats]")[0]
    host = subprocess.run([str(host_program()), str(result.context.model_path), "generate", prompt, "--temperature", "0",
                           "--max-tokens", "128", "--max-model-len", "128", "--max-batch-tokens", "8"],
                          check=False, capture_output=True, text=True, timeout=120)
    assert host.returncode == 0, host.stderr
    assert len(text) > 40 and prompt + text == host.stdout.rstrip("\n")


STUB_ARDUINO_H = r"""
/* Just enough of Arduino.h (AVR/ESP32/RP2040 cores) to parse el_port_arduino.cpp. */
#pragma once
#include <stddef.h>
#include <stdint.h>
class StubSerial {
public:
    void begin(unsigned long) {}
    size_t write(uint8_t) { return 1; }
    int read() { return -1; }
    void flush() {}
    explicit operator bool() const { return true; }
};
extern StubSerial Serial;
void delay(unsigned long ms);
unsigned long micros(void);
void noInterrupts(void);
void interrupts(void);
#ifdef ARDUINO_ARCH_ESP32
extern "C" void *ps_malloc(size_t size);
#define SET_LOOP_TASK_STACK_SIZE(sz) size_t getArduinoLoopTaskStackSize(void) { return sz; }
#endif
#ifdef ARDUINO_ARCH_RP2040
class RP2040 {
public:
    void idleOtherCore();
    void resumeOtherCore();
};
extern RP2040 rp2040;
#endif
"""

# The vendor calls the model store makes (el_port_arduino.cpp), declared as their SDKs do:
# the pico-sdk's hardware/flash.h, and ESP-IDF's partition API in its 4.x (Arduino-ESP32 2.x)
# and 5.x (3.x) forms.
STUB_SDK_HEADERS = {
    "hardware/flash.h": r"""
#pragma once
#include <stddef.h>
#include <stdint.h>
#define FLASH_PAGE_SIZE (1u << 8)
#define FLASH_SECTOR_SIZE (1u << 12)
#define XIP_BASE 0x10000000u
extern "C" void flash_range_erase(uint32_t flash_offs, size_t count);
extern "C" void flash_range_program(uint32_t flash_offs, const uint8_t *data, size_t count);
""",
    "esp_idf_version.h": "#pragma once\n#define ESP_IDF_VERSION_MAJOR EL_STUB_IDF\n",
    "esp_spi_flash.h": r"""
#pragma once
#include <stdint.h>
#define SPI_FLASH_SEC_SIZE 4096
typedef enum { SPI_FLASH_MMAP_DATA, SPI_FLASH_MMAP_INST } spi_flash_mmap_memory_t;
typedef uint32_t spi_flash_mmap_handle_t;
""",
    "spi_flash_mmap.h": "#pragma once\n#define SPI_FLASH_SEC_SIZE 4096\n",
    "esp_partition.h": r"""
#pragma once
#include <stddef.h>
#include <stdint.h>
#include "esp_idf_version.h"
typedef int esp_err_t;
#define ESP_OK 0
typedef enum { ESP_PARTITION_TYPE_APP = 0x00, ESP_PARTITION_TYPE_DATA = 0x01 } esp_partition_type_t;
typedef enum { ESP_PARTITION_SUBTYPE_DATA_SPIFFS = 0x82 } esp_partition_subtype_t;
typedef struct { esp_partition_type_t type; esp_partition_subtype_t subtype; uint32_t address; uint32_t size; } esp_partition_t;
#if ESP_IDF_VERSION_MAJOR >= 5
typedef enum { ESP_PARTITION_MMAP_DATA, ESP_PARTITION_MMAP_INST } esp_partition_mmap_memory_t;
typedef uint32_t esp_partition_mmap_handle_t;
extern "C" esp_err_t esp_partition_mmap(const esp_partition_t *partition, size_t offset, size_t size,
                                        esp_partition_mmap_memory_t memory, const void **out_ptr,
                                        esp_partition_mmap_handle_t *out_handle);
#else
#include "esp_spi_flash.h"
extern "C" esp_err_t esp_partition_mmap(const esp_partition_t *partition, size_t offset, size_t size,
                                        spi_flash_mmap_memory_t memory, const void **out_ptr,
                                        spi_flash_mmap_handle_t *out_handle);
#endif
extern "C" const esp_partition_t *esp_partition_find_first(esp_partition_type_t type, esp_partition_subtype_t subtype,
                                                           const char *label);
extern "C" esp_err_t esp_partition_write(const esp_partition_t *partition, size_t dst_offset, const void *src,
                                         size_t size);
extern "C" esp_err_t esp_partition_erase_range(const esp_partition_t *partition, size_t offset, size_t size);
""",
}


@pytest.mark.parametrize("name,defines", [
    ("rpi-pico2", ["-DARDUINO_ARCH_RP2040"]),
    ("esp32-s3", ["-DARDUINO_ARCH_ESP32", "-DEL_ARENA_PSRAM=1", "-DEL_STUB_IDF=4"]),
    ("esp32-s3", ["-DARDUINO_ARCH_ESP32", "-DEL_ARENA_PSRAM=1", "-DEL_STUB_IDF=5"]),
])
def test_arduino_port_parses_as_cpp(projects, tmp_path, name, defines):
    """The port, its model store included (the project's own -DEL_PORT_MODEL_STORE), against
    Arduino's and the SDKs' declarations: no Arduino core or SDK is installed here."""
    gxx = shutil.which("arm-none-eabi-g++") or shutil.which("g++")
    if not gxx:
        pytest.skip("no C++ compiler")
    src = projects[name].out_dir / "src" / "src"
    (tmp_path / "Arduino.h").write_text(STUB_ARDUINO_H)
    for header, text in STUB_SDK_HEADERS.items():
        (tmp_path / header).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / header).write_text(text)
    assert "-DEL_PORT_MODEL_STORE=1" in ini_path(projects[name]).read_text()
    flags = M33 if "arm-none-eabi" in gxx else []
    _run([gxx, *flags, "-std=gnu++17", "-Wall", "-Wextra", "-Werror", "-fsyntax-only", f"-I{tmp_path}", f"-I{src}",
          "-DEL_PORT_MODEL_STORE=1", *defines, src / "el_port_arduino.cpp"])


def test_fetch_failure_explains_pio_output(monkeypatch):
    registry = ("Processing esp32-s3 (platform: espressif32; board: esp32-s3-devkitc-1; framework: arduino)\n"
                "-----\nPlatform Manager: Installing espressif32\nHTTPClientError: \n")
    monkeypatch.setattr(pio_target, "_resolve_error", lambda host, timeout=5.0: "[Errno -2] Name or service not known")
    reason = pio_target.fetch_failure(registry)
    assert reason.startswith("espressif32: pio said `HTTPClientError:`")
    assert "api.registry.platformio.org does not resolve here ([Errno -2]" in reason
    git = ("Platform Manager: Installing git+https://github.com/maxgerhardt/platform-raspberrypi.git\n"
           "fatal: unable to access 'https://github.com/x.git/': Could not resolve host: github.com\n"
           "VCSBaseException: VCS: Could not process command ['git', 'clone']\n")
    assert "Could not resolve host: github.com" in pio_target.fetch_failure(git)
    compiling = "Platform Manager: Installing x\nCompiling .pio/build/a.o\nsrc/a.c:1:1: error: boom\n"
    assert pio_target.fetch_failure(compiling) is None  # a compiler error is not a fetch failure


def test_compile_here_says_where_the_project_is(projects, tmp_path, monkeypatch):
    """Offline, `pio run` fails fetching the platform; the error says so and how to build.
    A platform given as a git URL fails in under a second (git cannot resolve github.com);
    the registry's name takes pio a minute of retries, so that path is the test above."""
    if pio_target.pio_command() is None:
        pytest.skip("PlatformIO is not installed")
    if pio_target._resolve_error("github.com") is None:
        pytest.skip("this machine reaches the network: pio would download a whole toolchain")
    monkeypatch.setenv("PLATFORMIO_CORE_DIR", str(tmp_path / "core"))  # leave ~/.platformio alone
    ctx = projects["rpi-pico2"].context
    pio = dict(ctx.board.platformio, platform="https://github.com/maxgerhardt/platform-raspberrypi.git",
               board="rpipico2")
    ctx = dataclasses.replace(ctx, board=dataclasses.replace(ctx.board, platformio=pio), out_dir=tmp_path / "out",
                              model_path=ctx.model_path, manifest={})
    pio_target.emit(ctx)
    with pytest.raises(EdgeLlamaError) as info:
        pio_target.compile(ctx)
    message = str(info.value)
    assert "PlatformIO could not fetch" in message and "nothing was compiled" in message
    assert "Could not resolve host: github.com" in message
    assert "edgellama export-c --board rpi-pico2 -o DIR" in message and "`pio run -d DIR/src`" in message
    assert str(ctx.src_dir) in message


def test_run_command_points_at_upload(projects):
    with pytest.raises(EdgeLlamaError, match=r"-t upload"):
        pio_target.run_command(projects["esp32-s3"].context, ["generate", "hi"])
