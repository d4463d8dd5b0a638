#!/usr/bin/env bash
# Set up, then run the main job on the embedded default model: quantize it to Q8_0
# (the microcontroller build), tell a story with the C runtime on this machine and
# benchmark it, plan it for a Cortex-M4 board, then build it for a 64-bit ARM board
# and run it there, emulated (QEMU user mode; the demo installs what it needs).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh demo   # with the report extra, so `edgellama bench report --png` works afterwards
el=.venv/bin/edgellama
mkdir -p build/demo
set -x
$el inspect | head -7
$el export edgellama/models/tinystories-850k.gguf --quant q8_0 -o build/demo/model-q8_0.gguf
$el inspect build/demo/model-q8_0.gguf | sed -n '1,2p;6p'
$el generate "once upon a time" --model build/demo/model-q8_0.gguf --max-tokens 150 --seed 42
program=$(.venv/bin/python -c "from edgellama.runtime.build import host_program; print(host_program())")
"$program" build/demo/model-q8_0.gguf bench --repetitions 3
$el plan --board mps2-an386 --quant q8_0 | sed -n '1,4p;15,17p'
$el toolchains install --board qemu-aarch64
$el generate --board qemu-aarch64 --quant q8_0 -o build/demo/qemu-aarch64 --seed 42 --max-tokens 60 "once upon a time"
