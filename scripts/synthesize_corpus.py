#!/usr/bin/env python
"""Synthesize an offline train/dev/test corpus with espeak-ng and flite (the `dynasr-synthesize` command).

    python scripts/synthesize_corpus.py --output_dir data/synth --num_utterances 2000 --seed 0

See --help, and hf_dynasr/data/synthesis.py for the corpus it writes.
"""

import sys

from hf_dynasr.data.cli import synthesize_main

if __name__ == "__main__":
    sys.exit(synthesize_main())
