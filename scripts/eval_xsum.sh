#!/usr/bin/env bash
# Decode the XSum test set with the paper's settings and score ROUGE. See --help.
set -euo pipefail

PROG=eval_xsum
. "$(dirname "$0")/lib.sh"

usage() {
    cat <<USAGE
Usage: scripts/eval_xsum.sh CHECKPOINT --data DIR [options] [-- FAIRSEQ-GENERATE-ARGS]

Step 3 of 3 for XSum (after scripts/preprocess_xsum.sh and scripts/train_xsum.sh).

  fairseq-generate --task translation_rouge (beam 6, min length 10, max length 60 = --max-len-b 60,
  no-repeat 3-grams with fairseq 0.12's CPU n-gram blocker fixed,
  length penalty 1.0: the reference code's settings; --required-batch-size-multiple 1 so no
  example is dropped) -> hypotheses in data set order -> GPT-2 BPE decoding -> ROUGE-1/2/L/Lsum
  F1 with Google's rouge-score (use_stemmer=True), mean over the test set, against the
  untruncated references DIR/raw/test.target. Prints a table and writes OUT/scores.json.

Options:
  --data DIR           scripts/preprocess_xsum.sh output (DIR/bin, DIR/raw, DIR/meta.json)
  --subset NAME        test (default) or valid
  --refs FILE          references, one per line (default DIR/raw/SUBSET.target)
  --out DIR            default: CHECKPOINT's directory/eval_SUBSET
  --base FILE          the base model the delta checkpoint sits on (default: the path recorded in
                       the checkpoint at training time)
  --beam N             default 6
  --min-len N          default 10
  --max-len-b N        default 60
  --no-repeat-ngram N  default 3
  --lenpen X           default 1.0
  --batch-size N       sentences per batch (default 32)
  --gpus N             0 = CPU (default: counted from CUDA_VISIBLE_DEVICES / nvidia-smi; fp16 on a GPU)
  --tiny               tests: CPU, batch size 8
  -h, --help           this help
Everything after '--' goes to fairseq-generate last.

Environment: UNIFAIRSEQ_BIN (python + fairseq-*; default <repo>/.venv/bin, else PATH),
UNIFAIRSEQ_USER_DIR (default <repo>/user_dir; it must call unifairseq.fairseq.register()).
Exit status: 0 on success, 2 on usage, input or tool errors, fairseq-generate's status otherwise.
USAGE
}

CKPT='' DATA='' SUBSET=test REFS='' OUT='' BASE='' BEAM=6 MIN_LEN=10 MAX_LEN_B=60 NO_REPEAT=3 LENPEN=1.0 BSZ=32 GPUS=''
TINY=0 EXTRA=()
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --data) need_arg "$@"; DATA=$2; shift 2 ;;
        --subset) need_arg "$@"; SUBSET=$2; shift 2 ;;
        --refs) need_arg "$@"; REFS=$2; shift 2 ;;
        --out) need_arg "$@"; OUT=$2; shift 2 ;;
        --base) need_arg "$@"; BASE=$2; shift 2 ;;
        --beam) need_arg "$@"; BEAM=$2; shift 2 ;;
        --min-len) need_arg "$@"; MIN_LEN=$2; shift 2 ;;
        --max-len-b) need_arg "$@"; MAX_LEN_B=$2; shift 2 ;;
        --no-repeat-ngram) need_arg "$@"; NO_REPEAT=$2; shift 2 ;;
        --lenpen) need_arg "$@"; LENPEN=$2; shift 2 ;;
        --batch-size) need_arg "$@"; BSZ=$2; shift 2 ;;
        --gpus) need_arg "$@"; GPUS=$2; shift 2 ;;
        --tiny) TINY=1; shift ;;
        --) shift; EXTRA=("$@"); break ;;
        -*) die "unknown option '$1' (see --help; fairseq-generate options go after '--')" ;;
        *) [ -z "$CKPT" ] || die "one CHECKPOINT only (got '$CKPT' and '$1')"; CKPT=$1; shift ;;
    esac
done

find_python
GENERATE=$(find_tool fairseq-generate)

check_ckpt runs/xsum_mam/checkpoint_best.pt
check_eval_data preprocess_xsum bin
check_subset source-target.source.idx
check_refs "$DATA/raw/$SUBSET.target"
check_eval_base
check_int_vars BEAM MIN_LEN MAX_LEN_B NO_REPEAT BSZ
check_user_dir_tasks translation_rouge "its generator fixes fairseq 0.12's --no-repeat-ngram-size"
ENC_JSON=$(pyrun pipeline meta "$DATA/meta.json" encoder_json)
VOCAB_BPE=$(pyrun pipeline meta "$DATA/meta.json" vocab_bpe)
[ -f "$ENC_JSON" ] && [ -f "$VOCAB_BPE" ] || die "the GPT-2 BPE files recorded in $DATA/meta.json are gone"

if [ "$TINY" = 1 ]; then BSZ=8; fi
eval_devices
OUT=$(mkdir_abs "${OUT:-$(dirname "$CKPT")/eval_$SUBSET}")
OVERRIDES=()
[ -z "$BASE" ] || OVERRIDES=(--model-overrides "{'delta_base': '$(abspath "$BASE")'}")

GEN_OUT=$OUT/generate-$SUBSET.txt
echo "== fairseq-generate $SUBSET: beam $BEAM, min-len $MIN_LEN, max-len-b $MAX_LEN_B, no-repeat $NO_REPEAT, lenpen $LENPEN -> $GEN_OUT"
(cd "$REPO" && "$GENERATE" "$DATA/bin" --user-dir "$USER_DIR" --task translation_rouge --source-lang source \
    --target-lang target --truncate-source --path "$CKPT" "${OVERRIDES[@]}" --gen-subset "$SUBSET" --beam "$BEAM" \
    --min-len "$MIN_LEN" --max-len-a 0 --max-len-b "$MAX_LEN_B" --no-repeat-ngram-size "$NO_REPEAT" \
    --lenpen "$LENPEN" --batch-size "$BSZ" --required-batch-size-multiple 1 --num-workers 0 "${DEVICE[@]}" \
    "${EXTRA[@]}") > "$GEN_OUT" 2> "$OUT/generate-$SUBSET.log" \
    || fail_log $? fairseq-generate "$OUT/generate-$SUBSET.log"

echo "== ROUGE (rouge-score, use_stemmer=True) against $REFS"
META=$("$PY" -c 'import json, sys; print(json.dumps({"task": "xsum", "checkpoint": sys.argv[1], "subset": sys.argv[2],
    "decoding": {"beam": int(sys.argv[3]), "min_len": int(sys.argv[4]), "max_len_b": int(sys.argv[5]),
                 "no_repeat_ngram_size": int(sys.argv[6]), "lenpen": float(sys.argv[7])}}))' \
    "$CKPT" "$SUBSET" "$BEAM" "$MIN_LEN" "$MAX_LEN_B" "$NO_REPEAT" "$LENPEN")
pyrun metrics/scoring rouge --generate "$GEN_OUT" --refs "$REFS" --encoder-json "$ENC_JSON" --vocab-bpe "$VOCAB_BPE" \
    --hyps-out "$OUT/$SUBSET.hyp" --json "$OUT/scores.json" --meta "$META" \
    || die "scoring failed"
