#!/usr/bin/env bash
# The one prepared GPU check: build, the GPU tests with REWIRE_REQUIRE_CUDA=1 (a missing
# device fails them), and the GPU benchmarks against cuBLAS SGEMM (TF32 off) in the same
# run. Results go under $OUT (default out/gpu-check). Sized for a few minutes on an H100.
# Where the GPU machine has no Rust toolchain, run scripts/gpu-prepare.sh first (here)
# and carry gpu-bin/.
# Then a short training run on the GPU and the same run on this machine's CPU (the
# MLP 784-1000-1000-1000-10 at 95% with RigL; Fashion-MNIST when data/fashion-mnist
# was carried over, generated data otherwise), for the epoch-time ratio.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${OUT:-out/gpu-check}"
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu-check.log") 2>&1
tee_pid=$!
# on exit, let tee write the log's last lines before $OUT is collected
trap 'exec >&- 2>&-; wait "$tee_pid" 2>/dev/null || true' EXIT
# a step that fails is named at the end; the steps after it still run
FAILED=()

echo "== device"
nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv || true
date -u

# CUDA's libraries: the toolkit's, or the pip wheels of the Python beside PyTorch
for d in /usr/local/cuda/lib64 $(python3 -c 'import glob, site
for p in site.getsitepackages(): print(" ".join(glob.glob(p + "/nvidia/*/lib")))' 2>/dev/null); do
    [[ -d "$d" ]] && LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
done
export LD_LIBRARY_PATH
# the NVRTC that will compile the kernels (the devices load its CUBIN, which a driver of
# the same major CUDA version accepts even where the NVRTC is newer)
python3 -c 'import ctypes
l = ctypes.CDLL("libnvrtc.so.13"); a, b = ctypes.c_int(), ctypes.c_int()
l.nvrtcVersion(ctypes.byref(a), ctypes.byref(b)); print(f"NVRTC {a.value}.{b.value}")' || true

# binaries: the ones scripts/gpu-prepare.sh made where gpu-bin/ was carried (no build
# on the device's time), else built here with cargo
if [[ -f gpu-bin/rewire && -f gpu-bin/cuda-tests ]]; then
    echo "== using the prebuilt gpu-bin/ (scripts/gpu-prepare.sh)"
    chmod +x gpu-bin/rewire gpu-bin/cuda-tests # in case the copy lost the bit
    REWIRE=./gpu-bin/rewire
    TESTS=(./gpu-bin/cuda-tests)
elif command -v cargo >/dev/null; then
    echo "== build"
    time cargo build --release --bins
    REWIRE=./target/release/rewire
    TESTS=(cargo test --release --test cuda --)
else
    echo "no cargo and no gpu-bin/: run scripts/gpu-prepare.sh where Rust is and carry gpu-bin" >&2
    exit 1
fi

echo "== GPU tests (REWIRE_REQUIRE_CUDA=1)"
# a failure is reported at the end; the benchmarks and training still run
TEST_RC=0
# every step has a time limit, so that one hang cannot eat the device time
REWIRE_REQUIRE_CUDA=1 timeout 240 "${TESTS[@]}" --nocapture --test-threads 1 || TEST_RC=$?

echo "== GPU benchmarks (sparse vs cuBLAS SGEMM, same run)"
: >"$OUT/bench.jsonl"
bench() {
    timeout 90 "$REWIRE" bench "$@" --device cuda --min-time-ms 300 --json |
        tee -a "$OUT/bench.jsonl" ||
        FAILED+=("bench $*")
}
# the targets: SpMM and SDDMM at M=K=4096, N=256, 90%; BSR 16x16 at 90%
bench spmm --m 4096 --n 256 --sparsity 0.9
bench sddmm --m 4096 --n 256 --sparsity 0.9
bench spmm-t --m 4096 --n 256 --sparsity 0.9
bench bsr --m 4096 --n 256 --sparsity 0.9 --block 16
bench bsr --m 4096 --n 256 --sparsity 0.9 --block 8
# break-even sparsity of SpMM against SGEMM
bench spmm --m 4096 --n 256 --sparsity 0.5,0.6,0.7,0.8,0.95,0.98,0.99

echo "== training: GPU vs CPU, same flags and seed"
DATASET=synthetic
[[ -d data/fashion-mnist ]] && DATASET=fashion-mnist
# train NAME ARGS...: one run, its output in $OUT/NAME.txt, the last line shown
train() {
    local name=$1
    shift
    if timeout 120 "$REWIRE" train --dataset "$DATASET" --seed 0 --no-progress "$@" \
        >"$OUT/$name.txt" 2>&1; then
        tail -n 1 "$OUT/$name.txt"
    else
        cat "$OUT/$name.txt"
        FAILED+=("train $name")
    fi
}
MLP=(--model mlp:1000,1000,1000 --method rigl --sparsity 0.95 --epochs 2 --lr 0.05)
train train-gpu "${MLP[@]}" --device cuda --log "$OUT/train-gpu.jsonl"
train train-cpu "${MLP[@]}" --device cpu --log "$OUT/train-cpu.jsonl"
for m in static set dsr gmp dense; do
    train "mlp-$m" --model mlp:300,100 --method "$m" --sparsity 0.9 --epochs 1 --device cuda
done
# CNNs on the GPU (im2col, pooling, batch norm in kernels/cnn.cu), a few hundred steps
for model in lenet5 vgg-small; do
    train "$model" --model "$model" --method rigl --sparsity 0.9 --epochs 1 --max-steps 300 \
        --device cuda
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

status=0
if [[ $TEST_RC -ne 0 ]]; then
    echo "== the GPU tests FAILED (exit $TEST_RC): see above"
    status=$TEST_RC
fi
if [[ ${#FAILED[@]} -gt 0 ]]; then
    printf '== FAILED: %s\n' "${FAILED[@]}"
    status=1
fi
exit "$status"
