#!/usr/bin/env bash
# Install dask-llm with its test extras into .venv and run the test suite.
# This is the README's test command and what CI runs (.ci/run calls it).
# Extra arguments go to pytest, e.g. `bash ci/test.sh -k checkpoint`.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[test]"

set +e
.venv/bin/python -m pytest -p no:cacheprovider "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
    echo "ci/test.sh: pytest collected no tests; failing the run" >&2
    exit 1
fi
exit "$status"
