"""One trial = one real training run: scripts/train_<task>.sh METHOD=delta with the point's flags,
in its own folder, so that its fairseq-train command is the one a user would run by hand.

The metric is read from fairseq's structured log (--log-format json, which the scripts set): the
`valid` records of SAVE/train.log, e.g. {"epoch": 1, "valid_accuracy": 81.2, "valid_num_updates": 8}.
The exact fairseq-train command is the scripts' own record of it, SAVE/train_args.json.
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from .errors import SearchError

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class TaskSpec:
    script: str  # scripts/<script>.sh
    args: tuple  # its positional arguments before METHOD
    metrics: tuple  # what its validation records hold (the first is the default objective)
    maximize: Dict[str, bool]
    split_files: tuple  # files of DATA/bin a run needs (the data check names the missing one)


GLUE = dict(script="train_glue", metrics=("accuracy", "loss"), maximize={"accuracy": True, "loss": False},
            split_files=("input0/train.idx", "input0/valid.idx", "label/train.idx"))
TASKS = {
    "SST-2": TaskSpec(args=("SST-2",), **GLUE),
    "MNLI": TaskSpec(args=("MNLI",), **GLUE),
}


def task_spec(name: str) -> TaskSpec:
    if name not in TASKS:
        raise SearchError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    return TASKS[name]


def check_metric(task: str, metric: str) -> None:
    spec = task_spec(task)
    if metric not in spec.metrics:
        raise SearchError(f"--metric {metric}: the {task} runs do not produce it; choose one of "
                          f"{', '.join(spec.metrics)}")


def check_data(task: str, data: str) -> None:
    spec = task_spec(task)
    if not os.path.isdir(data):
        raise SearchError(f"--data {data}: no such folder; give the output of scripts/pre{spec.script[5:]}.sh")
    for f in spec.split_files:
        if not os.path.isfile(os.path.join(data, "bin", f)):
            raise SearchError(f"--data {data}: bin/{f} is missing (that split was not preprocessed); run "
                              f"scripts/pre{spec.script[5:]}.sh {task} --out {data}")


class TrialFailed(Exception):
    """The run exited non-zero, was killed, or wrote no validation record; the log tail says why."""

    def __init__(self, message: str, tail: str = ""):
        super().__init__(message)
        self.tail = tail


@dataclass
class RunResult:
    metric: float
    records: List[dict]
    wall_s: float
    command: str
    folder: str


def command(task: str, data: str, folder: str, flags: Sequence[str], base: Optional[str], tiny: bool,
            epochs: Optional[int], seed: int, extra: Sequence[str] = ()) -> List[str]:
    spec = task_spec(task)
    cmd = ["bash", str(REPO / "scripts" / f"{spec.script}.sh"), *spec.args, "delta", "--data", data,
           "--save-dir", folder, "--seed", str(seed)]
    cmd += ["--tiny"] if tiny else ["--base", base]
    if epochs is not None:
        cmd += ["--epochs", str(epochs)]
    return cmd + ["--", *flags, *extra]


def valid_records(log: str) -> List[dict]:
    """fairseq's `valid` JSON records of a train.log, in order (unreadable lines skipped)."""
    out = []
    try:
        text = Path(log).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        if "| valid |" not in line or "{" not in line:
            continue
        try:
            out.append(json.loads(line[line.index("{"):]))
        except json.JSONDecodeError:
            continue
    return out


def tail(path: str, n: int = 30) -> str:
    try:
        return "\n".join(Path(path).read_text(encoding="utf-8", errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def best(records: List[dict], metric: str, maximize: bool) -> Optional[float]:
    vals = [float(r[f"valid_{metric}"]) for r in records if f"valid_{metric}" in r]
    if not vals:
        return None
    return max(vals) if maximize else min(vals)


def exact_command(folder: str) -> str:
    """The fairseq-train command as the script recorded it (SAVE/train_args.json)."""
    try:
        argv = json.loads(Path(folder, "train_args.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return ""
    return shlex.join(str(a) for a in argv)


def run(cmd: List[str], folder: str, metric: str, maximize: bool, env: Optional[dict] = None,
        timeout: Optional[float] = None, on_start: Callable[[int], None] = lambda pgid: None,
        on_valid: Callable[[float, int], bool] = lambda value, step: False, poll_s: float = 1.0) -> RunResult:
    """Run one trial to its end. `on_valid(value, step)` is called for each new validation record and
    returns True to stop the run (pruning). The run has its own process group, so a stop or a timeout
    ends fairseq-train too, not only the script."""
    os.makedirs(folder, exist_ok=True)
    log = os.path.join(folder, "search.log")
    train_log = os.path.join(folder, "train.log")
    start = time.monotonic()
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=str(REPO), env=env,
                                start_new_session=True)
        on_start(proc.pid)  # the process group id: a resumed search ends what a killed one left
        seen, stopped, timed_out = 0, False, False
        while proc.poll() is None:
            time.sleep(poll_s)
            records = valid_records(train_log)
            for r in records[seen:]:
                value = r.get(f"valid_{metric}")
                if value is not None and on_valid(float(value), int(r.get("valid_num_updates", 0))):
                    stopped = True
            seen = len(records)
            if timeout is not None and time.monotonic() - start > timeout:
                timed_out = True
            if stopped or timed_out:
                _kill(proc)
        rc = proc.wait()
    wall = time.monotonic() - start
    if stopped:
        raise Pruned(f"pruned at update {records[-1].get('valid_num_updates') if records else 0}")
    if timed_out:
        raise TrialFailed(f"ran past --trial-timeout {timeout:g}s and was stopped", tail(log))
    if rc != 0:
        why = f"killed by signal {-rc}" if rc < 0 else f"exited with status {rc}"
        raise TrialFailed(f"the training run {why} (log: {log})", tail(log))
    records = valid_records(train_log)
    value = best(records, metric, maximize)
    if value is None:
        raise TrialFailed(f"the run wrote no valid_{metric} record to {train_log}", tail(log))
    return RunResult(value, records, wall, exact_command(folder), folder)


class Pruned(Exception):
    """The study's pruner stopped the run on an intermediate validation value."""


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def end_group(pgid: int) -> None:
    """End what a killed search left running (its trial's process group), if anything."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, OSError):
        pass
