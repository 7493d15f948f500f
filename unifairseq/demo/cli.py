"""`python -m unifairseq.demo`: the flags, and the six stages run in order (runs two at a time)."""
from __future__ import annotations

import json
import os
import platform
import queue
import shutil
import sys
import threading
import time
from typing import Dict, List, Optional, Sequence

from .. import cli
from . import __doc__ as DOC
from . import common
from .budget import Budget
from .common import DemoError, default_workdir, emit, quiet_logging, say
from .data import find_sst2, read_sst2_tsv, stage_data
from .methods import (BATCH, DEFAULT_BUDGET, DEFAULT_TRAIN, MAM_GAP, METHODS, QUICK_BUDGET, QUICK_METHODS, QUICK_TRAIN,
                      QUICK_UPDATES, Method)
from .report import human_bytes, plot, report_markdown
from .run import finish_main, stage_finish, stage_import, stage_train

OUTPUTS = ("minilm", "raw", "data-bin", "checkpoints", "logs", "exports")
PROG = "unifairseq-demo"
RESULT_FILES = ("results.md", "results.json", "accuracy_vs_params.png")


def parse_args(argv):
    ap = cli.parser(PROG, DOC)
    ap.add_argument("--workdir", default=default_workdir(),
                    help="where every file goes (default: <checkout>/runs/demo, git-ignored, or ./runs/demo after a pip install); the demo's own "
                         "files and folders there are replaced on each run")
    ap.add_argument("--data", default=None,
                    help="data root holding glue/SST-2/{train,dev}.tsv, or that SST-2 folder itself "
                         "(default: $UNIFAIRSEQ_DATA, else <repo>/../shared/data)")
    ap.add_argument("--quick", action="store_true",
                    help=f"a reduced run for the tests: {QUICK_TRAIN} training examples, "
                         f"{' and '.join(QUICK_METHODS)}, {QUICK_UPDATES} updates each, still evaluated on the "
                         "full dev set")
    cli.add_methods(ap, None, default=None,
                    what=f"a subset of {' '.join(METHODS)} (default: all; --quick: {' '.join(QUICK_METHODS)})")
    ap.add_argument("--train-examples", type=int, default=None,
                    help=f"training examples sampled (seeded) from train.tsv (default {DEFAULT_TRAIN}; "
                         f"--quick {QUICK_TRAIN}); the dev set is always complete")
    ap.add_argument("--max-update", type=int, default=None,
                    help="the same number of updates for every method (default: per method, see the table)")
    ap.add_argument("--budget-minutes", type=float, default=None,
                    help=f"the time the whole demo is expected to take (default {DEFAULT_BUDGET:g}; --quick "
                         f"{QUICK_BUDGET:g}). It only warns, never stops a run: the demo prints an idle-machine "
                         "estimate first (a warning if that is over the budget), a warning when a run's training "
                         "takes longer than its share, and one when the whole demo ran over. Every run trains "
                         "exactly its updates, so the same seeds and updates give the same accuracies on a busy "
                         "machine")
    ap.add_argument("--minutes-per-method", type=float, default=None,
                    help="warn when a run's training takes longer than this (instead of its share of the budget)")
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
    common.restart_clock()
    try:
        return run(a)
    except DemoError as e:
        return cli.error(PROG, e)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return cli.INTERRUPTED


def loadavg():
    return os.getloadavg() if hasattr(os, "getloadavg") else None


