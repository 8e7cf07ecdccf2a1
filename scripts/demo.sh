#!/usr/bin/env bash
# The main job: synthesize a corpus, train a 3-size supernet (FLOPs-aware module-wise OrthoSoftmax),
# evaluate every size on the unseen test sentences, export per-size checkpoints with model cards and a
# WER-vs-size plot. About 15 minutes on a 2-core CPU; `--quick` is a one-minute smoke version (16 updates: it
# checks that every stage runs, it learns nothing yet: 100 % WER and empty transcripts are expected there); on a
# slower machine `--max_steps N` trains fewer steps than training/configs/demo_cpu.yaml's 2,600.
#   bash scripts/demo.sh [--quick] [--output_dir runs/demo] [--max_steps N]
set -euo pipefail

QUICK=0
OUT=runs/demo
STEPS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --output_dir) OUT="$2"; shift ;;
    --max_steps) STEPS=("--max_steps" "$2"); shift ;;
    -h|--help) sed -n '2,7p' "$0" | cut -c3-; exit 0 ;;
    *) echo "usage: bash scripts/demo.sh [--quick] [--output_dir DIR] [--max_steps N] (--help: what it does, how long)" >&2
       exit 2 ;;
  esac
  shift
done
. "$(dirname "$0")/setup.sh"

if [ "$QUICK" = 1 ]; then
  CORPUS=data/demo_quick; N=60; OUT="${OUT}_quick"
  TRAIN_ARGS=(--max_steps 16 --save_steps 8 --logging_steps 4 --max_eval_utterances 10)
else
  CORPUS=data/demo_corpus; N=8000
  TRAIN_ARGS=()
fi
start=$(date +%s)

echo "== 1/4 synthesize $N utterances into $CORPUS (re-runs reuse existing files)"
python scripts/synthesize_corpus.py --output_dir "$CORPUS" --num_utterances "$N" --seed 0

echo "== 2/4 train the supernet ($OUT)"
python training/train.py --config training/configs/demo_cpu.yaml --output_dir "$OUT" --overwrite_output_dir \
  --train_data "audiofolder:$CORPUS" --eval_data "audiofolder:$CORPUS" "${TRAIN_ARGS[@]}" ${STEPS[@]+"${STEPS[@]}"}

echo "== 3/4 evaluate every size on the test split"
python scripts/evaluate_model.py --checkpoint "$OUT/final" --data "audiofolder:$CORPUS" --split test \
  --output_dir "$OUT/eval" --latency_runs 20

echo "== 4/4 export every size with its model card"
python scripts/export_subnets.py --checkpoint "$OUT/final" --output_dir "$OUT/export" --overwrite \
  --results "$OUT/eval/results.json" --training "$OUT/final/training_results.json"

echo
cat "$OUT/eval/results.md"
echo
echo "plots: $OUT/eval/pareto.png $OUT/eval/training_curve.png   per-size checkpoints: $OUT/export/" \
  "  total: $(( $(date +%s) - start )) s"
if [ "$QUICK" = 1 ]; then
  echo "note: --quick trained 16 updates on $N utterances to check that every stage runs; a CTC model that young"
  echo "      outputs only blanks, so 100 % WER and empty transcripts are expected here. The full demo"
  echo "      (bash scripts/demo.sh, about 15 minutes) reaches 27-28 % CER."
fi
