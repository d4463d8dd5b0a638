"""`pip install .` (not editable) ships everything, and building/inspecting needs no torch."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # training, a fresh virtual environment, or Hugging Face models

REPO = Path(__file__).resolve().parent.parent

# Runs edgellama with torch made unimportable, from wherever PYTHONPATH points.
NO_TORCH = ("import sys; sys.modules['torch'] = None; from edgellama.cli import main; "
            "main(sys.argv[1:], prog_name='edgellama')")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(REPO)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return next(out.glob("edgellama-*.whl"))


def test_wheel_carries_runtime_boards_toolchains_and_default_model(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for folder in ("firmware", "boards", "toolchains"):
        shipped = {n for n in names if n.startswith(f"edgellama/_share/{folder}/")}
        in_repo = {f"edgellama/_share/{folder}/{p.relative_to(REPO / folder)}"
                   for p in (REPO / folder).rglob("*") if p.is_file()}
        assert in_repo and in_repo <= shipped, folder
    assert "edgellama/models/tinystories-850k.gguf" in names


def test_installed_wheel_finds_its_files_through_the_package(wheel, tmp_path):
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}
    probe = ("from edgellama.resources import share_dir, DEFAULT_MODEL; "
             "print(share_dir('firmware')); print(share_dir('boards')); print(DEFAULT_MODEL.is_file(), DEFAULT_MODEL)")
    r = subprocess.run([sys.executable, "-c", probe], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert all(line.startswith("True " + str(target)) or line.startswith(str(target)) for line in lines), lines
    # The default model is usable with torch unavailable.
    r = subprocess.run([sys.executable, "-c", NO_TORCH, "inspect"], cwd=elsewhere, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "tinystories-850k" in r.stdout and "Q8_0" not in r.stdout.split("tensor")[0]


def test_installed_wheel_builds_and_runs_the_c_runtime(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin", "EDGELLAMA_CACHE": str(tmp_path / "cache"),
           "HOME": str(tmp_path)}
    code = ("from edgellama import LLM, SamplingParams; import edgellama.runtime.build as b; "
            "print(b.firmware_dir()); o = LLM().generate('once upon a time', SamplingParams(temperature=0, "
            "max_tokens=8), use_tqdm=False)[0]; print(len(o.outputs[0].token_ids))")
    r = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    firmware, count = r.stdout.split()
    assert firmware.startswith(str(target)) and count == "8"
    assert list((tmp_path / "cache" / "build").glob("edgellama-runtime-*.so"))


def test_convert_and_quantize_without_torch(tmp_path, shared_data):
    cmds = [["import", "llama2c", shared_data / "stories260K.bin", "--tokenizer", shared_data / "tok512.bin",
             "-o", tmp_path / "a.gguf"],
            ["export", tmp_path / "a.gguf", "--quant", "q4_0", "-o", tmp_path / "b.gguf"],
            ["inspect", tmp_path / "b.gguf"]]
    for cmd in cmds:
        r = subprocess.run([sys.executable, "-c", NO_TORCH, *map(str, cmd)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    assert "Q4_0" in r.stdout
