#!/usr/bin/env bash
# Create .venv with edgellama and what it needs, on a fresh Debian/Ubuntu machine.
#   scripts/setup.sh           toolchain with training (torch, CPU build)
#   scripts/setup.sh demo      the same plus the report extra (matplotlib, for `bench report --png`)
#   scripts/setup.sh test      the same plus the test dependencies
# torch goes in first, from the CPU-only wheel, so nothing later pulls a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="train"
[ "${1:-}" = "demo" ] && extras="train,report"
[ "${1:-}" = "test" ] && extras="train,test"
TORCH_VERSION=2.13.0

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {
    command -v apt-get >/dev/null || { echo "setup: please install: $*" >&2; exit 1; }
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

command -v python3 >/dev/null || apt_install python3 python3-venv
command -v cc >/dev/null || apt_install gcc libc6-dev   # the C runtime is built for the host on first use
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "setup: edgellama needs Python 3.11 or newer (found $(python3 --version 2>&1))" >&2; exit 1; }
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv 2>/dev/null || { rm -rf .venv; apt_install python3-venv; python3 -m venv .venv; }
fi
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
if ! .venv/bin/python -c "import torch, sys; sys.exit(not torch.__version__.startswith('$TORCH_VERSION'))" 2>/dev/null; then
    # A CPU wheel in pip's find-links (these machines have one) wins; else PyTorch's CPU index.
    if "${pip[@]}" --dry-run --no-index --no-deps "torch==$TORCH_VERSION" >/dev/null 2>&1; then
        "${pip[@]}" "torch==$TORCH_VERSION"
    else
        "${pip[@]}" "torch==$TORCH_VERSION" --index-url https://download.pytorch.org/whl/cpu
    fi
fi
"${pip[@]}" -e ".[$extras]"
if [ "${1:-}" = "test" ]; then
    # Cross compilers and QEMU for the emulated boards, as the board and toolchain files list them.
    .venv/bin/edgellama toolchains install --all
    # A real sshd on loopback for the SSH flash tests.
    { [ -x /usr/sbin/sshd ] && command -v ssh-keygen >/dev/null; } || apt_install openssh-server openssh-client
    # libFuzzer and the sanitizer runtimes for clang (tests/fuzz); clang-19 came with the RVV toolchain.
    ls /usr/lib/llvm-19/lib/clang/19/lib/linux/libclang_rt.fuzzer-x86_64.a >/dev/null 2>&1 \
        || [ "$(uname -m)" != x86_64 ] || apt_install clang-19 libclang-rt-19-dev
fi
echo "setup: .venv ready ($(.venv/bin/edgellama --version))"
