#!/usr/bin/env bash
# The test command (README, .ci/run): set up .venv if needed, then run the whole suite.
# Real data is read from $UNIFAIRSEQ_DATA (default: ../shared/data beside the repo).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export UNIFAIRSEQ_DATA="${UNIFAIRSEQ_DATA:-$(cd .. && pwd)/shared/data}"
# Two workers (pytest-xdist), a whole test file per worker at a time (--dist loadfile: a file's module
# fixtures -- tiny bases, trained deltas -- are built once). UNIFAIRSEQ_TEST_WORKERS=0 runs in one process.
WORKERS=${UNIFAIRSEQ_TEST_WORKERS:-2}
XDIST=()
[ "$WORKERS" != 0 ] && XDIST=(-n "$WORKERS" --dist loadfile)
exec .venv/bin/python -m pytest -q -p no:cacheprovider "${XDIST[@]}" tests "$@"
