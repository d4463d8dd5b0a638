#!/usr/bin/env bash
# Fuzz the C edges for a long time: scripts/fuzz.sh [SECONDS] [HARNESS...]
# (default: 3600 s each, every harness: model tokenizer frames serve; FUZZ_RUNS=N also
# stops each after N executions). Corpora and any
# finding stay in build/fuzz/HARNESS/; copy a finding into tests/fuzz/regressions/HARNESS/
# so the test suite replays it from then on.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-3600}
shift || true
harnesses=("$@")
[ ${#harnesses[@]} -gt 0 ] || harnesses=(model tokenizer frames serve)
for name in "${harnesses[@]}"; do
    mkdir -p "build/fuzz/$name"
    .venv/bin/python tests/fuzz/harnesses.py "$name" "$seconds" "build/fuzz/$name"
done
