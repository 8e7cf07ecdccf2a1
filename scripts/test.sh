#!/usr/bin/env bash
# Run the test suite (sets itself up first), one pytest-xdist worker per core, each test file in one worker (its
# module fixtures built once). Extra arguments go to pytest, e.g. scripts/test.sh -k model; PYTEST_WORKERS=0 runs
# it in one process.
set -euo pipefail
. "$(dirname "$0")/setup.sh"
python -m pytest -q -n "${PYTEST_WORKERS:-auto}" --dist loadfile "$@"
