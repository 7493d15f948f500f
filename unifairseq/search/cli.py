"""unifairseq-search: walk the paper's design space (which representation, functional form,
insertion, composition, size) on Optuna, each trial a real fairseq-train run of scripts/train_*.sh.

    unifairseq-search --task SST-2 --data DATA --base roberta.base/model.pt --space paper --out runs/s
    unifairseq-search --task SST-2 --data DATA --tiny --budget 1% --n-trials 20 --out runs/s
    unifairseq-search --task SST-2 --data DATA --tiny --space my_space.yaml --workers 2 --out runs/s
    unifairseq-search --task XSum --data DATA --base bart.large/model.pt --space paper --out runs/x
    unifairseq-search --task en-ro --data DATA --tiny --space my_space.yaml --out runs/e
    unifairseq-search --worker --storage postgresql://host/db --study NAME      (one more worker)

Tasks: SST-2 and MNLI (scripts/train_glue.sh; metric accuracy), XSum (scripts/train_xsum.sh, which
selects on ROUGE-2 with --eval-rouge; metric rouge2, rouge1 or rougeL of its validation subset),
en-ro (scripts/train_enro.sh; metric bleu: the search adds the script's BLEU-selection flags,
--eval-bleu ..., to every trial). `loss` is every task's other metric. XSum/en-ro trials train by
updates: --epochs is GLUE's; give -- --max-update N --total-num-update N instead.

Spaces: `registry` (default: every method of the registry, alone or one per side, sizes sampled on
a log scale; TPE on two objectives, metric and stored parameters), `paper` (the paper's comparisons
as a grid at --budgets: sequential vs parallel, attention vs FFN, plain vs scaled, MAM), or a YAML
file of points written like the presets' flags (a list value is a grid axis). --budget (0.5% of the
base, or a count) drops every point whose stored-parameter count (the paper's, from the plan) is
above it, before it trains.

Rerunning the same command resumes the study: finished trials are kept, a trial that a killed search
left running is marked failed and run once more. Outputs: OUT/trials.csv, OUT/pareto.png,
OUT/best.json, and the best command per budget. Everything after '--' goes to fairseq-train.
See docs/search.md (Slurm workers, optuna-dashboard).

    unifairseq-search --demo      SST-2 on the packaged all-MiniLM-L6-v2 weights (as scripts/demo.sh):
                                  8 trials, about 8 min on 2 idle CPU cores; OUT = runs/search_demo
"""
from __future__ import annotations

import os
import subprocess
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from unifairseq import cli

from .errors import SearchError
from .trial import TASKS, tiny_base_command

PROG = "unifairseq-search"


def build_parser():
    ap = cli.parser(PROG, __doc__)
    ap.add_argument("--task", choices=sorted(TASKS), default="SST-2",
                    help="the task (default SST-2): SST-2, MNLI (train_glue.sh), XSum (train_xsum.sh, ROUGE), "
                         "en-ro (train_enro.sh, BLEU)")
    ap.add_argument("--demo", action="store_true",
                    help="SST-2 on the packaged all-MiniLM-L6-v2 weights, as scripts/demo.sh: the demo grid (sequential "
                         "vs parallel, attention vs FFN, plain vs scaled adapters) at 0.1%% and 5%%, 2 workers, one "
                         "epoch of --train-examples sentences per trial; --data is then the data root holding "
                         "glue/SST-2 (default $UNIFAIRSEQ_DATA, else <repo>/../shared/data)")
    ap.add_argument("--train-examples", type=int, default=None,
                    help="--demo: training sentences sampled (seeded) from train.tsv (default 6400: 200 updates)")
    ap.add_argument("--data", help="the preprocessing script's output folder (DATA/bin, DATA/meta.json)")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--base", help="the pretrained model the deltas train on: a base name (unifairseq-base) or its model.pt")
    g.add_argument("--tiny", action="store_true", help="the scripts' --tiny mode: a tiny random base (tests, CPU)")
    ap.add_argument("--space", default=None,
                    help="registry (default), paper, demo (--demo's four adapter designs), or FILE.yaml")
    ap.add_argument("--methods", default=None, help="registry space: only these methods (comma-separated)")
    ap.add_argument("--budget", default=None, help="stored-parameter budget: a percentage of the base (0.5%%) "
                                                   "or a count; points above it are not trained")
    ap.add_argument("--budgets", default=None,
                    help="the paper grid's budgets and the report's (comma-separated; default 0.1%%,1%%,5%%; "
                         "--demo: 0.1%%,5%%)")
    ap.add_argument("--metric", default=None, help="the validation metric (default: the task's: accuracy, "
                                                   "XSum rouge2, en-ro bleu; loss for every task)")
    ap.add_argument("--objective", choices=("pareto", "metric"), default="pareto",
                    help="pareto: metric and stored parameters (default); metric: the metric alone, with pruning")
    ap.add_argument("--sampler", choices=("tpe", "nsga2"), default="tpe", help="registry space sampler")
    ap.add_argument("--n-trials", type=int, default=20, help="registry space: trials in all (default 20)")
    ap.add_argument("--epochs", type=int, default=None, help="epochs per trial (default: the script's; GLUE only: "
                                                             "XSum/en-ro trials take -- --max-update N)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--trial-timeout", type=float, default=None, help="seconds; a longer trial is stopped, failed")
    ap.add_argument("--out", default=None, help="output folder (default runs/search; --demo: runs/search_demo)")
    ap.add_argument("--storage", default=None, help="SQLAlchemy URL (default sqlite:///OUT/search.db)")
    ap.add_argument("--study", default="search", help="study name (default search)")
    ap.add_argument("--workers", type=int, default=None,
                    help="local worker processes on the study (default 1; --demo: 2, or 1 on a 1-core machine)")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads per trial, OMP_NUM_THREADS of its fairseq-train (default: torch's own; "
                         "--demo: cores / workers, so that the workers do not contend)")
    ap.add_argument("--worker", action="store_true", help="run as one more worker of --storage/--study")
    ap.add_argument("--reference", type=float, default=None, help="full fine-tuning's metric: a line in the plot")
    return ap


