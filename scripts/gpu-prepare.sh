#!/usr/bin/env bash
# Builds, on this machine, what scripts/gpu-check.sh runs on a GPU machine that has no
# Rust toolchain: the `rewire` binary and the CUDA test binary, stripped of debug info,
# under gpu-bin/ (ignored by git). Carry gpu-bin (and data/fashion-mnist, optionally)
# to the GPU machine and run scripts/gpu-check.sh there.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --release --bins
test_bin=$(cargo test --release --test cuda --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "cuda" and m.get("executable"):
        print(m["executable"])')
rm -rf gpu-bin && mkdir -p gpu-bin
strip --strip-debug -o gpu-bin/rewire target/release/rewire
strip --strip-debug -o gpu-bin/cuda-tests "$test_bin"
ls -la gpu-bin
