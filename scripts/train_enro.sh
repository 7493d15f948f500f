#!/usr/bin/env bash
# Train one method on WMT16 en-ro with the paper's hyperparameters (mBART-large cc25). See --help.
set -euo pipefail

PROG=train_enro
. "$(dirname "$0")/lib.sh"

usage() {
    cat <<USAGE
Usage: scripts/train_enro.sh METHOD --data DIR (--base mbart.cc25/model.pt | --tiny) [options] [-- FAIRSEQ-TRAIN-ARGS]

Step 2 of 3 for WMT16 en-ro (after scripts/preprocess_enro.sh, before scripts/eval_enro.sh).

METHOD  a preset of unifairseq ($(preset_list)) -> --arch METHOD_mbart_large
        (pre-LN layers + embedding layer norm, as mbart.cc25);
        delta -> --arch delta_mbart_large (every delta flag from FAIRSEQ-TRAIN-ARGS);
        full  -> --arch mbart_large --encoder-normalize-before --decoder-normalize-before
                 --layernorm-embedding (full fine-tuning).

Task: translation_mbart (unifairseq.fairseq.tasks: fairseq's translation_from_pretrained_bart, whose
fairseq 0.12 version cannot train or decode, with that fixed), -s en_XX -t ro_RO,
--langs = mbart.cc25's 25 language codes ($MBART_LANGS).

The paper's settings (App. A; the reference code's run_en_ro.sh):
  Adam (betas 0.9/0.98, eps 1e-6), lr 5e-5, linear decay to 0 (polynomial_decay), no warm-up,
  50,000 updates of 16,384 tokens, label smoothing 0.1, gradient clipping 1.0, weight decay 0.01,
  dropout 0.1, attention dropout 0.0, max source/target length 150 (cut by preprocess_enro.sh),
  fp16 on GPUs. Model selection: validation loss (fairseq's default best-checkpoint metric),
  every 5000 updates.

Batch: 16,384 tokens = --max-tokens per GPU x GPUs x --update-freq (fairseq's --max-tokens
counts padded source or target tokens, whichever is longer). GPUs are counted from
CUDA_VISIBLE_DEVICES, else nvidia-smi -L (none: 1 CPU process); --update-freq is derived so the
product stays 16,384 (1 GPU: 4096 x 4; 2: 4096 x 2; 4: 4096 x 1; 8: 2048 x 1). More than one
GPU: fairseq's distributed data parallel (--distributed-world-size N, one node). Several nodes:
--gpus TOTAL and fairseq's --distributed-* options after '--'.

Options:
  --data DIR          preprocess_enro.sh output (DIR/bin) or a fairseq data-bin directory
  --base FILE         the pretrained mbart.cc25/model.pt (loaded with --finetune-from-model:
                      a rerun with the same --save-dir resumes from checkpoint_last.pt)
  --save-dir DIR      checkpoints + train.log (default <repo>/runs/enro_METHOD)
  --langs LIST        default: mbart.cc25's 25 codes
  --gpus N            number of GPUs (default: counted; 0 = CPU)
  --max-tokens N      tokens per GPU per step, at most (default 4096)
  --no-fp16           train in fp32 on GPUs
  --seed N            default 1
  --tiny              tests / CPU: see below
  -h, --help          this help
Everything after '--' is passed to fairseq-train last (it overrides what the script sets), e.g.
'-- --eval-bleu --eval-bleu-args {"beam":5,"max_len_b":200} --eval-bleu-remove-bpe sentencepiece
--best-checkpoint-metric bleu --maximize-best-checkpoint-metric' for BLEU-based selection
(detokenized sacreBLEU without the language tags, on the validation split).

--tiny changes: a tiny random plain mBART (mbart_large layout) made on the fly
(SAVE/tiny_base.pt, python -m unifairseq.tools.tiny_base: 2+2 layers, dim 64, FFN 128, 4 heads,
embeddings std 0.125) instead of --base; the same sizes on the command line; delta sizes
--attn-bn 8 --ffn-bn 16 --mid-dim 32 (lora_ffn: --lora-alpha 64, keeping s = 4); --cpu; 8
updates of at most 1024 tokens (update-freq 1); lr 1e-3; validation only at the end;
OMP_NUM_THREADS=1 unless set. Every other setting is the paper's.

Environment: UNIFAIRSEQ_BIN (python + fairseq-*; default <repo>/.venv/bin, else PATH),
UNIFAIRSEQ_USER_DIR (fairseq --user-dir; default <repo>/user_dir; xsum/enro: it must call unifairseq.fairseq.register()).
Exit status: 0 on success, 2 on usage, input or tool errors, fairseq-train's status otherwise.
USAGE
}