def _budgets(text: str, base_params: int):
    from .space import parse_budget  # the space imports torch (core.methods): not at --help time

    return {b.strip(): parse_budget(b.strip(), base_params) for b in text.split(",") if b.strip()}


def _make_tiny_base(task: str, data: str, out: str) -> str:
    """The base every --tiny trial shares, made as the task's script's --tiny mode makes it (a RoBERTa for
    GLUE, a BART for XSum, an mBART for en-ro, with the script's arguments), so the counts are the trained model's."""
    path = os.path.join(out, "tiny_base.pt")
    if not os.path.isfile(path):
        proc = subprocess.run(tiny_base_command(task, data, path), capture_output=True, text=True)
        if proc.returncode != 0:
            raise SearchError(f"making the tiny base failed: {proc.stderr.strip().splitlines()[-1:]}")
    return path


def find_search_base(flag: str) -> str:
    """--base NAME_OR_PATH by the one lookup every tool uses (core/bases.py's search order: a path, a name
    under $UNIFAIRSEQ_BASES or the cache, ...); the error names what was tried."""
    # at run time, not import time: torch and fairseq stay out of --help
    from unifairseq.core.bases import BaseNotFound
    from unifairseq.fairseq.checkpoint_io import find_base

    try:
        return os.path.abspath(find_base(flag, option="--base NAME_OR_PATH").path)
    except BaseNotFound as e:
        raise SearchError(f"--base: {e}") from None


