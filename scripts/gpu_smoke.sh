#!/usr/bin/env bash
# GPU smoke run: a few hundred bf16 steps of training/configs/smoke.yaml on one GPU with two sizes (component-wise
# OrthoSoftmax, LayerDrop on, so stage 1 and stage 2 both run), the final evaluation of every size on the GPU,
# and an export of every size. Prints steps/s, peak GPU memory (torch.cuda.max_memory_allocated) and the final CER
# of every size; a few minutes on one GPU, most of it start-up and the corpus synthesis on a first run.
#   bash scripts/gpu_smoke.sh [--max_steps 300] [--output_dir runs/gpu_smoke]
#   bash scripts/gpu_smoke.sh --cpu        # no GPU check, 4 steps on the CPU: checks the script itself
# Needs a CUDA build of torch with hf_dynasr installed (`pip install -e .` in an environment with CUDA torch;
# scripts/setup.sh would install the CPU wheel) and, for a first run, espeak-ng and flite for the corpus.
set -euo pipefail
cd "$(cd "$(dirname "$0")/.." && pwd)"

CPU=0
STEPS=""
OUT=runs/gpu_smoke
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu) CPU=1 ;;
    --max_steps) STEPS="$2"; shift ;;
    --output_dir) OUT="$2"; shift ;;
    *) echo "usage: bash scripts/gpu_smoke.sh [--cpu] [--max_steps N] [--output_dir DIR]" >&2; exit 2 ;;
  esac
  shift
done
[ -z "$STEPS" ] && { [ "$CPU" = 1 ] && STEPS=4 || STEPS=300; }
if [ -z "${VIRTUAL_ENV:-}" ] && [ -x .venv/bin/python ]; then
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TOKENIZERS_PARALLELISM=false
PY="${PYTHON:-python}"

if [ "$CPU" = 0 ]; then  # torch alone first, so a machine without a GPU is refused within seconds
  "$PY" - <<'EOF' || exit 1
import os, sys
try:
    import torch
except ImportError:
    sys.exit("error: torch is not installed; install a CUDA build of torch, then `pip install -e .`")
if not torch.cuda.is_available():
    sys.exit(f"error: no GPU visible to torch {torch.__version__} (CUDA build: {torch.version.cuda or 'no, a CPU wheel'}; "
             f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}). Install a CUDA build of torch, "
             "or run `bash scripts/gpu_smoke.sh --cpu` to check the script on the CPU.")
EOF
  export CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-0}" ACCELERATE_USE_CPU=false  # one GPU
else
  export CUDA_VISIBLE_DEVICES="" ACCELERATE_USE_CPU=true
fi
if ! "$PY" -c "import hf_dynasr" 2>/dev/null; then
  echo "error: $PY cannot import hf_dynasr; run 'pip install -e .' in this environment" >&2
  exit 1
fi

start=$(date +%s)
if [ ! -f data/smoke/train/metadata.csv ]; then
  echo "== synthesize the smoke corpus (data/smoke, 40 utterances)"
  "$PY" scripts/synthesize_corpus.py --output_dir data/smoke --num_utterances 40 --seed 0
fi

echo "== train $STEPS steps, bf16, two sizes ($OUT)"
"$PY" - "$OUT" "$STEPS" <<'EOF'
import json, os, sys, time

import torch

from hf_dynasr.trainer import main
from hf_dynasr.trainer.callbacks import TrainerCallback

out, steps = sys.argv[1], int(sys.argv[2])


class StepClock(TrainerCallback):
    """Times the updates after the first (start-up, kernel selection and the first allocation excluded)."""

    def __init__(self):
        self.times = {}

    def on_step_end(self, step):
        self.times[step] = time.perf_counter()


clock = StepClock()
main(["--config", "training/configs/smoke.yaml", "--output_dir", out, "--overwrite_output_dir",
      "--max_steps", str(steps), "--save_steps", "0", "--logging_steps", str(max(1, steps // 10)),
      "--mixed_precision", "bf16", "--max_eval_utterances", "40",
      "--subnets", json.dumps({"small": 0.5, "medium": 0.75}),
      "--selection", json.dumps({"method": "ortho_softmax", "layerdrop_stage1": 0.1, "layerdrop_stage2": 0.1})],
     callbacks=[clock])
first, last = min(clock.times), max(clock.times)
figures = {"steps": last, "steps_per_s": (last - first) / max(1e-9, clock.times[last] - clock.times[first]),
           "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
           "peak_gpu_memory_mib": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None}
results = json.load(open(os.path.join(out, "final", "training_results.json")))
figures["mixed_precision"] = results["mixed_precision"]
figures["cer"] = {name: r["cer"] for name, r in results["eval"].items()}
json.dump(figures, open(os.path.join(out, "gpu_smoke.json"), "w"), indent=1)
EOF

echo "== export every size"
"$PY" scripts/export_subnets.py --checkpoint "$OUT/final" --output_dir "$OUT/export" --overwrite \
  --training "$OUT/final/training_results.json"

"$PY" - "$OUT" "$(( $(date +%s) - start ))" <<'EOF'
import json, os, sys

out, total = sys.argv[1], int(sys.argv[2])
f = json.load(open(os.path.join(out, "gpu_smoke.json")))
memory = "n/a (CPU)" if f["peak_gpu_memory_mib"] is None else f"{f['peak_gpu_memory_mib']:.0f} MiB"
print(f"\ndevice {f['device']}, mixed precision {f['mixed_precision']}: {f['steps']} steps, "
      f"{f['steps_per_s']:.2f} steps/s, peak GPU memory {memory}")
print("final CER: " + ", ".join(f"{name} {cer * 100:.1f} %" for name, cer in f["cer"].items()))
export = os.path.join(out, "export")
sizes = sorted(d for d in os.listdir(export) if os.path.isdir(os.path.join(export, d)))
print(f"exported: {', '.join(sizes)} in {export}; total {total} s")
EOF
