#!/usr/bin/env bash
# End-to-end demo of the fairseq CLI path on real English->Romanian sentences, on CPU:
#   plain tiny BART checkpoint (random weights, official bart.large/model.pt layout)
#   -> fairseq-train --arch mam_bart_base --restore-file it (only the MAM deltas train)
#   -> fairseq-generate with the trained checkpoint.
# Run `scripts/demo_tiny_bart.sh --help` for the options.
set -euo pipefail

PROG=demo_tiny_bart
. "$(dirname "$0")/lib.sh"

usage() {
    cat <<USAGE
Usage: scripts/demo_tiny_bart.sh [options]

Trains a MAM adapter (prefix tuning + scaled parallel FFN adapter) on top of a tiny,
randomly initialised plain BART (2+2 layers, dim 64) for a few dozen updates on real
WMT16 en-ro sentences, then decodes the test split with beam search. About 20-40 s on
2 CPU cores. The point is the pipeline, not the translations: the base is random, so
after 60 updates the hypotheses are frequent Romanian words, but the loss must fall.

Data: \$UNIFAIRSEQ_DATA/wmt16_en_ro/dev.{en,ro}, read in place (nothing is copied into the repo).
      UNIFAIRSEQ_DATA defaults to <repo>/../shared/data (now: ${UNIFAIRSEQ_DATA:-$REPO/../shared/data}).

Options:
  --workdir DIR       where every file goes (default: <repo>/runs/demo_tiny_bart, git-ignored);
                      its raw/, data-bin/, checkpoints/, tiny_bart.pt and logs are replaced on each run
  --train-lines N     sentence pairs for training (default 300); the next --valid-lines pairs
                      are the valid split and the ones after those the test split
  --valid-lines N     sentence pairs in each of valid and test (default 30)
  --max-tokens-per-sentence N   truncate sentences to N tokens (default 30)
  --max-update N      training updates (default 60)
  --lr LR             Adam learning rate (default 0.003)
  --embed-std S       std of the tiny base's token embeddings (default 0.125 = dim^-0.5; see
                      python -m unifairseq.tools.make_tiny_bart --help)
  --save-full         write the whole model into the checkpoints (fairseq-train --delta-save-full)
                      instead of only the trained delta tensors + base fingerprint
  --quick             small run for the tests: 160 train lines, 16 valid/test, 30 updates
  -h, --help          show this help

Environment:
  UNIFAIRSEQ_DATA     data root holding wmt16_en_ro/ (see above)
  UNIFAIRSEQ_BIN      directory holding python and fairseq-* (default: <repo>/.venv/bin, else PATH)

Files in the work dir: raw/{train,valid,test}.{en,ro}, data-bin/, tiny_bart.pt (base),
checkpoints/checkpoint_last.pt, train_args.json (the fairseq-train argv), train.log
(json, one line per update), generate.out (S-/T-/H-/D-/P- lines and BLEU).

Exit status: 0 on success; 1 if the training loss did not go down; 2 on usage, data or tool errors.
USAGE
}

WORKDIR="$REPO/runs/demo_tiny_bart"
TRAIN_LINES=300
VALID_LINES=30
MAX_TOK=30
MAX_UPDATE=60
LR=0.003
EMBED_STD=0.125
SAVE_FULL=()
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --workdir) need_arg_present "$@"; WORKDIR=$2; shift 2 ;;
        --train-lines) need_arg_present "$@"; TRAIN_LINES=$2; shift 2 ;;
        --valid-lines) need_arg_present "$@"; VALID_LINES=$2; shift 2 ;;
        --max-tokens-per-sentence) need_arg_present "$@"; MAX_TOK=$2; shift 2 ;;
        --max-update) need_arg_present "$@"; MAX_UPDATE=$2; shift 2 ;;
        --lr) need_arg_present "$@"; LR=$2; shift 2 ;;
        --embed-std) need_arg_present "$@"; EMBED_STD=$2; shift 2 ;;
        --save-full) SAVE_FULL=(--delta-save-full); shift ;;
        --quick) TRAIN_LINES=160; VALID_LINES=16; MAX_UPDATE=30; shift ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
for v in TRAIN_LINES VALID_LINES MAX_TOK MAX_UPDATE; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "--$(echo "$v" | tr 'A-Z_' 'a-z-') must be a positive integer, got '${!v}'"
done
[ "$MAX_UPDATE" -ge 2 ] || die "--max-update must be at least 2 to compare first and last losses"

