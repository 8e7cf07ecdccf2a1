#!/usr/bin/env bash
# Idempotent set-up shared by scripts/demo.sh and scripts/test.sh (source it; it activates .venv).
# - Debian tools (espeak-ng, flite, sox, text sources, FFmpeg 5.1 libraries for torchcodec and the ffmpeg
#   program, which transformers' ASR pipeline runs to read audio files) via apt-get when missing and we are root;
# - .venv with torch==2.13.0 (the CPU wheel; never another torch) and `pip install -e .[dev]`.
# A second run does nothing but a few checks (stamp file keyed on pyproject.toml).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

APT_PACKAGES="espeak-ng flite sox fortunes fortunes-min wordnet-base festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts irstlm libavdevice59 libavfilter8 libavformat59 libavcodec59 libswscale6 libswresample4 libavutil57 ffmpeg"
missing=""
for tool in espeak-ng flite sox text2wave ffmpeg; do command -v "$tool" >/dev/null 2>&1 || missing="yes"; done
[ -d /usr/share/games/fortunes ] && [ -d /usr/share/wordnet ] || missing="yes"
ls /usr/lib/*/libavcodec.so.59 >/dev/null 2>&1 || missing="yes"
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[setup] installing Debian packages: $APT_PACKAGES"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $APT_PACKAGES >/dev/null
  else
    echo "[setup] missing system tools; run as root: apt-get install -y $APT_PACKAGES" >&2
  fi
fi

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
stamp=".venv/.hf_dynasr-$(sha1sum pyproject.toml | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  python -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
  if ! python -c "import torch" >/dev/null 2>&1; then
    echo "[setup] installing torch==2.13.0 (CPU wheel)"
    python -m pip install -q "torch==2.13.0" 2>&1 | grep -v "is ignored" || true
  fi
  echo "[setup] installing hf_dynasr and its dependencies"
  python -m pip install -q -e ".[dev]" 2>&1 | grep -v "is ignored" || true
  python -c "import torch, transformers, datasets, accelerate, jiwer, hf_dynasr" && touch "$stamp"
fi
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
export TOKENIZERS_PARALLELISM=false