def resolve(a, extra: List[str]) -> Tuple[List[str], Dict[str, str]]:
    """Fill the defaults that depend on --demo (and, with --demo, make its inputs); returns the trials'
    extra fairseq-train flags and their environment."""
    cores = os.cpu_count() or 1
    if a.demo:
        given = [f for f, v in (("--base", a.base), ("--tiny", a.tiny)) if v]
        if given or a.task != "SST-2":
            raise SearchError(f"--demo trains SST-2 on the packaged MiniLM itself; drop {(given or ['--task'])[0]}")
        from . import demo  # the demo's inputs (transformers' tokenizer, the converter): only with --demo

        a.out = a.out or demo.DEMO_OUT
        a.space = a.space or demo.DEMO_SPACE
        a.budgets = a.budgets or demo.DEMO_BUDGETS
        a.workers = a.workers or min(2, cores)
        a.epochs = a.epochs or 1
        inputs = demo.prepare(os.path.abspath(a.out), a.data, a.train_examples or demo.DEMO_TRAIN, a.seed)
        a.data, a.base = inputs["data"], inputs["base"]
        extra = [*inputs["model_flags"], "--lr", demo.DEMO_LR, *extra]  # the user's own flags still come last
        if a.threads is None:
            a.threads = max(1, cores // a.workers)
    elif a.train_examples is not None:
        raise SearchError("--train-examples is for --demo; other searches train on the whole --data")
    a.out = a.out or "runs/search"
    a.space = a.space or "registry"
    a.budgets = a.budgets or "0.1%,1%,5%"
    a.workers = 1 if a.workers is None else a.workers
    if a.workers < 1:
        raise SearchError(f"--workers {a.workers}: give 1 or more")
    return extra, trial_env(a.threads)


def trial_env(threads: Optional[int]) -> Dict[str, str]:
    """The environment of this process's trials: ours, with OMP_NUM_THREADS = --threads when given."""
    env = dict(os.environ)
    if threads is not None:
        if threads < 1:
            raise SearchError(f"--threads {threads}: give 1 or more")
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def _config(a, extra: List[str]) -> dict:
    # torch (core.methods) and optuna: only once the arguments are parsed, so --help imports neither
    from . import space as sp
    from . import spacefile
    from . import trial as tr
    from .study import base_shape

    spec = tr.task_spec(a.task)
    metric = a.metric or spec.metrics[0]
    tr.check_metric(a.task, metric)
    tr.check_epochs(a.task, a.epochs)
    if not a.data:
        raise SearchError(f"--data DIR is required (the output of {spec.preprocess_script})")
    data = os.path.abspath(a.data)
    tr.check_data(a.task, data)
    out = os.path.abspath(a.out)
    os.makedirs(out, exist_ok=True)
    if a.tiny:
        base = _make_tiny_base(a.task, data, out)
    elif a.base:
        base = find_search_base(a.base)
    else:
        raise SearchError("give --base model.pt (the pretrained model) or --tiny")
    shape, base_params = base_shape(base)
    budget = sp.parse_budget(a.budget, base_params) if a.budget else None
    methods = [m.strip() for m in a.methods.split(",")] if a.methods else None
    if a.space == "registry":
        grid, points = False, []
        sp.registry_space(shape, budget, methods)  # bad methods and impossible budgets fail here
    else:
        budgets = [b.strip() for b in a.budgets.split(",") if b.strip()]
        if a.space == "paper":
            points = sp.paper_grid(shape, base_params, budgets)
        elif a.space == "demo":
            points = sp.paper_grid(shape, base_params, budgets, sp.DEMO_GROUPS, mam=False)
        else:
            points = spacefile.file_grid(a.space, shape)
        points = sp.within(points, budget)
        grid = True
    if a.objective == "metric" and budget is None:
        raise SearchError("--objective metric needs --budget (one objective: the metric under a parameter budget)")
    return dict(task=a.task, data=data, base=base, tiny=a.tiny, epochs=a.epochs, seed=a.seed, extra=extra,
                metric=metric, maximize=spec.maximize[metric], objective=a.objective, sampler=a.sampler,
                grid=grid, points=[dict(label=p.label, method=p.method, flags=p.flags, stored=p.stored,
                                        group=p.group, budget=p.extra.get("budget", "")) for p in points],
                methods=methods, budget=budget, n_trials=a.n_trials, out=out, trial_timeout=a.trial_timeout,
                shape=dict(vars(shape)), base_params=base_params, budgets=a.budgets,
                space_key=a.space if a.space in ("registry", "paper", "demo") else os.path.abspath(a.space))


class Progress:
    """A bar over the study's trials (all workers'), and one line per finished trial."""

    def __init__(self, total: int):
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="trial", desc=PROG, file=sys.stderr, dynamic_ncols=True)
        self.shown = set()

    def __call__(self, study) -> None:
        from .study import finished  # optuna's (see _config)

        ts = finished(study)
        done = sum(1 for x in ts if x.state.is_finished())
        for t in ts:
            if t.state.is_finished() and t.number not in self.shown and "label" in t.user_attrs:
                self.shown.add(t.number)
                value = "" if not t.values else f" {t.values[0]}"
                self.bar.write(f"[{PROG}] trial {t.number} {t.state.name}{value}: {t.user_attrs['label']}")
        self.bar.total = max(self.bar.total or 0, len(ts))
        self.bar.n = done
        self.bar.refresh()

    def close(self):
        self.bar.close()


def _main(argv: Optional[Sequence[str]]) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: List[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    a = build_parser().parse_args(argv)
    # optuna, matplotlib and torch, once the arguments are parsed (--help and usage errors import none)
    from . import report
    from .study import open_study, reap, work, finished

    if a.worker:
        if not a.storage:
            raise SearchError("--worker needs --storage URL and --study NAME (the study a search started)")
        work(a.storage, a.study, env=trial_env(a.threads))
        return 0
    extra, env = resolve(a, extra)
    cfg = _config(a, extra)
    url = a.storage or f"sqlite:///{os.path.join(cfg['out'], 'search.db')}"
    study, cfg = open_study(url, a.study, cfg)
    reaped = reap(study)
    if reaped:
        print(f"[{PROG}] trials {', '.join(map(str, reaped))} were left running by a killed search: failed, "
              "retried once", flush=True)
    procs = [subprocess.Popen([sys.executable, "-m", "unifairseq.search.cli", "--worker", "--storage", url,
                               "--study", a.study], env=env) for _ in range(a.workers - 1)]
    progress = Progress(len(cfg["points"]) if cfg["grid"] else cfg["n_trials"])
    progress.shown = {t.number for t in finished(study) if t.state.is_finished()}  # a resumed study's old ones
    try:
        work(url, a.study, cfg["out"], env=env, progress=progress)
        for p in procs:
            p.wait()
        progress(study)
    finally:
        progress.close()
    budgets = _budgets(cfg["budgets"], cfg["base_params"])
    if cfg["budget"] is not None:
        budgets.setdefault(a.budget, cfg["budget"])
    doc = report.write_all(cfg["out"], finished(study), cfg, budgets, a.reference)
    print(report.summary(doc))
    print(f"[{PROG}] {cfg['out']}/trials.csv, pareto.png, best.json (storage {url}, study {a.study})")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return cli.run(PROG, lambda: _main(argv))


if __name__ == "__main__":
    sys.exit(main())
