#!/usr/bin/env bash
# Raw WMT16 en-ro -> mBART sentencepiece -> fairseq binaries with the mBART dictionary. See --help.
set -euo pipefail

PROG=preprocess_enro
. "$(dirname "$0")/lib.sh"

usage() {
    cat <<USAGE
Usage: scripts/preprocess_enro.sh --raw DIR --out DIR (--spm-model FILE --dict FILE | --tiny) [options]

Step 1 of 3 for WMT16 en-ro (then scripts/train_enro.sh, scripts/eval_enro.sh).

  DIR/{train,valid,test}.{en,ro}  (valid may be named dev; test is optional)
    -> OUT/spm/SPLIT.{en_XX,ro_RO}   mbart.cc25's sentencepiece model (pieces, as spm_encode
                                     --output_format=piece in fairseq's mBART recipe)
    -> OUT/bin/                      fairseq-preprocess -s en_XX -t ro_RO --srcdict DICT --tgtdict DICT
  OUT/raw/{valid,test}.{en,ro} are copies of the untokenized text: the references of eval_enro.sh.

Lengths follow the paper (max source/target 150 tokens with </s> and the language tag that
translation_from_pretrained_bart appends): every line is cut to its first 148 pieces.

Options:
  --raw DIR           raw WMT16 en-ro directory (required)
  --out DIR           output directory (required); OUT/meta.json records what was done
  --spm-model FILE    mbart.cc25/sentence.bpe.model (real runs)
  --dict FILE         mbart.cc25/dict.txt (real runs)
  --max-len N         default 150
  --workers N         binarization processes (default: number of CPUs)
  --tiny              tests: train a small sentencepiece model (--tiny-vocab pieces) on the
                      training text (both sides) and build the dictionary from the data
  --tiny-vocab N      default 1000
  -h, --help          this help

Environment: UNIFAIRSEQ_BIN = directory holding python and fairseq-* (default <repo>/.venv/bin, else PATH).
Exit status: 0 on success, 2 on usage, input or tool errors.
USAGE
}

RAW='' OUT='' SPM='' DICT='' MAX_LEN=150 WORKERS='' TINY=0 TINY_VOCAB=1000
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --raw) need_arg "$@"; RAW=$2; shift 2 ;;
        --out) need_arg "$@"; OUT=$2; shift 2 ;;
        --spm-model) need_arg "$@"; SPM=$2; shift 2 ;;
        --dict) need_arg "$@"; DICT=$2; shift 2 ;;
        --max-len) need_arg "$@"; MAX_LEN=$2; shift 2 ;;
        --workers) need_arg "$@"; WORKERS=$2; shift 2 ;;
        --tiny) TINY=1; shift ;;
        --tiny-vocab) need_arg "$@"; TINY_VOCAB=$2; shift 2 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
[ -n "$RAW" ] || die "--raw DIR is required (see --help)"
[ -n "$OUT" ] || die "--out DIR is required (see --help)"
[ -d "$RAW" ] || die "raw en-ro directory '$RAW' does not exist"
if [ "$TINY" = 1 ]; then
    [ -z "$SPM" ] && [ -z "$DICT" ] || die "--tiny trains its own sentencepiece model and dictionary; drop --spm-model/--dict"
else
    [ -n "$SPM" ] || die "--spm-model mbart.cc25/sentence.bpe.model is required (or --tiny)"
    [ -n "$DICT" ] || die "--dict mbart.cc25/dict.txt is required (or --tiny)"
    [ -f "$SPM" ] || die "sentencepiece model '$SPM' does not exist"
    [ -f "$DICT" ] || die "dictionary '$DICT' does not exist"
fi
is_int "$MAX_LEN" && [ "$MAX_LEN" -ge 3 ] || die "--max-len must be an integer >= 3"
is_int "$TINY_VOCAB" && [ "$TINY_VOCAB" -ge 50 ] || die "--tiny-vocab must be an integer >= 50"
default_workers

