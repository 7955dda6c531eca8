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

# --- LiteLLM's proxy for tests/test_litellm_proxy.py -------------------------
# A real third-party OpenAI-compatible server, kept in its own venv so that
# its many dependencies (and its own openai 2.x) never touch .venv. Installed
# once; later runs only check the version. Pinned exactly: newer releases do
# not install from the registry here (1.109.x need certifi>=2026.10.19, newer
# than it has; an unpinned install backtracks to 1.106.2), and LiteLLM has
# had compromised releases, so no version floats in.
LITELLM_VERSION="1.106.2"
LITELLM_VENV=".venv-litellm"
if ! "$LITELLM_VENV/bin/python" -c \
    "import importlib.metadata as m, sys; sys.exit(m.version('litellm') != '$LITELLM_VERSION')" \
    2>/dev/null || [ ! -x "$LITELLM_VENV/bin/litellm" ]; then
    litellm_started=$(date +%s)
    "$PYTHON" -m venv "$LITELLM_VENV"
    printf '*\n' > "$LITELLM_VENV/.gitignore"  # never committed
    "$LITELLM_VENV/bin/python" -m pip install --quiet "litellm[proxy]==$LITELLM_VERSION"
    echo "ci/test.sh: installed litellm[proxy]==$LITELLM_VERSION into $LITELLM_VENV" \
        "in $(( $(date +%s) - litellm_started )) s"
fi
export DASK_LLM_LITELLM="$PWD/$LITELLM_VENV/bin/litellm"
# -----------------------------------------------------------------------------

# --- Chromium for the tests that load pages in a real browser -----------------
# (the run report, the dashboard page; tests/_chromium.py). Debian's package;
# CI runs as root on a fresh machine, so install it when it is missing.
if ! command -v chromium >/dev/null 2>&1 && [ -z "${CHROMIUM:-}" ]; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        chromium_started=$(date +%s)
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
        echo "ci/test.sh: installed Debian's chromium in $(( $(date +%s) - chromium_started )) s"
    else
        echo "ci/test.sh: chromium is missing (apt-get install chromium, or set CHROMIUM=/path);" \
            "the browser tests will fail under CI=1 and be skipped otherwise" >&2
    fi
fi
# -----------------------------------------------------------------------------

# The habits that keep the layout so: lint and types, with the rules in pyproject.toml.
.venv/bin/ruff check dask_llm tests bench examples
.venv/bin/mypy

# Two pytest workers, each taking whole files (a file's module-scoped
# cluster, Spark session or proxy stays in one process): most tests wait on
# simulated latency, so two at a time fit on CI's 2 cores (measured: 607 s
# serial, 359 s with two). DASK_LLM_TEST_WORKERS=0 runs them in this process.
WORKERS="${DASK_LLM_TEST_WORKERS:-2}"
set +e
if [ "$WORKERS" -gt 0 ]; then
    .venv/bin/python -m pytest -p no:cacheprovider -n "$WORKERS" --dist loadfile "$@"
else
    .venv/bin/python -m pytest -p no:cacheprovider "$@"
fi
status=$?
set -e
if [ "$status" -eq 5 ]; then
    echo "ci/test.sh: pytest collected no tests; failing the run" >&2
    exit 1
fi
exit "$status"
