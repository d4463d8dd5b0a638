#!/usr/bin/env bash
# Set up, then run the main job on the embedded default model: quantize it to Q8_0
# (the microcontroller build), build the C runtime for this machine, tell a story
# with it, and benchmark it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
el=.venv/bin/edgellama
mkdir -p build/demo
set -x
$el inspect | head -7
$el export edgellama/models/tinystories-850k.gguf --quant q8_0 -o build/demo/model-q8_0.gguf
$el inspect build/demo/model-q8_0.gguf | sed -n '1,2p;6p'
$el generate "once upon a time" --model build/demo/model-q8_0.gguf --max-tokens 150 --seed 42
program=$(.venv/bin/python -c "from edgellama.runtime.build import host_program; print(host_program())")
"$program" build/demo/model-q8_0.gguf bench --repetitions 3
