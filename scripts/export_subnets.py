#!/usr/bin/env python
"""Export every size of an hf_dynasr supernet as its own Transformers checkpoint (the `dynasr-export` command).

    python scripts/export_subnets.py --checkpoint ckpt --output_dir export --results results.json --onnx

See --help for every option.
"""

import sys

from hf_dynasr.export.cli import export_main

if __name__ == "__main__":
    sys.exit(export_main())
