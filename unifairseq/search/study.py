"""The Optuna study: a storage URL, a plain objective function, workers that are just processes on
the same storage (Optuna's own examples' style).

* The search's settings live in the study itself (user attribute `unifairseq`), so a worker needs
  only `--storage URL --study NAME`.
* A grid (--space paper / FILE) is enqueued once, point by point, when the study is made; workers
  take waiting trials from the storage, which hands each one to exactly one worker, so no two
  workers run one grid point. The sampler is Optuna's GridSampler over the points.
* The registry space is sampled (TPE, or NSGA-II) on two objectives: the metric and the stored
  parameters. With `--objective metric` (one objective, under --budget) the median pruner stops
  runs on their intermediate validation values.
* A search killed mid-trial (SIGKILL included) leaves a RUNNING trial whose process is gone: the
  next start on that host marks it failed and enqueues it once more (Optuna's
  RetryHeartbeatStaleTrialCallback, max_retry=1). On other hosts Optuna's heartbeat does the same.
"""
from __future__ import annotations

import os
import socket
import time
import warnings
from typing import Dict, List, Optional, Tuple

from unifairseq.core.accounting import distinct_parameters
from unifairseq.core.methods import ModelShape

from . import space as sp
from . import trial as tr
from .errors import SearchError

ATTR = "unifairseq"


# ------------------------------------------------------------------ the base
def base_shape(base: str) -> Tuple[ModelShape, int]:
    """(model shape, base parameter count) read off a base checkpoint's tensors: no model is built."""
    import re

    from unifairseq.fairseq.checkpoint_io import load_checkpoint_file  # deferred: torch

    state = load_checkpoint_file(base)
    model = state.get("model", state)
    # the model's parameters (tied weights once, no buffers), without a classification head
    names = distinct_parameters({n: t for n, t in model.items() if not n.startswith("classification_heads.")})
    total = sum(model[n].numel() for n in names)
    bias = sum(model[n].numel() for n in names if n.endswith("bias"))
    layers: Dict[str, set] = {"encoder": set(), "decoder": set()}
    d = d_ff = 0
    for n in names:
        m = re.match(r"(encoder|decoder)(?:\.sentence_encoder)?\.layers\.(\d+)\.fc1\.weight$", n)
        if m:
            layers[m.group(1)].add(m.group(2))
            d_ff, d = model[n].shape
    if not layers["encoder"]:
        raise SearchError(f"--base {base}: no Transformer layers found in it; give a fairseq RoBERTa/BART model.pt")
    if layers["decoder"]:
        shape = ModelShape.encoder_decoder(d, d_ff, len(layers["encoder"]), len(layers["decoder"]), bias)
    else:
        shape = ModelShape.encoder_only(d, d_ff, len(layers["encoder"]), bias)
    return shape, total


