#!/usr/bin/env bash
# The SST-2 demo (README, "The demo"): full fine-tuning vs MAM adapter, LoRA, prefix tuning,
# Pfeiffer adapter and BitFit on all-MiniLM-L6-v2, fairseq-train on the CPU, about 12 minutes
# on 2 idle cores (every run trains all its updates; --budget-minutes only warns). Prints the table
# and writes runs/demo/{results.md,results.json,accuracy_vs_params.png}. Code: unifairseq/demo/.
#   bash scripts/demo.sh [--quick] [--workdir DIR] [--data DIR] [--methods full mam ...]   (--help: all options)
# Data: $UNIFAIRSEQ_DATA/glue/SST-2/{train,dev}.tsv (default <repo>/../shared/data), read in place.
# Python: $UNIFAIRSEQ_BIN/python if set, else <repo>/.venv/bin/python (scripts/install.sh makes it), else python3.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${UNIFAIRSEQ_BIN:-$REPO/.venv/bin}
if [ -x "$BIN/python" ]; then
    PY="$BIN/python"
elif command -v python3 >/dev/null 2>&1; then
    PY=$(command -v python3)
else
    echo "demo: error: no Python found in $BIN or on PATH; run scripts/install.sh first" >&2
    exit 2
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" -m unifairseq.demo "$@"
