#!/usr/bin/env bash
# Translate the WMT16 en-ro test set with the paper's settings and score BLEU. See --help.
set -euo pipefail

PROG=eval_enro
. "$(dirname "$0")/lib.sh"

usage() {
    cat <<USAGE
Usage: scripts/eval_enro.sh CHECKPOINT --data DIR [options] [-- FAIRSEQ-GENERATE-ARGS]

Step 3 of 3 for WMT16 en-ro (after scripts/preprocess_enro.sh and scripts/train_enro.sh).

  fairseq-generate --task translation_mbart (beam 5, --max-len-b 200, length penalty 1.0: the
  reference code's settings; --required-batch-size-multiple 1 so no sentence is dropped)
  -> hypotheses in data set order, [ro_RO] tags removed -> sentencepiece decoding -> BLEU against
  the untokenized references DIR/raw/test.ro, twice (unifairseq/metrics/scoring.py bleu):
    bleu           standard sacreBLEU on detokenized text (13a tokenization)
    bleu_wmt16_ro  the paper's number: both sides through the WMT16 Romanian pipeline (Moses
                   punctuation normalization, normalise-romanian, remove-diacritics, Moses
                   tokenizer -no-escape, via sacremoses), then sacreBLEU with tokenize='none'
  Prints a table and writes OUT/scores.json.

Options:
  --data DIR           scripts/preprocess_enro.sh output (DIR/bin, DIR/raw, DIR/meta.json)
  --subset NAME        test (default) or valid
  --refs FILE          references, one per line (default DIR/raw/SUBSET.ro)
  --spm-model FILE     sentencepiece model (default: the one recorded in DIR/meta.json)
  --langs LIST         default: mbart.cc25's 25 codes (must match training)
  --out DIR            default: CHECKPOINT's directory/eval_SUBSET
  --base FILE          the base model the delta checkpoint sits on (default: the path recorded in
                       the checkpoint at training time)
  --beam N             default 5
  --max-len-b N        default 200
  --lenpen X           default 1.0
  --batch-size N       sentences per batch (default 32)
  --gpus N             0 = CPU (default: counted from CUDA_VISIBLE_DEVICES / nvidia-smi; fp16 on a GPU)
  --tiny               tests: CPU, batch size 8, single-threaded
  -h, --help           this help
Everything after '--' goes to fairseq-generate last.

Environment: UNIFAIRSEQ_BIN (python + fairseq-*; default <repo>/.venv/bin, else PATH),
UNIFAIRSEQ_USER_DIR (default <repo>/user_dir; it must call unifairseq.fairseq.register()).
Exit status: 0 on success, 2 on usage, input or tool errors, fairseq-generate's status otherwise.
USAGE
}

LANGS=$MBART_LANGS
CKPT='' DATA='' SUBSET=test REFS='' OUT='' BASE='' BEAM=5 MAX_LEN_B=200 LENPEN=1.0 BSZ=32 GPUS='' SPM=''
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
        --spm-model) need_arg "$@"; SPM=$2; shift 2 ;;
        --langs) need_arg "$@"; LANGS=$2; shift 2 ;;
        --max-len-b) need_arg "$@"; MAX_LEN_B=$2; shift 2 ;;
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

check_ckpt runs/enro_mam/checkpoint_best.pt
check_eval_data preprocess_enro bin
check_subset en_XX-ro_RO.en_XX.idx
check_refs "$DATA/raw/$SUBSET.ro"
check_eval_base
check_int_vars BEAM MAX_LEN_B BSZ
SPM=${SPM:-$(pyrun pipeline meta "$DATA/meta.json" spm_model)}
[ -f "$SPM" ] || die "sentencepiece model '$SPM' does not exist (give --spm-model)"
check_user_dir_tasks translation_mbart "fairseq 0.12's translation_from_pretrained_bart cannot decode"

if [ "$TINY" = 1 ]; then BSZ=8; fi
eval_devices
OUT=$(mkdir_abs "${OUT:-$(dirname "$CKPT")/eval_$SUBSET}")
OVERRIDES=()
[ -z "$BASE" ] || OVERRIDES=(--model-overrides "{'delta_base': '$(abspath "$BASE")'}")

GEN_OUT=$OUT/generate-$SUBSET.txt
echo "== fairseq-generate $SUBSET: beam $BEAM, max-len-b $MAX_LEN_B, lenpen $LENPEN -> $GEN_OUT"
(cd "$REPO" && "$GENERATE" "$DATA/bin" --user-dir "$USER_DIR" --task translation_mbart --langs "$LANGS" \
    --source-lang en_XX --target-lang ro_RO --path "$CKPT" "${OVERRIDES[@]}" --gen-subset "$SUBSET" \
    --beam "$BEAM" --max-len-a 0 --max-len-b "$MAX_LEN_B" \
    --lenpen "$LENPEN" --batch-size "$BSZ" --required-batch-size-multiple 1 --num-workers 0 "${DEVICE[@]}" \
    "${EXTRA[@]}") > "$GEN_OUT" 2> "$OUT/generate-$SUBSET.log" \
    || fail_log $? fairseq-generate "$OUT/generate-$SUBSET.log"

echo "== BLEU against $REFS"
META=$("$PY" -c 'import json, sys; print(json.dumps({"task": "enro", "checkpoint": sys.argv[1], "subset": sys.argv[2],
    "decoding": {"beam": int(sys.argv[3]), "max_len_b": int(sys.argv[4]), "lenpen": float(sys.argv[5])},
    "spm_model": sys.argv[6]}))' "$CKPT" "$SUBSET" "$BEAM" "$MAX_LEN_B" "$LENPEN" "$SPM")
pyrun metrics/scoring bleu --generate "$GEN_OUT" --refs "$REFS" --spm-model "$SPM" --strip "[ro_RO]" "[en_XX]" \
    --hyps-out "$OUT/$SUBSET.hyp" --json "$OUT/scores.json" --meta "$META" \
    || die "scoring failed"
