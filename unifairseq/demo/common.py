"""Shared pieces of the demo: its error type, progress lines, tools and logged subprocesses."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from typing import Sequence

from ..data.tsv import REPO
from ..plugin import user_dir as packaged
from unifairseq.errors import UnifairseqError

RUN_DIR = REPO if os.path.isdir(REPO) else os.getcwd()  # where the tool processes start

PRINT_LOCK = threading.Lock()


class DemoError(UnifairseqError, RuntimeError):
    """A user-facing error: printed as a message, exit status 2."""


class Clock:
    def __init__(self):
        self.t0 = time.time()

    def elapsed(self) -> float:
        return time.time() - self.t0

    def stamp(self) -> str:
        s = int(self.elapsed())
        return f"{s // 60:02d}:{s % 60:02d}"


CLOCK = Clock()  # restarted by cli.main


def restart_clock() -> Clock:
    global CLOCK
    CLOCK = Clock()
    return CLOCK


def emit(line: str) -> None:
    with PRINT_LOCK:
        print(line, flush=True)


def say(msg: str) -> None:
    emit(f"[demo {CLOCK.stamp()}] {msg}")


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
    """The packaged --user-dir plugin: the same in a checkout and after a plain pip install."""
    path = packaged()
    if not os.path.isfile(os.path.join(path, "__init__.py")):
        raise DemoError(f"the fairseq --user-dir plugin {path} is missing from this install; reinstall unifairseq")
    return path


def default_workdir() -> str:
    """<checkout>/runs/demo in a checkout (git-ignored there), else ./runs/demo."""
    checkout = os.path.isfile(os.path.join(REPO, "pyproject.toml")) and os.path.isdir(os.path.join(REPO, "scripts"))
    return os.path.join(REPO if checkout else os.getcwd(), "runs", "demo")


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


def run_logged(cmd: Sequence[str], log_path: str, echo=None, prefix: str = "", env=None) -> int:
    """Run cmd, write all its output to log_path, echo the lines `echo(line)` selects."""
    return run_logged_cpu(cmd, log_path, echo, prefix, env)[0]


def run_logged_cpu(cmd: Sequence[str], log_path: str, echo=None, prefix: str = "", env=None):
    """run_logged, returning (exit status, CPU seconds (user + system) the process used)."""
    with open(log_path, "w", encoding="utf-8") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                cwd=RUN_DIR, env=env or thread_env(1), bufsize=1)
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
