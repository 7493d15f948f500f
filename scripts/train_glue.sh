#!/usr/bin/env bash
# Train one method on a GLUE task with the paper's hyperparameters (RoBERTa-base). See --help.
set -euo pipefail

PROG=train_glue
. "$(dirname "$0")/lib.sh"

usage() {
    cat <<USAGE
Usage: scripts/train_glue.sh TASK METHOD --data DIR (--base roberta.base/model.pt | --tiny) [options] [-- FAIRSEQ-TRAIN-ARGS]

Step 2 of 3 for GLUE (after scripts/preprocess_glue.sh, before scripts/eval_glue.sh).
TASK: MNLI or SST-2 (must match the data).

METHOD  a preset of unifairseq ($(preset_list)) -> --arch METHOD_roberta_base
        (GLUE's MAM: prefix l=16, FFN adapter r=16, s=2); the classification head is trained too;
        delta -> --arch delta_roberta_base (every delta flag from FAIRSEQ-TRAIN-ARGS);
        full  -> --arch roberta_base (full fine-tuning).

fairseq's sentence_prediction task (--init-token 0 --separator-token 2, --max-positions 512,
--num-classes from the data: MNLI 3, SST-2 2) with the paper's settings (App. A; the reference
code's run_glue.sh):
  Adam (betas 0.9/0.98, eps 1e-6), lr 1e-4, linear decay to 0 (polynomial_decay) after a warm-up
  of 6% of the updates, 10 epochs of 32 sentences per update (total updates = 10 x
  ceil(train examples / 32), from DIR/meta.json), label smoothing 0, gradient clipping 1.0,
  weight decay 0.1, dropout 0.1, attention dropout 0.1, fp16 on GPUs.
  Model selection: dev accuracy, every epoch (checkpoint_best.pt).

Batch: 32 = per-GPU batch x GPUs x --update-freq. GPUs are counted from CUDA_VISIBLE_DEVICES,
else nvidia-smi -L (none: 1 CPU process); --update-freq is derived so the product stays 32.
More than one GPU: fairseq's distributed data parallel (--distributed-world-size N,
--find-unused-parameters since RoBERTa's LM head gets no gradient). Several nodes: --gpus TOTAL
and fairseq's --distributed-* options after '--'.

Options:
  --data DIR          preprocess_glue.sh output (DIR/bin, DIR/meta.json)
  --base FILE         the pretrained roberta.base/model.pt (loaded with --finetune-from-model:
                      a rerun with the same --save-dir resumes from checkpoint_last.pt)
  --save-dir DIR      checkpoints + train.log (default <repo>/runs/glue_TASK_METHOD)
  --gpus N            number of GPUs (default: counted; 0 = CPU)
  --batch-size N      sentences per GPU per step, at most (default 32)
  --epochs N          default 10
  --no-fp16           train in fp32 on GPUs
  --seed N            default 1 (the paper reports the median of 5 seeds)
  --tiny              tests / CPU: see below
  -h, --help          this help
Everything after '--' is passed to fairseq-train last (it overrides what the script sets).

--tiny changes: a tiny random plain RoBERTa made on the fly (SAVE/tiny_base.pt, python -m
unifairseq.tools.tiny_base roberta: 2 layers, dim 64, FFN 128, 4 heads, 512 positions, LM head, no
classification head) instead of --base; the same sizes on the command line; delta sizes
--attn-bn 8 --ffn-bn 16 --mid-dim 32 (lora_ffn: --lora-alpha 64); --cpu; 8 updates of 8
sentences (update-freq 1, no warm-up); lr 1e-3; validation at the end; OMP_NUM_THREADS=1 unless
set. Every other setting is the paper's.

Environment: UNIFAIRSEQ_BIN (python + fairseq-*; default <repo>/.venv/bin, else PATH),
UNIFAIRSEQ_USER_DIR (fairseq --user-dir; default <repo>/user_dir).
Exit status: 0 on success, 2 on usage, input or tool errors, fairseq-train's status otherwise.
USAGE
}

TASK='' METHOD='' DATA='' BASE='' SAVE='' GPUS='' PER_GPU=32 EPOCHS=10 FP16=1 SEED=1 TINY=0 EXTRA=()
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --data) need_arg "$@"; DATA=$2; shift 2 ;;
        --base) need_arg "$@"; BASE=$2; shift 2 ;;
        --save-dir) need_arg "$@"; SAVE=$2; shift 2 ;;
        --gpus) need_arg "$@"; GPUS=$2; shift 2 ;;
        --batch-size) need_arg "$@"; PER_GPU=$2; shift 2 ;;
        --per-gpu-batch) need_arg "$@"; note "--per-gpu-batch is now spelled --batch-size"; PER_GPU=$2; shift 2 ;;
        --epochs) need_arg "$@"; EPOCHS=$2; shift 2 ;;
        --no-fp16) FP16=0; shift ;;
        --seed) need_arg "$@"; SEED=$2; shift 2 ;;
        --tiny) TINY=1; shift ;;
        --) shift; EXTRA=("$@"); break ;;
        -*) die "unknown option '$1' (see --help; fairseq-train options go after '--')" ;;
        *) if [ -z "$TASK" ]; then TASK=$1
           elif [ -z "$METHOD" ]; then METHOD=$1
           else die "unexpected argument '$1' (TASK and METHOD are given: '$TASK' '$METHOD')"; fi
           shift ;;
    esac
