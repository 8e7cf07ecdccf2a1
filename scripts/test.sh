#!/usr/bin/env bash
# Run the test suite (sets itself up first). Extra arguments go to pytest, e.g. scripts/test.sh -k model
set -euo pipefail
. "$(dirname "$0")/setup.sh"
python -m pytest -q "$@"
