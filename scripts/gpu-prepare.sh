#!/usr/bin/env bash
# Builds, on this machine, what scripts/gpu-check.sh runs on a GPU machine that has no
# Rust toolchain: the `rewire` binary and the CUDA test binary, stripped of debug info,
# under gpu-bin/ (ignored by git). Carry gpu-bin (and data/fashion-mnist, optionally)
# to the GPU machine and run scripts/gpu-check.sh there.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --release --bins
# cargo's progress and any compile error go to the terminal; the JSON lines name the
# test binary
test_bin=$(cargo test --release --test cuda --no-run --message-format=json |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "cuda" and m.get("executable"):
        print(m["executable"])')
if [[ -z "$test_bin" || ! -x "$test_bin" ]]; then
    echo "error: the CUDA test binary was not built (see cargo's output above)" >&2
    exit 1
fi
# staged beside, then swapped in: an interrupted run leaves the old gpu-bin/ whole
rm -rf gpu-bin.new && mkdir -p gpu-bin.new
strip --strip-debug -o gpu-bin.new/rewire target/release/rewire
strip --strip-debug -o gpu-bin.new/cuda-tests "$test_bin"
rm -rf gpu-bin && mv gpu-bin.new gpu-bin
ls -la gpu-bin