METHOD='' DATA='' BASE='' SAVE='' GPUS='' PER_GPU=4096 FP16=1 SEED=1 TINY=0 EXTRA=() LANGS=$MBART_LANGS
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --data) need_arg "$@"; DATA=$2; shift 2 ;;
        --base) need_arg "$@"; BASE=$2; shift 2 ;;
        --save-dir) need_arg "$@"; SAVE=$2; shift 2 ;;
        --gpus) need_arg "$@"; GPUS=$2; shift 2 ;;
        --max-tokens) need_arg "$@"; PER_GPU=$2; shift 2 ;;
        --per-gpu-tokens) need_arg "$@"; note "--per-gpu-tokens is now spelled --max-tokens"; PER_GPU=$2; shift 2 ;;
        --langs) need_arg "$@"; LANGS=$2; shift 2 ;;
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
if [ "$METHOD" = full ]; then
    ARCH=mbart_large; FULL_FLAGS=(--encoder-normalize-before --decoder-normalize-before --layernorm-embedding)
else
    ARCH=${METHOD}_mbart_large; FULL_FLAGS=()
fi

# ---------------------------------------------------------------- inputs
check_train_data preprocess_enro
[ -d "$DATA/bin" ] && DATA_BIN=$DATA/bin || DATA_BIN=$DATA
need_data_files preprocess_enro dict.en_XX.txt train.en_XX-ro_RO.en_XX.idx valid.en_XX-ro_RO.en_XX.idx
case ",$LANGS," in *,en_XX,*ro_RO,*|*,ro_RO,*en_XX,*) ;; *) die "--langs must contain en_XX and ro_RO" ;; esac
check_data preprocess_enro --layout translation --langs en_XX ro_RO --splits train,valid --max-positions 1024 \
    --src-extra 1
check_base mbart.cc25/model.pt
check_user_dir_tasks translation_mbart "fairseq 0.12's translation_from_pretrained_bart cannot train"
check_int_opts PER_GPU SEED
SAVE=$(mkdir_abs "${SAVE:-$REPO/runs/enro_$METHOD}")

# ---------------------------------------------------------------- devices and batch
plan_batch 16384 1024

# ---------------------------------------------------------------- the command
LR=5e-5; MAX_UPDATE=50000; INTERVAL=5000; LOG_INTERVAL=100
MODEL=()
if [ "$TINY" = 1 ]; then
    LR=1e-3; MAX_UPDATE=8; INTERVAL=1000000; LOG_INTERVAL=1
    make_tiny_base mBART mbart "$DATA_BIN" --source-lang en_XX --target-lang ro_RO \
        --langs "$LANGS" --layers 2 --dim 64 --ffn-dim 128 --heads 4 --embed-std 0.125
    tiny_seq2seq_model
    tiny_delta_sizes
fi
ARGS=("$DATA_BIN" --user-dir "$USER_DIR" --task translation_mbart --langs "$LANGS"
    --source-lang en_XX --target-lang ro_RO --arch "$ARCH" "${FULL_FLAGS[@]}" "${MODEL[@]}" --finetune-from-model "$BASE"
    --criterion label_smoothed_cross_entropy --label-smoothing 0.1
    --optimizer adam --adam-betas "(0.9, 0.98)" --adam-eps 1e-06 --weight-decay 0.01 --clip-norm 1.0
    --lr "$LR" --lr-scheduler polynomial_decay --total-num-update "$MAX_UPDATE" --warmup-updates 0
    --max-update "$MAX_UPDATE" --max-tokens "$BATCH" --update-freq "$UPDATE_FREQ" --required-batch-size-multiple 1
    --dropout 0.1 --attention-dropout 0.0 --batch-size-valid 32
    --validate-interval-updates "$INTERVAL" --save-interval-updates "$INTERVAL" --keep-interval-updates 1
    --validate-interval 1000000 --save-interval 1000000 --no-epoch-checkpoints)
finish_train_args
run_train "== fairseq-train --arch $ARCH on $DATA_BIN: $GPUS GPU(s), max-tokens $BATCH x update-freq $UPDATE_FREQ" \
     "x $((GPUS > 0 ? GPUS : 1)) = $BATCH_TOTAL tokens, $MAX_UPDATE updates (log: $SAVE/train.log)"

"$PY" - "$SAVE/train.log" <<'PYEOF'
import json, sys
best = None
for line in open(sys.argv[1], encoding="utf-8"):
    if "| valid |" in line:
        try:
            row = json.loads(line[line.index("{"):])
        except (ValueError, json.JSONDecodeError):
            continue
        if "valid_loss" in row and (best is None or float(row["valid_loss"]) < float(best["valid_loss"])):
            best = row
if best:
    print(f"best validation loss {best['valid_loss']} (nll {best.get('valid_nll_loss')}, ppl {best.get('valid_ppl')}) "
          f"at update {best.get('valid_num_updates')}")
PYEOF
echo "== checkpoints: $SAVE/checkpoint_best.pt (best validation loss, or the --best-checkpoint-metric given), $SAVE/checkpoint_last.pt"
next_eval enro
