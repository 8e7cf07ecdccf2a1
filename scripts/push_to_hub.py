#!/usr/bin/env python
"""Push an hf_dynasr supernet and every size to the Hugging Face Hub (the `dynasr-push` command).

    python scripts/push_to_hub.py --checkpoint export --repo org/asr --dry-run      # list files, no network

See --help for every option.
"""

import sys

from hf_dynasr.export.cli import push_main

if __name__ == "__main__":
    sys.exit(push_main())