# ---------------------------------------------------------------- tools
find_python
PREPROCESS=$(find_tool fairseq-preprocess)
TRAIN=$(find_tool fairseq-train)
GENERATE=$(find_tool fairseq-generate)

# ---------------------------------------------------------------- data
DATA=${UNIFAIRSEQ_DATA:-$REPO/../shared/data}
SRC_FILE="$DATA/wmt16_en_ro/dev.en"
TGT_FILE="$DATA/wmt16_en_ro/dev.ro"
if [ ! -f "$SRC_FILE" ] || [ ! -f "$TGT_FILE" ]; then
    die "WMT16 en-ro data not found: expected $SRC_FILE and $TGT_FILE.
Point UNIFAIRSEQ_DATA at the directory that holds wmt16_en_ro/dev.en and wmt16_en_ro/dev.ro, e.g.
    UNIFAIRSEQ_DATA=/path/to/shared/data scripts/demo_tiny_bart.sh"
fi

WORKDIR=$(mkdir_abs "$WORKDIR")
RAW="$WORKDIR/raw"; DATA_BIN="$WORKDIR/data-bin"; SAVE_DIR="$WORKDIR/checkpoints"
BASE_PT="$WORKDIR/tiny_bart.pt"; TRAIN_LOG="$WORKDIR/train.log"; GEN_OUT="$WORKDIR/generate.out"
# Only what this script writes is removed (a stale checkpoints/ would otherwise be resumed).
rm -rf "$RAW" "$DATA_BIN" "$SAVE_DIR" "$BASE_PT" "$TRAIN_LOG" "$GEN_OUT" "$WORKDIR/train_args.json" \
       "$WORKDIR/preprocess.log" "$WORKDIR/make_tiny_bart.log"
mkdir -p "$RAW"

echo "== [1/5] data: $TRAIN_LINES train / $VALID_LINES valid / $VALID_LINES test pairs from $DATA/wmt16_en_ro/dev.{en,ro}"
# Lower-cased, punctuation split from words, whitespace-tokenized, truncated to MAX_TOK tokens;
# pairs with an empty side are dropped.
"$PY" - "$SRC_FILE" "$TGT_FILE" "$RAW" "$TRAIN_LINES" "$VALID_LINES" "$MAX_TOK" <<'PYEOF'
import re, sys
src_file, tgt_file, raw, n_train, n_valid, max_tok = sys.argv[1:]
n_train, n_valid, max_tok = int(n_train), int(n_valid), int(max_tok)
def norm(line):
    return " ".join(re.findall(r"\w+|[^\w\s]", line.lower())[:max_tok])
with open(src_file, encoding="utf-8") as fs, open(tgt_file, encoding="utf-8") as ft:
    pairs = [(norm(s), norm(t)) for s, t in zip(fs, ft)]
pairs = [p for p in pairs if p[0] and p[1]]
need = n_train + 2 * n_valid
if len(pairs) < need:
    sys.exit(f"demo_tiny_bart: error: only {len(pairs)} usable sentence pairs, {need} requested")
splits = {"train": pairs[:n_train], "valid": pairs[n_train:n_train + n_valid],
          "test": pairs[n_train + n_valid:need]}
for split, ps in splits.items():
    for i, lang in enumerate(("en", "ro")):
        with open(f"{raw}/{split}.{lang}", "w", encoding="utf-8") as f:
            f.writelines(p[i] + "\n" for p in ps)
PYEOF

echo "== [2/5] fairseq-preprocess --joined-dictionary (vocab capped at 3000) -> $DATA_BIN"
"$PREPROCESS" --source-lang en --target-lang ro \
    --trainpref "$RAW/train" --validpref "$RAW/valid" --testpref "$RAW/test" \
    --destdir "$DATA_BIN" --joined-dictionary --nwordssrc 3000 --nwordstgt 3000 --workers 1 \
    > "$WORKDIR/preprocess.log" 2>&1 \
    || { tail -20 "$WORKDIR/preprocess.log" >&2; die "fairseq-preprocess failed (log: $WORKDIR/preprocess.log)"; }

echo "== [3/5] tiny plain BART (bart_base family, random weights) -> $BASE_PT"
(cd "$REPO" && "$PY" -m unifairseq.tools.make_tiny_bart "$DATA_BIN" "$BASE_PT" \
    --layers 2 --dim 64 --ffn-dim 128 --heads 4 --seed 0 --embed-std "$EMBED_STD") \
    > "$WORKDIR/make_tiny_bart.log" 2>&1 \
    || { tail -20 "$WORKDIR/make_tiny_bart.log" >&2; die "make_tiny_bart failed (log: $WORKDIR/make_tiny_bart.log)"; }

