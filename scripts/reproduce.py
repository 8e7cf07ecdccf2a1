#!/usr/bin/env python
"""Reproduce the papers' comparisons at CPU scale (the `dynasr-reproduce` command, run from the repository root).

    python scripts/reproduce.py                # every run that has no result yet (~1.5 h on 2 cores), then the report
    python scripts/reproduce.py --report_only  # the report only, into runs/repro/report/ (--write_docs: docs/)
    python scripts/reproduce.py --list         # the run matrix

See --help, and hf_dynasr/evaluation/reproduction.py for the run matrix and the report.
"""

import os
import sys

from hf_dynasr.evaluation.cli import reproduce_main

if __name__ == "__main__":
    os.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the run matrix's paths are repo-relative
    sys.exit(reproduce_main(command="python scripts/reproduce.py"))
