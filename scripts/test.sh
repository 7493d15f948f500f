#!/usr/bin/env bash
# The test command (README, .ci/run): set up .venv if needed, then run the whole suite.
# Real data is read from $UNIFAIRSEQ_DATA (default: ../shared/data beside the repo).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export UNIFAIRSEQ_DATA="${UNIFAIRSEQ_DATA:-$(cd .. && pwd)/shared/data}"
exec .venv/bin/python -m pytest -q -p no:cacheprovider tests "$@"
