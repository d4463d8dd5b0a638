"""Guest instructions per generated token on every emulated board: the issue's
bench table, the stable cost figure across targets (wall time under QEMU is not).

    python scripts/bench_emulated.py [--quant f32 --quant q8_0 ...] [--tokens 33] [--prompt TEXT]

Each board is built with `edgellama build` (into a temporary directory) and run under
its QEMU with the instruction-counting TCG plugin (firmware/tools/qemu_insn_count.c).
Instructions per token = (count(greedy N tokens) - count(greedy 1 token)) / (N - 1),
EOS ignored: both runs load the model, prefill the prompt and sample the first token,
so the difference is N - 1 decode steps (forward, sampling, detokenizing, output),
averaged over positions 2..N of the context.
"""

import argparse
import tempfile
from pathlib import Path

from edgellama.boards import builder, emulator
from edgellama.boards.catalog import all_boards
from edgellama.model.loading import resolve


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quant", action="append", help="f32, q8_0, q4_0 (repeatable; default f32 and q8_0)")
    parser.add_argument("--tokens", type=int, default=33, help="N, the tokens of the long run (default 33)")
    parser.add_argument("--prompt", default="once upon a time")
    parser.add_argument("--model", help="GGUF model (default: the embedded model)")
    args = parser.parse_args()
    quants = args.quant or ["f32", "q8_0"]
    boards = [b for b in all_boards() if b.emulated]
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgellama-bench-") as tmp:
        for board in boards:
            for quant in quants:
                result = builder.build(board.name, args.model, quant, Path(tmp) / f"{board.name}-{quant}")
                r = emulator.instructions_per_token(board, result.out_dir, args.prompt, args.tokens)
                program = result.manifest["artifacts"][0]
                rows.append((board.name, board.cpu, quant, program["bytes"], r["instructions_1"],
                             r["instructions_per_token"]))
    print(f"prompt {args.prompt!r}, greedy, {args.tokens} tokens, model {resolve(args.model).name}")
    print("| board | cpu | quant | program bytes | instructions to the first token | guest instructions per token |")
    print("|---|---|---|---:|---:|---:|")
    for name, cpu, quant, size, first, per_token in rows:
        print(f"| {name} | {cpu} | {quant} | {size:,} | {first:,} | {per_token:,.0f} |")


if __name__ == "__main__":
    main()
