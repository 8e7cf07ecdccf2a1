#!/usr/bin/env python
"""Build a word n-gram LM (ARPA) and a lexicon for CTC beam search decoding (the `dynasr-build-lm` command).

    python scripts/build_lm.py --text data/demo_corpus --order 3 --output_dir lm

See --help for every option.
"""

import sys

from hf_dynasr.lm.cli import build_lm_main

if __name__ == "__main__":
    sys.exit(build_lm_main())