def run_method(m: Method, steps: int, a, workdir: str, imported: dict, data: dict, threads: int,
               budget: Budget) -> dict:
    """Stages 4 and 5 for one method: train exactly `steps` updates, evaluate, export."""
    say(f"[4/6] {m.label}: fairseq-train --arch {' '.join([m.arch, *m.flags])} --lr {m.lr:g}, {steps} updates "
        f"of {BATCH} (time share {budget.share_s[m.name] / 60:.1f} min, a warning only)")
    info = stage_train(m, workdir, imported, data, a.seed, steps, log_interval=max(1, min(100, steps // 4)),
                       threads=threads)
    r = dict(name=m.name, label=m.label, arch=m.arch, lr=m.lr, flags=m.flags, note=m.note, planned_updates=steps,
             time_share_s=round(budget.share_s[m.name], 1), **info)
    say(f"[5/6] {m.label}: trained in {info['train_wall_s']:.0f} s ({info['updates']} updates); evaluating on all "
        f"{data['n_dev']} dev examples with fairseq" + ("" if a.no_export else ", exporting the inference file"))
    r["over_time_share"] = budget.check_run(m, info["train_wall_s"])
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
    return r


def run_parallel(jobs: int, tasks: List, fn) -> Dict:
    """fn(task) for every task, `jobs` at a time in threads (each task runs subprocesses); the first
    error stops further starts and is raised here."""
    results: Dict = {}
    errors: List[BaseException] = []
    todo: "queue.Queue" = queue.Queue()
    for t in tasks:
        todo.put(t)

    def worker() -> None:
        while not errors:
            try:
                t = todo.get_nowait()
            except queue.Empty:
                return
            try:
                results[id(t)] = fn(t)
            except BaseException as e:  # noqa: BLE001 -- handed to the main thread
                errors.append(e)
                return

    workers = [threading.Thread(target=worker, daemon=True) for _ in range(min(jobs, len(tasks)))]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if errors:
        raise errors[0]
    return results


def run(a) -> int:
    names = a.methods or list(QUICK_METHODS if a.quick else METHODS)
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise DemoError(f"--methods: unknown {', '.join(unknown) or '(empty)'}; choose from {', '.join(METHODS)}")
    methods = [METHODS[n] for n in dict.fromkeys(names)]
    n_train = a.train_examples or (QUICK_TRAIN if a.quick else DEFAULT_TRAIN)
    budget_min = a.budget_minutes or (QUICK_BUDGET if a.quick else DEFAULT_BUDGET)
    cores = os.cpu_count() or 1
    jobs = a.jobs or (2 if cores >= 2 else 1)
    threads = a.threads or max(1, cores // jobs)
    for flag, v in (("--train-examples", n_train), ("--max-update", a.max_update or 1), ("--jobs", jobs),
                    ("--threads", threads), ("--budget-minutes", budget_min),
                    ("--minutes-per-method", a.minutes_per_method or 1)):
        if v <= 0:
            raise DemoError(f"{flag} must be positive, got {v}")
    runs = [(m, a.max_update or (QUICK_UPDATES if a.quick else m.max_update)) for m in methods]
    budget = Budget(budget_min, runs, min(jobs, len(runs)), a.minutes_per_method)

    # the data first: a missing or malformed data set is reported before anything is written
    train_tsv, dev_tsv = find_sst2(a.data)
    train_rows, dev_rows = read_sst2_tsv(train_tsv), read_sst2_tsv(dev_tsv)
    workdir = os.path.abspath(a.workdir)
    for sub in OUTPUTS:
        shutil.rmtree(os.path.join(workdir, sub), ignore_errors=True)
    for f in RESULT_FILES:
        if os.path.exists(os.path.join(workdir, f)):
            os.remove(os.path.join(workdir, f))
    os.makedirs(os.path.join(workdir, "logs"), exist_ok=True)
    load0 = loadavg()

    say(f"SST-2 demo: {', '.join(m.label for m in methods)} on all-MiniLM-L6-v2, {jobs} run(s) at a time with "
        f"{threads} thread(s) each; work dir {workdir}")
    budget.announce()
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

    done = run_parallel(jobs, runs, lambda mu: run_method(mu[0], mu[1], a, workdir, imported, data, threads, budget))
    rows = [done[id(mu)] for mu in runs]
    results = {r["name"]: r for r in rows}

    say("[6/6] writing the table, results.json and the plot")
    total = common.CLOCK.elapsed()
    cpu_total = None
    try:
        import resource

        cpu_total = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
                        for f in ("ru_utime", "ru_stime"))
    except ImportError:  # not on POSIX
        pass
    md = report_markdown(rows, data, total, jobs, threads, cpu_total, load0, loadavg())
    with open(os.path.join(workdir, "results.md"), "w", encoding="utf-8") as f:
        f.write(md)
    png = os.path.join(workdir, "accuracy_vs_params.png")
    plot(rows, png, f"SST-2 dev accuracy vs trained parameters: all-MiniLM-L6-v2 in fairseq, "
                    f"{data['n_train']:,} training examples, CPU", data["n_dev"], data["dev_majority"])
    over = budget.check_total(total)
    summary = dict(
        total_wall_s=total, quick=bool(a.quick), workdir=workdir, train_tsv=train_tsv, dev_tsv=dev_tsv,
        n_train=data["n_train"], n_dev=data["n_dev"], dev_majority=data["dev_majority"], batch_size=BATCH,
        seed=a.seed, jobs=jobs, threads_per_job=threads, base_model=imported["src"], total_cpu_s=cpu_total,
        budget_minutes=budget_min, estimate_minutes=round(budget.estimate_s / 60, 2), over_budget=over,
        warnings=budget.warnings,
        machine=dict(cpus=cores, platform=platform.platform(), loadavg_start=load0, loadavg_end=loadavg()),
        methods=[{**{k: v for k, v in r.items() if k != "command"}, "command": " ".join(r["command"])} for r in rows])
    with open(os.path.join(workdir, "results.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    emit("")
    emit(md)
    say(f"done in {total / 60:.1f} min: {os.path.join(workdir, 'results.md')}, results.json, {png}")

    failed = [r["label"] for r in rows if r["dev_accuracy"] <= data["dev_majority"]]
    if failed:
        print(f"{PROG}: FAIL: not above the dev majority class: {', '.join(failed)}", file=sys.stderr)
        return 1
    if a.check_mam_gap and "mam" in results and "full" in results:
        gap = 100 * (results["full"]["dev_accuracy"] - results["mam"]["dev_accuracy"])
        if gap > MAM_GAP:
            print(f"{PROG}: FAIL: MAM is {gap:.2f} points behind full fine-tuning (> {MAM_GAP})",
                  file=sys.stderr)
            return 1
    return 0
