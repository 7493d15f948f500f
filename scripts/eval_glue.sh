#!/usr/bin/env bash
# Dev-set accuracy of a GLUE checkpoint (fairseq-validate). See --help.
set -euo pipefail

PROG=eval_glue
. "$(dirname "$0")/lib.sh"

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

find_python
VALIDATE=$(find_tool fairseq-validate)

check_ckpt runs/glue_MNLI_mam/checkpoint_best.pt
check_eval_data preprocess_glue bin/input0 bin/input0
check_eval_base
is_int "$BSZ" && [ "$BSZ" -ge 1 ] || die "--batch-size must be a positive integer"
TASK=$(pyrun pipeline meta "$DATA/meta.json" task)
NUM_CLASSES=$(pyrun pipeline meta "$DATA/meta.json" num_classes)
N_VALID=$(pyrun pipeline meta "$DATA/meta.json" valid_examples)

eval_devices
OUT=$(mkdir_abs "${OUT:-$(dirname "$CKPT")/eval_valid}")
OVERRIDES="{'data': '$DATA/bin'"
[ -z "$BASE" ] || OVERRIDES+=", 'delta_base': '$(abspath "$BASE")'"
OVERRIDES+="}"

LOG=$OUT/validate.log
echo "== fairseq-validate $TASK dev ($N_VALID examples) -> $LOG"
(cd "$REPO" && "$VALIDATE" "$DATA/bin" --user-dir "$USER_DIR" --task sentence_prediction --num-classes "$NUM_CLASSES" \
    --criterion sentence_prediction --path "$CKPT" --model-overrides "$OVERRIDES" --valid-subset valid \
    --batch-size "$BSZ" --required-batch-size-multiple 1 --num-workers 0 --log-format json "${DEVICE[@]}" \
    "${EXTRA[@]}") > "$LOG" 2>&1 \
    || fail_log $? fairseq-validate "$LOG"

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