# ------------------------------------------------------------------ storage and study
def storage(url: str):
    import optuna
    import sqlalchemy.exc

    kw = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    try:
        with warnings.catch_warnings():  # the heartbeat is "experimental" in Optuna; nothing to act on here
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, engine_kwargs=kw, heartbeat_interval=30, grace_period=120,
                                              heartbeat_stale_trial_callback=retry_once())
    except (sqlalchemy.exc.SQLAlchemyError, ValueError, ImportError, OSError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise SearchError(f"--storage {url}: cannot connect ({first}); check the URL, that the server runs "
                          "and that its folder exists") from None


def retry_once():
    """Optuna's callback that enqueues a trial whose worker died once more (experimental in Optuna:
    its warning says nothing a user of this command can act on)."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)


def sampler(cfg: dict):
    import optuna

    if cfg["grid"]:
        return optuna.samplers.GridSampler({"point": [p["label"] for p in cfg["points"]]}, seed=cfg["seed"])
    if cfg["sampler"] == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=cfg["seed"])
    return optuna.samplers.TPESampler(seed=cfg["seed"])


def directions(cfg: dict) -> List[str]:
    metric = "maximize" if cfg["maximize"] else "minimize"
    return [metric] if cfg["objective"] == "metric" else [metric, "minimize"]


def open_study(url: str, name: str, cfg: Optional[dict] = None):
    """Load the study NAME (cfg None: it must exist) or make it with these settings."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    st = storage(url)
    names = [s.study_name for s in optuna.get_all_study_summaries(st)]
    if name in names:
        stored = optuna.load_study(study_name=name, storage=st).user_attrs.get(ATTR)
        if stored is None:
            raise SearchError(f"--study {name}: that study in {url} was not made by unifairseq-search; "
                              "choose another --study name")
        if cfg is not None:
            same = ("task", "data", "space_key", "budget", "metric", "objective")
            changed = [k for k in same if stored.get(k) != cfg.get(k)]
            if changed:
                raise SearchError(f"--study {name} in {url} was made with another {changed[0].replace('_key', '')} "
                                  f"({stored.get(changed[0])!r}, now {cfg.get(changed[0])!r}); rerun it as it was "
                                  "started, or give another --study / --out")
        cfg = stored
    elif cfg is None:
        raise SearchError(f"--study {name}: no such study in {url}; start it with unifairseq-search "
                          "(without --worker) first, or name one of: " + (", ".join(names) or "(none)"))
    pruner = optuna.pruners.MedianPruner(n_warmup_steps=0) if cfg["objective"] == "metric" else None
    study = optuna.create_study(storage=st, study_name=name, directions=directions(cfg), sampler=sampler(cfg),
                                pruner=pruner, load_if_exists=True)
    if ATTR not in study.user_attrs:
        study.set_user_attr(ATTR, cfg)
        for p in cfg["points"] if cfg["grid"] else ():
            study.enqueue_trial({"point": p["label"]}, user_attrs={"label": p["label"]})
    return study, cfg


# ------------------------------------------------------------------ resume
def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap(study) -> List[int]:
    """Trials left RUNNING by a search process of this host that is gone: end their run's process
    group, mark them failed and enqueue each once more. Returns their numbers."""
    from optuna.trial import TrialState

    host = socket.gethostname()
    st = study._storage
    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get("host") != host or "pid" not in t.user_attrs or _alive(int(t.user_attrs["pid"])):
            continue
        if "pgid" in t.user_attrs:
            tr.end_group(int(t.user_attrs["pgid"]))
        st.set_trial_user_attr(t._trial_id, "error", "the search was killed while this trial ran")
        folder = t.user_attrs.get("folder")
        st.set_trial_user_attr(t._trial_id, "log_tail", tr.tail(os.path.join(folder, "search.log")) if folder else "")
        if st.set_trial_state_values(t._trial_id, TrialState.FAIL):
            retry_once()(study, st.get_trial(t._trial_id))
            out.append(t.number)
    return out


# ------------------------------------------------------------------ the objective
def objective_for(cfg: dict, out: str, env: Optional[dict] = None):
    import optuna

    shape = ModelShape(**cfg["shape"])
    points = {p["label"]: p for p in cfg["points"]} if cfg["grid"] else {}
    entries = {}
    if not cfg["grid"]:
        for e in sp.registry_space(shape, cfg["budget"], cfg["methods"]):
            entries[e.design.label] = e

    def objective(trial):
        if cfg["grid"]:
            if "fixed_params" not in trial.study._storage.get_trial_system_attrs(trial._trial_id):
                # a worker found the queue empty after it asked: nothing left of the grid
                trial.set_user_attr("spare", True)
                raise optuna.TrialPruned("the grid is done")
            label = trial.suggest_categorical("point", list(points))
            p = points[label]
            flags, method, stored, group = p["flags"], p["method"], p["stored"], p["group"]
            budget = p.get("budget", "")  # the grid's budget this point was sized for (a study of older code: none)
        else:
            label = trial.suggest_categorical("design", list(entries))
            e = entries[label]
            sizes = {s: trial.suggest_int(f"{label}.{sp.SIZE_FLAG[s]}", lo, hi, log=True)
                     for s, (lo, hi) in sorted(e.ranges.items())}
            p = sp.make_point(e.design, sizes, shape)
            flags, method, stored, group, label, budget = p.flags, p.method, p.stored, "", p.label, ""
        folder = os.path.join(out, "trials", f"{trial.number:04d}")
        attrs = dict(label=label, method=method, flags=flags, stored=stored, group=group, budget=budget,
                     stored_pct=100.0 * stored / cfg["base_params"], folder=folder, host=socket.gethostname(),
                     pid=os.getpid(), error="", log_tail="")
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        if cfg["budget"] is not None and stored > cfg["budget"]:
            trial.set_user_attr("error", f"over the budget of {cfg['budget']:,}")
            raise optuna.TrialPruned("over budget")
        argv = [a for k, v in flags.items() for a in (sp.flag(k), str(v))]
        cmd = tr.command(cfg["task"], cfg["data"], folder, argv, cfg["base"], cfg["tiny"], cfg["epochs"],
                         cfg["seed"], cfg["extra"], metric=cfg["metric"])
        if cfg["tiny"]:
            os.makedirs(folder, exist_ok=True)
            link = os.path.join(folder, "tiny_base.pt")
            if not os.path.exists(link):
                os.link(cfg["base"], link)  # the script's --tiny base, made once for every trial

        def on_valid(value, step):
            if cfg["objective"] != "metric":
                return False
            trial.report(value, step)
            return trial.should_prune()

        try:
            res = tr.run(cmd, folder, cfg["metric"], cfg["maximize"], env=env, timeout=cfg["trial_timeout"],
                         on_start=lambda pgid: trial.set_user_attr("pgid", pgid), on_valid=on_valid)
        except tr.Pruned as e:
            raise optuna.TrialPruned(str(e)) from None
        except tr.TrialFailed as e:
            trial.set_user_attr("error", str(e))
            trial.set_user_attr("log_tail", e.tail)
            trial.set_user_attr("command", tr.exact_command(folder))
            raise
        trial.set_user_attr("command", res.command)
        trial.set_user_attr("wall_s", round(res.wall_s, 2))
        return res.metric if cfg["objective"] == "metric" else (res.metric, stored)

    return objective


def work(url: str, name: str, out: Optional[str] = None, env: Optional[dict] = None, progress=None) -> None:
    """One worker: run trials of the study until its grid or its trial count is done."""
    from optuna.trial import TrialState

    study, cfg = open_study(url, name)
    out = out or cfg["out"]
    reap(study)
    objective = objective_for(cfg, out, env)
    while True:
        trials = study.get_trials(deepcopy=False)
        waiting = any(t.state == TrialState.WAITING for t in trials)
        if cfg["grid"] and not waiting:
            break
        if not cfg["grid"] and not waiting:
            counted = [t for t in trials if t.state != TrialState.FAIL or not _retried(t, trials)]
            if len(counted) >= cfg["n_trials"]:
                break
        before = len(trials)
        study.optimize(objective, n_trials=1, catch=(tr.TrialFailed,), gc_after_trial=False)
        last = study.get_trials(deepcopy=False)[before:]
        if progress is not None:
            progress(study)
        if any(t.user_attrs.get("spare") for t in last):
            break


def _retried(t, trials) -> bool:
    return any(o.system_attrs.get("failed_trial") == t.number for o in trials)


def wait_for(procs, timeout: Optional[float] = None) -> List[int]:
    start = time.monotonic()
    codes = []
    for p in procs:
        left = None if timeout is None else max(1.0, timeout - (time.monotonic() - start))
        codes.append(p.wait(timeout=left))
    return codes


def finished(study) -> List:
    """The study's trials as the reports show them (the spare grid asks left out)."""
    return [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("spare")]
