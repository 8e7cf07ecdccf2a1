#!/usr/bin/env python
"""Evaluate every size of an hf_dynasr checkpoint: WER, CER, parameters, FLOPs, latency, RTF (the `dynasr-evaluate`
command; not called evaluate.py, which would shadow the `evaluate` library for scripts in this folder).

    python scripts/evaluate_model.py --checkpoint ckpt --data audiofolder:data/synth --split test

See --help for every option.
"""

import sys

from hf_dynasr.evaluation.cli import evaluate_main

if __name__ == "__main__":
    sys.exit(evaluate_main())