# splits: train and valid (or dev) required, test optional
declare -A SPLIT_FILE=()
for split in train valid test; do
    names=("$split"); [ "$split" = valid ] && names=(valid dev)
    for n in "${names[@]}"; do
        if [ -f "$RAW/$n.en" ] || [ -f "$RAW/$n.ro" ]; then
            [ -f "$RAW/$n.en" ] && [ -f "$RAW/$n.ro" ] || die "$RAW/$n.en and $RAW/$n.ro must both exist"
            a=$(wc -l < "$RAW/$n.en"); b=$(wc -l < "$RAW/$n.ro")
            [ "$a" = "$b" ] || die "$RAW/$n.en has $a lines but $RAW/$n.ro has $b: the files must be parallel"
            [ "$a" -gt 0 ] || die "$RAW/$n.en is empty"
            SPLIT_FILE[$split]=$n; break
        fi
    done
done
[ -n "${SPLIT_FILE[train]:-}" ] || die "no training data: expected $RAW/train.en and $RAW/train.ro"
[ -n "${SPLIT_FILE[valid]:-}" ] || die "no validation data: expected $RAW/valid.{en,ro} (or dev.{en,ro})"
SPLITS=(train valid); [ -n "${SPLIT_FILE[test]:-}" ] && SPLITS+=(test)

find_preprocess_tools
"$PY" -c 'import sentencepiece' 2>/dev/null \
    || die "the Python package sentencepiece is missing: $PY -m pip install --no-deps sentencepiece"

OUT=$(mkdir_abs "$OUT")
RAW=$(cd "$RAW" && pwd)
rm -rf "${OUT:?}/raw" "${OUT:?}/spm" "${OUT:?}/bin" "${OUT:?}/meta.json" "${OUT:?}/tiny_spm.model" "${OUT:?}/tiny_spm.vocab"
mkdir -p "$OUT/raw" "$OUT/spm"
for s in "${SPLITS[@]}"; do
    [ "$s" = train ] && continue
    cp "$RAW/${SPLIT_FILE[$s]}.en" "$OUT/raw/$s.en"; cp "$RAW/${SPLIT_FILE[$s]}.ro" "$OUT/raw/$s.ro"
done

if [ "$TINY" = 1 ]; then
    echo "== [0/2] tiny sentencepiece model ($TINY_VOCAB pieces) on $RAW/${SPLIT_FILE[train]}.{en,ro}"
    SPM=$(pyrun pipeline spm-train --inputs "$RAW/${SPLIT_FILE[train]}.en" "$RAW/${SPLIT_FILE[train]}.ro" \
          --model-prefix "$OUT/tiny_spm" --vocab-size "$TINY_VOCAB")
fi
SPM=$(abspath "$SPM")
[ -z "$DICT" ] || DICT=$(abspath "$DICT")

echo "== [1/2] sentencepiece ($SPM) -> $OUT/spm (cut to $((MAX_LEN - 2)) pieces)"
ins=() outs=()
for s in "${SPLITS[@]}"; do
    ins+=("$RAW/${SPLIT_FILE[$s]}.en" "$RAW/${SPLIT_FILE[$s]}.ro"); outs+=("$OUT/spm/$s.en_XX" "$OUT/spm/$s.ro_RO")
done
pyrun pipeline spm-encode --model "$SPM" --max-pieces $((MAX_LEN - 2)) --inputs "${ins[@]}" --outputs "${outs[@]}"

echo "== [2/2] fairseq-preprocess -> $OUT/bin"
PRE=(--source-lang en_XX --target-lang ro_RO --trainpref "$OUT/spm/train" --validpref "$OUT/spm/valid"
     --destdir "$OUT/bin" --workers "$WORKERS")
[ -f "$OUT/spm/test.en_XX" ] && PRE+=(--testpref "$OUT/spm/test")
if [ -n "$DICT" ]; then PRE+=(--srcdict "$DICT" --tgtdict "$DICT"); else PRE+=(--joined-dictionary); fi
binarize "${PRE[@]}"

counts=()
for s in "${SPLITS[@]}"; do counts+=("examples_$s=$(wc -l < "$RAW/${SPLIT_FILE[$s]}.en")"); done
pyrun pipeline meta-set "$OUT/meta.json" task=enro source_lang=en_XX target_lang=ro_RO "spm_model=$SPM" \
    "dict=${DICT:-null}" "tiny=$TINY" "max_len=$MAX_LEN" "raw=$RAW" "${counts[@]}"
echo "== done: binaries in $OUT/bin, meta in $OUT/meta.json"
echo "   next: scripts/train_enro.sh METHOD --data $OUT ..."
