#!/usr/bin/env bash
# Train one method on XSum with the paper's hyperparameters (BART-large). See --help.
set -euo pipefail

PROG=train_xsum
. "$(dirname "$0")/lib.sh"

usage() {
    cat <<USAGE
Usage: scripts/train_xsum.sh METHOD --data DIR (--base bart.large/model.pt | --tiny) [options] [-- FAIRSEQ-TRAIN-ARGS]

Step 2 of 3 for XSum (after scripts/preprocess_xsum.sh, before scripts/eval_xsum.sh).

METHOD  a preset of unifairseq ($(preset_list)) -> --arch METHOD_bart_large;
        delta -> --arch delta_bart_large (every delta flag from FAIRSEQ-TRAIN-ARGS);
        full  -> --arch bart_large (full fine-tuning).

The paper's settings (App. A; the reference code's run_xsum.sh):
  Adam (betas 0.9/0.999, eps 1e-8), lr 5e-5, linear decay to 0 (polynomial_decay, power 1),
  no warm-up, 100,000 updates, 64 documents per update, label smoothing 0.1, gradient
  clipping 0.1, weight decay 0.01, dropout 0.1, attention dropout 0.1, max source/target
  length 512/128 (cut by preprocess_xsum.sh), fp16 on GPUs.
  Model selection: ROUGE-2 on the first 1600 validation documents (split valid1), decoded with
  the test-time settings (beam 6, min length 10, max length 60, no-repeat 3-grams, lenpen 1),
  every 3000 updates (--task translation_rouge --eval-rouge; checkpoint_best.pt = best rouge2).

Batch: 64 = per-GPU batch x GPUs x --update-freq. GPUs are counted from CUDA_VISIBLE_DEVICES,
else nvidia-smi -L (none: 1 CPU process); --update-freq is derived so the product stays 64
(1 GPU: 16 x 4; 2: 16 x 2; 4: 16 x 1; 8: 8 x 1). More than one GPU: fairseq's distributed
data parallel (--distributed-world-size N, one node). Several nodes: --gpus TOTAL and fairseq's
--distributed-* options after '--'.

Options:
  --data DIR          preprocess_xsum.sh output (DIR/bin) or a fairseq data-bin directory
  --base FILE         the pretrained bart.large/model.pt (loaded with --finetune-from-model:
                      a rerun with the same --save-dir resumes from checkpoint_last.pt)
  --save-dir DIR      checkpoints + train.log (default <repo>/runs/xsum_METHOD)
  --gpus N            number of GPUs (default: counted; 0 = CPU)
  --batch-size N      documents per GPU per step, at most (default 16)
  --no-fp16           train in fp32 on GPUs
  --seed N            default 1
  --tiny              tests / CPU: see below
  -h, --help          this help
Everything after '--' is passed to fairseq-train last (it overrides what the script sets).

--tiny changes: a tiny random plain BART made on the fly (SAVE/tiny_base.pt, python -m
unifairseq.tools.tiny_base: 2+2 layers, dim 64, FFN 128, 4 heads, embeddings std 0.125) instead of
--base; the same sizes on the command line; delta sizes --attn-bn 8 --ffn-bn 16 --mid-dim 32
(lora_ffn: --lora-alpha 64, keeping s = 4); --cpu; 8 updates of 8 documents (update-freq 1);
lr 1e-3; validation/ROUGE only at the end; OMP_NUM_THREADS=1 unless set. Every other setting is
the paper's.

Environment: UNIFAIRSEQ_BIN (python + fairseq-*; default <repo>/.venv/bin, else PATH),
UNIFAIRSEQ_USER_DIR (fairseq --user-dir; default <repo>/user_dir; xsum/enro: it must call unifairseq.fairseq.register()).
Exit status: 0 on success, 2 on usage, input or tool errors, fairseq-train's status otherwise.
USAGE
}

METHOD='' DATA='' BASE='' SAVE='' GPUS='' PER_GPU=16 FP16=1 SEED=1 TINY=0 EXTRA=()
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --data) need_arg "$@"; DATA=$2; shift 2 ;;
        --base) need_arg "$@"; BASE=$2; shift 2 ;;
        --save-dir) need_arg "$@"; SAVE=$2; shift 2 ;;
        --gpus) need_arg "$@"; GPUS=$2; shift 2 ;;
        --batch-size) need_arg "$@"; PER_GPU=$2; shift 2 ;;
        --per-gpu-batch) need_arg "$@"; note "--per-gpu-batch is now spelled --batch-size"; PER_GPU=$2; shift 2 ;;
        --no-fp16) FP16=0; shift ;;
        --seed) need_arg "$@"; SEED=$2; shift 2 ;;
        --tiny) TINY=1; shift ;;
        --) shift; EXTRA=("$@"); break ;;
        -*) die "unknown option '$1' (see --help; fairseq-train options go after '--')" ;;
        *) [ -z "$METHOD" ] || die "one METHOD only (got '$METHOD' and '$1')"; METHOD=$1; shift ;;
    esac
