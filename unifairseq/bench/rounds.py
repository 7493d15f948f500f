"""Interleaved rounds: every row (and, with --compare-with, every code version) once per round.

Round 1 runs each row once, each in a fresh worker process, then round 2 does the same, and so on:
a change of machine load during the run then hits every row alike instead of deciding one row's
ratio. The rows start at a different place in each round (round r begins r rows further on), and
with two code versions the two sides of a row run back to back, in alternating order.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

from .common import arch_for, malloc_env, progress

THIS_CHECKOUT = Path(__file__).resolve().parents[2]  # the folder that holds unifairseq/


def checkout_root(path: str) -> Path:
    """A checkout's root (the folder with unifairseq/__init__.py), for --compare-with."""
    root = Path(path).expanduser().resolve()
    if not (root / "unifairseq" / "__init__.py").is_file():
        raise ValueError(f"{path}: no unifairseq/__init__.py there (expected a checkout of this repository)")
    return root


def worker_env(o: argparse.Namespace, checkout: Path) -> Dict[str, str]:
    env = dict(os.environ, **malloc_env(o))
    env["PYTHONPATH"] = os.pathsep.join([str(checkout), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]])
    return env


def run_worker(method: str, o: argparse.Namespace, common: List[str], checkout: Path = THIS_CHECKOUT) -> dict:
    """One row in a fresh process that imports unifairseq from ``checkout`` (its own cwd and PYTHONPATH:
    ``python -m`` puts the cwd first on sys.path)."""
    with tempfile.NamedTemporaryFile("r", suffix=".json", delete=False) as f:
        out = f.name
    try:
        cmd = [sys.executable, "-m", "unifairseq.bench", "--worker", method, "--worker-out", out, *common]
        t = time.perf_counter()
        rc = subprocess.run(cmd, env=worker_env(o, checkout), cwd=checkout).returncode
        if rc != 0:
            progress(f"  {method}: FAILED (exit status {rc})")
            return dict(method=method, error=f"worker exit status {rc}")
        with open(out) as f:
            res = json.load(f)
        res["wall_s"] = time.perf_counter() - t
        return res
    finally:
        os.remove(out)


def run_rounds(o: argparse.Namespace, methods: List[str], common: List[str],
               before: Optional[Path] = None) -> List[dict]:
    """All rounds. Each: ``{"round": r, "order": [...], "results": {row: worker result}}`` and, with a
    ``before`` checkout, ``"before": {row: result}`` and ``"sides_order"``."""
    sides = [("results", THIS_CHECKOUT)] + ([("before", before)] if before is not None else [])
    rounds = []
    for r in range(o.rounds):
        shift = r % len(methods)
        order = methods[shift:] + methods[:shift]
        rnd: dict = dict(round=r + 1, order=order, **{key: {} for key, _ in sides})
        if before is not None:  # before first in odd rounds, after first in even ones
            rnd["sides_order"] = ["before", "after"] if r % 2 == 0 else ["after", "before"]
            pair = sides[::-1] if r % 2 == 0 else sides
        else:
            pair = sides
        for i, m in enumerate(order):
            for key, checkout in pair:
                side = "" if before is None else (" before" if key == "before" else " after")
                progress(f"[round {r + 1}/{o.rounds}, {i + 1}/{len(order)}] {m}{side} ({arch_for(m, o.size)}), "
                         f"load average {os.getloadavg()[0]:.2f}")
                rnd[key][m] = run_worker(m, o, common, checkout)
        rnd["results"] = {m: rnd["results"][m] for m in methods}  # table order
        if before is not None:
            rnd["before"] = {m: rnd["before"][m] for m in methods}
        rounds.append(rnd)
    return rounds
