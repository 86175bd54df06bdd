#!/usr/bin/env bash
# The one prepared GPU check: build, the GPU tests with REWIRE_REQUIRE_CUDA=1 (a missing
# device fails them), and the GPU benchmarks against cuBLAS SGEMM (TF32 off) in the same
# run. Results go under $OUT (default out/gpu-check). Sized for a few minutes on an H100.
# Then a short training run on the GPU and the same run on this machine's CPU (the
# MLP 784-1000-1000-1000-10 at 95% with RigL; Fashion-MNIST when data/fashion-mnist
# was carried over, generated data otherwise), for the epoch-time ratio.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${OUT:-out/gpu-check}"
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu-check.log") 2>&1

echo "== device"
nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv || true
date -u

echo "== build"
time cargo build --release --tests --bins

echo "== GPU tests (REWIRE_REQUIRE_CUDA=1)"
REWIRE_REQUIRE_CUDA=1 cargo test --release --test cuda -- --nocapture

echo "== GPU benchmarks (sparse vs cuBLAS SGEMM, same run)"
bench() { ./target/release/rewire bench "$@" --device cuda --min-time-ms 300 --json; }
{
    # the targets: SpMM and SDDMM at M=K=4096, N=256, 90%; BSR 16x16 at 90%
    bench spmm --m 4096 --n 256 --sparsity 0.9
    bench sddmm --m 4096 --n 256 --sparsity 0.9
    bench spmm-t --m 4096 --n 256 --sparsity 0.9
    bench bsr --m 4096 --n 256 --sparsity 0.9 --block 16
    bench bsr --m 4096 --n 256 --sparsity 0.9 --block 8
    # break-even sparsity of SpMM against SGEMM
    bench spmm --m 4096 --n 256 --sparsity 0.5,0.6,0.7,0.8,0.95,0.98,0.99
} | tee "$OUT/bench.jsonl"

echo "== training: GPU vs CPU, same flags and seed"
DATASET=synthetic
[[ -d data/fashion-mnist ]] && DATASET=fashion-mnist
run() {
    ./target/release/rewire train --dataset "$DATASET" --model mlp:1000,1000,1000 \
        --method rigl --sparsity 0.95 --epochs 2 --lr 0.05 --seed 0 --no-progress "$@"
}
run --device cuda --log "$OUT/train-gpu.jsonl" | tee "$OUT/train-gpu.txt"
run --device cpu --log "$OUT/train-cpu.jsonl" | tee "$OUT/train-cpu.txt"
for m in static set dsr gmp dense; do
    ./target/release/rewire train --dataset "$DATASET" --model mlp:300,100 --method "$m" \
        --sparsity 0.9 --epochs 1 --seed 0 --no-progress --device cuda | tail -n 1
done

echo "== summary (speedup = cuBLAS time / sparse time)"
python3 - "$OUT/bench.jsonl" <<'PY' || true
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    blk = f" {r['block']}x{r['block']}" if r.get("block") else ""
    print(f"{r['kernel']:7}{blk:7} M=K={r['m']} N={r['n']} s={r['sparsity']:.2f}: "
          f"sparse {r['sparse_ms']:.3f} ms, sgemm {r['dense_ms']:.3f} ms, "
          f"speedup {r['speedup']:.2f}x, max_rel_diff {r['max_rel_diff']:.1e}")
PY
