"""One trial = one real training run: scripts/train_<task>.sh METHOD=delta with the point's flags,
in its own folder, so that its fairseq-train command is the one a user would run by hand.

The metric is read from fairseq's structured log (--log-format json, which the scripts set): the
validation records of SAVE/train.log, one per validation, keyed by the validation subset, e.g.
`| valid | {"epoch": 1, "valid_accuracy": 81.2, "valid_num_updates": 8}` (GLUE, en-ro) or
`| valid1 | {"epoch": 1, "valid1_rouge2": 9.1, "valid1_num_updates": 8}` (XSum selects on its
subset valid1 when the data has it). Which subset a run selects on is read from the run's own
command (its first --valid-subset, fairseq's default `valid`): SAVE/train_args.json, the scripts'
record of the exact fairseq-train command.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
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
    split_files: tuple  # files of the data's bin folder a run needs (the data check names the missing one)
    preprocess: str  # how to make that folder (the fix the data check names), {data} the folder
    bin_optional: bool = False  # the scripts' seq2seq layout: DATA/bin, or DATA itself when it has no bin/
    metric_flags: Dict[str, tuple] = field(default_factory=dict)  # fairseq-train flags a metric needs
    has_epochs: bool = True  # the script has --epochs (train_glue.sh); the others train by updates
    tiny_base: tuple = ()  # python -m unifairseq.tools.tiny_base KIND [ARG...], as the script's --tiny calls it

    @property
    def preprocess_script(self) -> str:
        """`preprocess` without its options (scripts/preprocess_glue.sh SST-2), for "give the output of ..." lines."""
        return self.preprocess.split(" --")[0]


def _mbart_langs() -> str:
    """mbart.cc25's language codes, as scripts/lib.sh sets them for train_enro.sh (its --langs default):
    the tiny base's dictionary gains one symbol per language, so the list must be the script's."""
    text = (REPO / "scripts" / "lib.sh").read_text(encoding="utf-8")
    return re.search(r"^MBART_LANGS=(\S+)$", text, re.M).group(1)


TINY_SEQ2SEQ = ("--layers", "2", "--dim", "64", "--ffn-dim", "128", "--heads", "4", "--embed-std", "0.125")
GLUE = dict(script="train_glue", metrics=("accuracy", "loss"), maximize={"accuracy": True, "loss": False},
            split_files=("input0/train.idx", "input0/valid.idx", "label/train.idx"),
            tiny_base=("roberta", "--max-positions", "512", "--layers", "2", "--dim", "64", "--ffn-dim", "128",
                       "--heads", "4"))
# BLEU-based selection as train_enro.sh --help gives it: the validation split decoded with the
# test-time settings (eval_enro.sh: beam 5, max_len_b 200), the sentencepiece pieces joined back into
# text (the data is mBART's sentencepiece, or the tiny model preprocess_enro.sh --tiny trains), then
# sacreBLEU's default 13a tokenization on it, without the language tags (translation_mbart): eval_enro.sh's
# `bleu` on the validation split.
BLEU_FLAGS = ("--eval-bleu", "--eval-bleu-args", '{"beam":5,"max_len_b":200}', "--eval-bleu-remove-bpe",
              "sentencepiece", "--best-checkpoint-metric", "bleu", "--maximize-best-checkpoint-metric")
TASKS = {
    "SST-2": TaskSpec(args=("SST-2",), preprocess="scripts/preprocess_glue.sh SST-2 --out {data}", **GLUE),
    "MNLI": TaskSpec(args=("MNLI",), preprocess="scripts/preprocess_glue.sh MNLI --out {data}", **GLUE),
    # train_xsum.sh selects on ROUGE-2 itself (--eval-rouge); the search adds nothing
    "XSum": TaskSpec(script="train_xsum", args=(), metrics=("rouge2", "rouge1", "rougeL", "loss"),
                     maximize={"rouge2": True, "rouge1": True, "rougeL": True, "loss": False},
                     split_files=("train.source-target.source.idx", "train.source-target.target.idx",
                                  "valid.source-target.source.idx", "valid.source-target.target.idx",
                                  "dict.source.txt"),
                     preprocess="scripts/preprocess_xsum.sh --raw RAW --out {data}", bin_optional=True,
                     has_epochs=False,
                     tiny_base=("bart", "--source-lang", "source", "--target-lang", "target", *TINY_SEQ2SEQ)),
    # train_enro.sh selects on the validation loss: --metric bleu adds BLEU_FLAGS to every trial
    "en-ro": TaskSpec(script="train_enro", args=(), metrics=("bleu", "loss"), maximize={"bleu": True, "loss": False},
                      split_files=("train.en_XX-ro_RO.en_XX.idx", "train.en_XX-ro_RO.ro_RO.idx",
                                   "valid.en_XX-ro_RO.en_XX.idx", "valid.en_XX-ro_RO.ro_RO.idx", "dict.en_XX.txt"),
                      preprocess="scripts/preprocess_enro.sh --raw RAW --out {data}", bin_optional=True,
                      metric_flags={"bleu": BLEU_FLAGS}, has_epochs=False,
                      tiny_base=("mbart", "--source-lang", "en_XX", "--target-lang", "ro_RO", "--langs", "{langs}",
                                 *TINY_SEQ2SEQ)),
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


def check_epochs(task: str, epochs: Optional[int]) -> None:
    spec = task_spec(task)
    if epochs is not None and not spec.has_epochs:
        raise SearchError(f"--epochs: scripts/{spec.script}.sh trains by updates and has no epochs; give the "
                          "trials' length after '--' instead: -- --max-update N --total-num-update N")


def data_bin(task: str, data: str) -> str:
    """The binarized folder a run of the task reads, as its script finds it in --data."""
    b = os.path.join(data, "bin")
    return data if task_spec(task).bin_optional and not os.path.isdir(b) else b


def check_data(task: str, data: str) -> None:
    spec = task_spec(task)
    fix = spec.preprocess.format(data=data)
    if not os.path.isdir(data):
        raise SearchError(f"--data {data}: no such folder; give the output of {spec.preprocess_script}")
    where = data_bin(task, data)
    for f in spec.split_files:
        if not os.path.isfile(os.path.join(where, f)):
            rel = os.path.relpath(os.path.join(where, f), data)
            what = "its dictionary" if f.startswith("dict.") else "that split"
            raise SearchError(f"--data {data}: {rel} is missing ({what} was not preprocessed); run {fix}")


def tiny_base_command(task: str, data: str, path: str) -> List[str]:
    """The command that makes the task's --tiny base at PATH, with the arguments the script's --tiny passes."""
    spec = task_spec(task)
    kind, *args = spec.tiny_base
    where = os.path.join(data_bin(task, data), "input0") if kind == "roberta" else data_bin(task, data)
    args = [_mbart_langs() if a == "{langs}" else a for a in args]
    return [sys.executable, "-m", "unifairseq.tools.tiny_base", kind, where, path, *args]


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
            epochs: Optional[int], seed: int, extra: Sequence[str] = (), metric: Optional[str] = None) -> List[str]:
    """The trial's script command: the point's delta flags, then what the metric needs (BLEU-based
    selection for en-ro's bleu), then the user's own flags after '--', which come last and override."""
    spec = task_spec(task)
    cmd = ["bash", str(REPO / "scripts" / f"{spec.script}.sh"), *spec.args, "delta", "--data", data,
           "--save-dir", folder, "--seed", str(seed)]
    cmd += ["--tiny"] if tiny else ["--base", base]
    if epochs is not None:
        cmd += ["--epochs", str(epochs)]
    return cmd + ["--", *flags, *spec.metric_flags.get(metric, ()), *extra]


def valid_records(log: str, subset: str = "valid") -> List[dict]:
    """fairseq's JSON records of the validation subset SUBSET in a train.log, in order (unreadable
    lines skipped). Their keys carry the subset: {"valid1_rouge2": ..., "valid1_num_updates": ...}."""
    out = []
    try:
        text = Path(log).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return out
    mark = f"| {subset} |"
    for line in text.splitlines():
        if mark not in line or "{" not in line:
            continue
        try:
            out.append(json.loads(line[line.index("{", line.index(mark)):]))
        except ValueError:  # no JSON after the mark, or a line cut short
            continue
    return out


def valid_subset(folder: str) -> str:
    """The subset the run in FOLDER validates and selects on: the first of its command's last
    --valid-subset (a later flag overrides an earlier one, as in fairseq's parser), else fairseq's
    default `valid`."""
    try:
        argv = json.loads(Path(folder, "train_args.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return "valid"
    value = "valid"
    for i, a in enumerate(map(str, argv)):
        if a == "--valid-subset" and i + 1 < len(argv):
            value = str(argv[i + 1])
        elif a.startswith("--valid-subset="):
            value = a.split("=", 1)[1]
    return value.split(",")[0] or "valid"


def tail(path: str, n: int = 30) -> str:
    try:
        return "\n".join(Path(path).read_text(encoding="utf-8", errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def best(records: List[dict], metric: str, maximize: bool, subset: str = "valid") -> Optional[float]:
    key = f"{subset}_{metric}"
    vals = [float(r[key]) for r in records if key in r]
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
        seen, stopped, timed_out, subset, records = 0, False, False, "valid", []
        while proc.poll() is None:
            time.sleep(poll_s)
            subset = valid_subset(folder)  # the script records its command before fairseq-train starts
            records = valid_records(train_log, subset)
            for r in records[seen:]:
                value = r.get(f"{subset}_{metric}")
                if value is not None and on_valid(float(value), int(r.get(f"{subset}_num_updates", 0))):
                    stopped = True
            seen = len(records)
            if timeout is not None and time.monotonic() - start > timeout:
                timed_out = True
            if stopped or timed_out:
                _kill(proc)
        rc = proc.wait()
    wall = time.monotonic() - start
    if stopped:
        raise Pruned(f"pruned at update {records[-1].get(f'{subset}_num_updates') if records else 0}")
    if timed_out:
        raise TrialFailed(f"ran past --trial-timeout {timeout:g}s and was stopped", tail(log))
    if rc != 0:
        why = f"killed by signal {-rc}" if rc < 0 else f"exited with status {rc}"
        raise TrialFailed(f"the training run {why} (log: {log})", tail(log))
    subset = valid_subset(folder)
    records = valid_records(train_log, subset)
    value = best(records, metric, maximize, subset)
    if value is None:
        raise TrialFailed(f"the run wrote no {subset}_{metric} record to {train_log}", tail(log))
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