done

# ---------------------------------------------------------------- tools
find_python
TRAIN=$(find_tool fairseq-train)

# ---------------------------------------------------------------- method -> arch
[ -n "$TASK" ] || die "TASK (MNLI or SST-2) and METHOD are required (see --help)"
glue_task
check_method
if [ "$METHOD" = full ]; then ARCH=roberta_base; else ARCH=${METHOD}_roberta_base; fi

# ---------------------------------------------------------------- inputs
check_train_data preprocess_glue
DATA_BIN=$DATA/bin
need_data_files preprocess_glue input0/dict.txt input0/train.idx input0/valid.idx label/dict.txt label/train.idx
[ -f "$DATA/meta.json" ] || die "$DATA/meta.json is missing: --data must be the output of scripts/preprocess_glue.sh"
check_data preprocess_glue --layout sentence_prediction --splits train,valid --max-positions 512
DATA_TASK=$(pyrun pipeline meta "$DATA/meta.json" task)
[ "$DATA_TASK" = "$TASK" ] || die "--data holds $DATA_TASK, not $TASK"
NUM_CLASSES=$(pyrun pipeline meta "$DATA/meta.json" num_classes)
N_TRAIN=$(pyrun pipeline meta "$DATA/meta.json" train_examples)
check_base roberta.base/model.pt
check_user_dir
check_int_opts PER_GPU SEED EPOCHS
SAVE=$(mkdir_abs "${SAVE:-$REPO/runs/glue_${TASK}_$METHOD}")

# ---------------------------------------------------------------- devices and batch
plan_batch 32 8 --find-unused-parameters

# ---------------------------------------------------------------- the command
LR=1e-4; LOG_INTERVAL=50
MAX_UPDATE=$(( EPOCHS * ( (N_TRAIN + BATCH_TOTAL - 1) / BATCH_TOTAL ) ))
WARMUP=$(( MAX_UPDATE * 6 / 100 ))
MODEL=()
if [ "$TINY" = 1 ]; then
    LR=1e-3; MAX_UPDATE=8; WARMUP=0; LOG_INTERVAL=1
    make_tiny_base RoBERTa roberta "$DATA_BIN/input0" --max-positions 512 \
        --layers 2 --dim 64 --ffn-dim 128 --heads 4
    MODEL=(--encoder-layers 2 --encoder-embed-dim 64 --encoder-ffn-embed-dim 128 --encoder-attention-heads 4)
    tiny_delta_sizes
fi
ARGS=("$DATA_BIN" --user-dir "$USER_DIR" --task sentence_prediction --num-classes "$NUM_CLASSES"
    --init-token 0 --separator-token 2 --max-positions 512 --arch "$ARCH" "${MODEL[@]}" --finetune-from-model "$BASE"
    --criterion sentence_prediction
    --optimizer adam --adam-betas "(0.9, 0.98)" --adam-eps 1e-06 --weight-decay 0.1 --clip-norm 1.0
    --lr "$LR" --lr-scheduler polynomial_decay --total-num-update "$MAX_UPDATE" --warmup-updates "$WARMUP"
    --max-epoch "$EPOCHS" --max-update "$MAX_UPDATE" --batch-size "$BATCH" --update-freq "$UPDATE_FREQ"
    --required-batch-size-multiple 1 --dropout 0.1 --attention-dropout 0.1
    --best-checkpoint-metric accuracy --maximize-best-checkpoint-metric --no-epoch-checkpoints)
finish_train_args
run_train "== fairseq-train $TASK --arch $ARCH on $DATA_BIN: $GPUS GPU(s), batch $BATCH x update-freq $UPDATE_FREQ" \
     "x $((GPUS > 0 ? GPUS : 1)) = $BATCH_TOTAL sentences, $MAX_UPDATE updates ($WARMUP warm-up) (log: $SAVE/train.log)"

"$PY" - "$SAVE/train.log" <<'PYEOF'
import json, sys
best = None
for line in open(sys.argv[1], encoding="utf-8"):
    if "| valid |" in line:
        try:
            row = json.loads(line[line.index("{"):])
        except (ValueError, json.JSONDecodeError):
            continue
        if "valid_accuracy" in row and (best is None or float(row["valid_accuracy"]) > float(best["valid_accuracy"])):
            best = row
if best:
    print(f"best dev accuracy {best['valid_accuracy']} at update {best.get('valid_num_updates')} (epoch {best.get('epoch')})")
PYEOF
echo "== checkpoints: $SAVE/checkpoint_best.pt (best dev accuracy), $SAVE/checkpoint_last.pt"
next_eval glue
