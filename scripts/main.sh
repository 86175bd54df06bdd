#!/usr/bin/env bash
# The main job: dense vs sparse MLPs (784-1000-1000-1000-10) on Fashion-MNIST — static
# sparse and RigL — same seed, same schedule, one after the other, with a summary at the
# end. Fetches the dataset first when it is absent (scripts/fetch-data.sh), saying so.
#
#   scripts/main.sh                 # 20 epochs; static and rigl at 90% and 98%
#   EPOCHS=5 SPARSITIES="0.95" METHODS="rigl set" scripts/main.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
EPOCHS="${EPOCHS:-20}"
SPARSITIES="${SPARSITIES:-0.9 0.98}"
METHODS="${METHODS:-static rigl}"
DATASET="${DATASET:-fashion-mnist}"
OUT="${OUT:-out}"
COMMON=(--dataset "$DATASET" --model mlp:1000,1000,1000 --epochs "$EPOCHS" --batch-size 128
        --optimizer sgd --momentum 0.9 --lr 0.05 --weight-decay 5e-4 --schedule cosine --seed 0)

# the four files of a real dataset (synthetic data is generated and needs none)
have_data() {
    local f
    for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
        [ -e "$1/$f" ] || [ -e "$1/$f.gz" ] || return 1
    done
}
if [ "$DATASET" != synthetic ] && ! have_data "data/$DATASET" &&
   ! { [ "$DATASET" = fashion-mnist ] && have_data /usr/share/datasets/fashion-mnist; }; then
    echo "== $DATASET not found under data/: fetching it with scripts/fetch-data.sh"
    scripts/fetch-data.sh
fi

echo "== building (release)"
cargo build --release --quiet
mkdir -p "$OUT"
echo "== dense baseline"
target/release/rewire train "${COMMON[@]}" --method dense --log "$OUT/dense.jsonl"
logs=("$OUT/dense.jsonl")
for s in $SPARSITIES; do
    for m in $METHODS; do
        echo "== $m at sparsity $s"
        target/release/rewire train "${COMMON[@]}" --method "$m" --sparsity "$s" --log "$OUT/$m-$s.jsonl"
        logs+=("$OUT/$m-$s.jsonl")
    done
done

echo "== summary (last epoch of each run; epoch time and FLOPs are means over epochs)"
if ! command -v python3 >/dev/null; then
    echo "(python3 not found: see $OUT/*.jsonl)"
    exit 0
fi
python3 - "${logs[@]}" <<'PY'

import json, sys
rows = []
for path in sys.argv[1:]:  # this run's logs only, not older ones in the same folder
    lines = [json.loads(l) for l in open(path) if l.strip()]
    if not lines:
        continue
    last = lines[-1]
    r = last["report"]
    t = sum(l["report"]["epoch_s"] for l in lines) / len(lines)
    # the mean over epochs: RigL's update steps and GMP's dense phase cost in early epochs
    fl = sum(l["report"]["train_flops"] for l in lines) / len(lines)
    rows.append((last["method"], last["sparsity"], r["test_acc"], t, r["live_weights"], fl))
dense_t = next((t for m, s, a, t, *_ in rows if m == "dense"), None)
print(f"{'method':<8} {'sparsity':>8} {'test acc':>9} {'epoch s':>8} {'vs dense':>9} {'live weights':>13} {'FLOPs/epoch (mean)':>18}")
for m, s, a, t, live, fl in rows:
    ratio = f"{dense_t / t:.2f}x" if dense_t else "-"
    print(f"{m:<8} {s:>8.3f} {100*a:>8.2f}% {t:>8.2f} {ratio:>9} {live:>13} {fl:>18.3e}")
PY