done

# ---------------------------------------------------------------- tools
find_python
TRAIN=$(find_tool fairseq-train)

# ---------------------------------------------------------------- method -> arch
check_method
if [ "$METHOD" = full ]; then ARCH=bart_large; else ARCH=${METHOD}_bart_large; fi

# ---------------------------------------------------------------- inputs
check_train_data preprocess_xsum
[ -d "$DATA/bin" ] && DATA_BIN=$DATA/bin || DATA_BIN=$DATA
need_data_files preprocess_xsum dict.source.txt train.source-target.source.idx valid.source-target.source.idx
VALID_SUBSET=valid1
[ -f "$DATA_BIN/valid1.source-target.source.idx" ] || VALID_SUBSET=valid
check_data preprocess_xsum --layout translation --langs source target --splits "train,$VALID_SUBSET" \
    --truncate-source --max-positions 1024
check_base bart.large/model.pt
check_user_dir_tasks translation_rouge "ROUGE-2 model selection"
check_int_opts PER_GPU SEED
SAVE=$(mkdir_abs "${SAVE:-$REPO/runs/xsum_$METHOD}")

# ---------------------------------------------------------------- devices and batch
plan_batch 64 8

# ---------------------------------------------------------------- the command
LR=5e-5; MAX_UPDATE=100000; INTERVAL=3000; LOG_INTERVAL=100
MODEL=()
if [ "$TINY" = 1 ]; then
    LR=1e-3; MAX_UPDATE=8; INTERVAL=1000000; LOG_INTERVAL=1
    make_tiny_base BART bart "$DATA_BIN" --source-lang source --target-lang target \
        --layers 2 --dim 64 --ffn-dim 128 --heads 4 --embed-std 0.125
    tiny_seq2seq_model
    tiny_delta_sizes
fi
EVAL_ARGS='{"beam": 6, "min_len": 10, "max_len_b": 60, "no_repeat_ngram_size": 3, "lenpen": 1.0}'
ARGS=("$DATA_BIN" --user-dir "$USER_DIR" --task translation_rouge --source-lang source --target-lang target
    --truncate-source
    --arch "$ARCH" "${MODEL[@]}" --finetune-from-model "$BASE"
    --criterion label_smoothed_cross_entropy --label-smoothing 0.1
    --optimizer adam --adam-betas "(0.9, 0.999)" --adam-eps 1e-08 --weight-decay 0.01 --clip-norm 0.1
    --lr "$LR" --lr-scheduler polynomial_decay --total-num-update "$MAX_UPDATE" --warmup-updates 0
    --max-update "$MAX_UPDATE" --batch-size "$BATCH" --update-freq "$UPDATE_FREQ" --required-batch-size-multiple 1
    --dropout 0.1 --attention-dropout 0.1
    --eval-rouge --eval-rouge-args "$EVAL_ARGS" --valid-subset "$VALID_SUBSET" --ignore-unused-valid-subsets
    --batch-size-valid 32
    --best-checkpoint-metric rouge2 --maximize-best-checkpoint-metric
    --validate-interval-updates "$INTERVAL" --save-interval-updates "$INTERVAL" --keep-interval-updates 1
    --validate-interval 1000000 --save-interval 1000000 --no-epoch-checkpoints)
finish_train_args
run_train "== fairseq-train --arch $ARCH on $DATA_BIN: $GPUS GPU(s), batch $BATCH x update-freq $UPDATE_FREQ" \
     "x $((GPUS > 0 ? GPUS : 1)) = $BATCH_TOTAL documents, $MAX_UPDATE updates (log: $SAVE/train.log)"

"$PY" - "$SAVE/train.log" <<'PYEOF'
import json, sys
best = None
for line in open(sys.argv[1], encoding="utf-8"):
    if "| valid |" in line or "| valid1 |" in line:
        try:
            row = json.loads(line[line.index("{"):])
        except (ValueError, json.JSONDecodeError):
            continue
        key = next((k for k in row if k.endswith("_rouge2")), None)
        if key and (best is None or float(row[key]) > float(best[key])):
            best = row
if best:
    sub = next(k for k in best if k.endswith("_rouge2")).rsplit("_", 1)[0]
    print(f"best validation ({sub}): " + ", ".join(f"{m} {best[f'{sub}_{m}']}" for m in ("rouge1", "rouge2", "rougeL")
                                                  if f"{sub}_{m}" in best) + f" at update {best.get(f'{sub}_num_updates')}")
PYEOF
echo "== checkpoints: $SAVE/checkpoint_best.pt (best validation ROUGE-2), $SAVE/checkpoint_last.pt"
next_eval xsum