# --required-batch-size-multiple 1: fairseq 0.12's batch_by_size drops the last batch when its
# size is not a multiple of this (default 8), which would silently skip test sentences.
TRAIN_ARGS=("$DATA_BIN" --user-dir "$REPO/user_dir" --task translation --source-lang en --target-lang ro
    --arch mam_bart_base
    --encoder-layers 2 --decoder-layers 2 --encoder-embed-dim 64 --decoder-embed-dim 64
    --encoder-ffn-embed-dim 128 --decoder-ffn-embed-dim 128
    --encoder-attention-heads 4 --decoder-attention-heads 4
    --attn-bn 8 --ffn-bn 32 --mid-dim 32 --share-all-embeddings "${SAVE_FULL[@]}"
    --restore-file "$BASE_PT" --reset-optimizer --reset-dataloader --reset-meters --reset-lr-scheduler
    --criterion cross_entropy --optimizer adam --adam-betas "(0.9, 0.98)" --lr "$LR" --clip-norm 1.0
    --dropout 0.0 --attention-dropout 0.0 --max-update "$MAX_UPDATE" --batch-size 16
    --required-batch-size-multiple 1 --log-format json --log-interval 1 --no-progress-bar
    --no-epoch-checkpoints --save-dir "$SAVE_DIR" --cpu --num-workers 0 --seed 1)
save_args "$WORKDIR/train_args.json" "${TRAIN_ARGS[@]}"

echo "== [4/5] fairseq-train --arch mam_bart_base, $MAX_UPDATE updates (log: $TRAIN_LOG)"
(cd "$REPO" && "$TRAIN" "${TRAIN_ARGS[@]}") > "$TRAIN_LOG" 2>&1 \
    || { tail -30 "$TRAIN_LOG" >&2; die "fairseq-train failed (log: $TRAIN_LOG)"; }

echo "== [5/5] fairseq-generate on the test split, beam 4 (output: $GEN_OUT)"
(cd "$REPO" && "$GENERATE" "$DATA_BIN" --user-dir "$REPO/user_dir" --task translation \
    --source-lang en --target-lang ro --path "$SAVE_DIR/checkpoint_last.pt" --gen-subset test \
    --beam 4 --max-len-b 30 --batch-size 16 --required-batch-size-multiple 1 --cpu --num-workers 0) \
    > "$GEN_OUT" 2>&1 \
    || { tail -30 "$GEN_OUT" >&2; die "fairseq-generate failed (output: $GEN_OUT)"; }

echo "== results"
"$PY" - "$TRAIN_LOG" "$GEN_OUT" <<'PYEOF'
import json, sys
log, gen = sys.argv[1:]
losses = []
with open(log, encoding="utf-8") as f:
    for line in f:
        if "| train_inner |" in line:
            losses.append(float(json.loads(line.split("| train_inner |", 1)[1])["loss"]))
if len(losses) < 2:
    print(f"demo_tiny_bart: error: found {len(losses)} per-update losses in {log}", file=sys.stderr)
    sys.exit(2)
k = min(5, len(losses) // 2)
first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
print(f"training loss (base 2): first update {losses[0]:.3f}, last update {losses[-1]:.3f}; "
      f"mean of the first {k} {first:.3f}, of the last {k} {last:.3f} ({len(losses)} updates)")
with open(gen, encoding="utf-8") as f:
    lines = f.read().splitlines()
hyps = [l for l in lines if l.startswith("H-")]
srcs = {l.split("\t")[0][2:]: l.split("\t")[-1] for l in lines if l.startswith("S-")}
print(f"{len(hyps)} test hypotheses; the first two:")
for h in hyps[:2]:
    idx, score, text = h.split("\t")
    print(f"  S-{idx[2:]}\t{srcs.get(idx[2:], '?')}\n  H-{idx[2:]}\t{text}\t(score {score})")
for l in lines:
    if l.startswith("Generate ") and "BLEU" in l:
        print("  " + l)
if not last < first:
    print(f"demo_tiny_bart: FAIL: the training loss did not go down ({first:.3f} -> {last:.3f})", file=sys.stderr)
    sys.exit(1)
print("OK: the training loss went down")
PYEOF
