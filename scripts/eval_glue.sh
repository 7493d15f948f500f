#!/usr/bin/env bash
# Dev-set accuracy of a GLUE checkpoint (fairseq-validate). See --help.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PROG=eval_glue

usage() {
    cat <<USAGE
Usage: scripts/eval_glue.sh CHECKPOINT --data DIR [options] [-- FAIRSEQ-VALIDATE-ARGS]

Step 3 of 3 for GLUE (after scripts/preprocess_glue.sh and scripts/train_glue.sh).

  fairseq-validate --task sentence_prediction on the dev split (the paper reports dev accuracy;
  --required-batch-size-multiple 1 so every example counts) -> accuracy (%, as fairseq's
  sentence_prediction criterion reports it: one decimal). Prints a table and writes OUT/scores.json.

Options:
  --data DIR         scripts/preprocess_glue.sh output (DIR/bin, DIR/meta.json)
  --out DIR          default: CHECKPOINT's directory/eval_valid
  --base FILE        the base model the delta checkpoint sits on (default: the path recorded in
                     the checkpoint at training time)
  --batch-size N     default 32
  --gpus N           0 = CPU (default: counted from CUDA_VISIBLE_DEVICES / nvidia-smi; fp16 on a GPU)
  --tiny             tests: CPU, single-threaded
  -h, --help         this help
Everything after '--' goes to fairseq-validate last.

Environment: UNIFAIRSEQ_BIN (python + fairseq-*; default <repo>/.venv/bin, else PATH),
UNIFAIRSEQ_USER_DIR (default <repo>/user_dir).
Exit status: 0 on success, 2 on usage, input or tool errors, fairseq-validate's status otherwise.
USAGE
}

die() { echo "$PROG: error: $*" >&2; exit 2; }
need_arg() { [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value (see --help)"; }
is_int() { [[ $1 =~ ^[0-9]+$ ]]; }

CKPT='' DATA='' OUT='' BASE='' BSZ=32 GPUS='' TINY=0 EXTRA=()
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --data) need_arg "$@"; DATA=$2; shift 2 ;;
        --out) need_arg "$@"; OUT=$2; shift 2 ;;
        --base) need_arg "$@"; BASE=$2; shift 2 ;;
        --batch-size) need_arg "$@"; BSZ=$2; shift 2 ;;
        --gpus) need_arg "$@"; GPUS=$2; shift 2 ;;
        --tiny) TINY=1; shift ;;
        --) shift; EXTRA=("$@"); break ;;
        -*) die "unknown option '$1' (see --help; fairseq-validate options go after '--')" ;;
        *) [ -z "$CKPT" ] || die "one CHECKPOINT only (got '$CKPT' and '$1')"; CKPT=$1; shift ;;
    esac
done

BIN=${UNIFAIRSEQ_BIN:-$REPO/.venv/bin}
find_tool() {
    if [ -x "$BIN/$1" ]; then echo "$BIN/$1"
    elif command -v "$1" >/dev/null 2>&1; then command -v "$1"
    else die "cannot find '$1' in $BIN or on PATH; run scripts/install.sh or set UNIFAIRSEQ_BIN"
    fi
}
PY=$(find_tool python)
VALIDATE=$(find_tool fairseq-validate)
pyrun() { local mod=$1; shift
    "$PY" -c 'import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name="__main__")' \
        "$REPO/unifairseq/$mod.py" "$@"; }
USER_DIR=${UNIFAIRSEQ_USER_DIR:-$REPO/user_dir}

[ -n "$CKPT" ] || die "CHECKPOINT is required (e.g. runs/glue_MNLI_mam/checkpoint_best.pt; see --help)"
[ -f "$CKPT" ] || die "checkpoint '$CKPT' does not exist"
CKPT=$(cd "$(dirname "$CKPT")" && pwd)/$(basename "$CKPT")
[ -n "$DATA" ] || die "--data DIR is required (the output of scripts/preprocess_glue.sh)"
[ -d "$DATA/bin/input0" ] && [ -f "$DATA/meta.json" ] \
    || die "--data '$DATA' is not an output of scripts/preprocess_glue.sh (no bin/input0 and meta.json)"
DATA=$(cd "$DATA" && pwd)
[ -z "$BASE" ] || [ -f "$BASE" ] || die "--base '$BASE' does not exist"
is_int "$BSZ" && [ "$BSZ" -ge 1 ] || die "--batch-size must be a positive integer"
TASK=$(pyrun pipeline meta "$DATA/meta.json" task)
NUM_CLASSES=$(pyrun pipeline meta "$DATA/meta.json" num_classes)
N_VALID=$(pyrun pipeline meta "$DATA/meta.json" valid_examples)

if [ "$TINY" = 1 ]; then GPUS=0; export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}; fi
if [ -z "$GPUS" ]; then GPUS=$(pyrun pipeline gpus); fi
is_int "$GPUS" || die "--gpus must be a non-negative integer"
DEVICE=(--cpu)
[ "$GPUS" = 0 ] || DEVICE=(--fp16)
OUT=${OUT:-$(dirname "$CKPT")/eval_valid}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
OVERRIDES="{'data': '$DATA/bin'"
[ -z "$BASE" ] || OVERRIDES+=", 'delta_base': '$(cd "$(dirname "$BASE")" && pwd)/$(basename "$BASE")'"
OVERRIDES+="}"

LOG=$OUT/validate.log
echo "== fairseq-validate $TASK dev ($N_VALID examples) -> $LOG"
(cd "$REPO" && "$VALIDATE" "$DATA/bin" --user-dir "$USER_DIR" --task sentence_prediction --num-classes "$NUM_CLASSES" \
    --criterion sentence_prediction --path "$CKPT" --model-overrides "$OVERRIDES" --valid-subset valid \
    --batch-size "$BSZ" --required-batch-size-multiple 1 --num-workers 0 --log-format json "${DEVICE[@]}" \
    "${EXTRA[@]}") > "$LOG" 2>&1 \
    || { status=$?; tail -30 "$LOG" >&2; echo "$PROG: fairseq-validate failed ($status); log: $LOG" >&2; exit "$status"; }

"$PY" - "$LOG" "$OUT/scores.json" "$TASK" "$CKPT" "$N_VALID" <<'PYEOF'
import json, os, sys
log, out, task, ckpt, n_valid = sys.argv[1:]
row = None
for line in open(log, encoding="utf-8"):
    if "| valid |" in line and "{" in line:
        row = json.loads(line[line.index("{"):])
if row is None or "valid_accuracy" not in row:
    sys.exit(f"eval_glue: error: no accuracy in {log}")
n = int(float(row.get("valid_bsz", 0)))
if n != int(n_valid):
    sys.exit(f"eval_glue: error: scored {n} examples, the dev set has {n_valid}")
result = {"task": task, "accuracy": float(row["valid_accuracy"]), "loss": float(row["valid_loss"]), "n": n,
          "checkpoint": ckpt, "subset": "valid"}
tmp = out + ".tmp"
with open(tmp, "w", encoding="utf-8") as f:
    json.dump(result, f, indent=1)
    f.write("\n")
os.replace(tmp, out)
print(f"{task} dev accuracy, {n} examples\n| metric   | score |\n|----------|-------|\n"
      f"| accuracy | {result['accuracy']:.1f}  |\n(written to {out})")
PYEOF
