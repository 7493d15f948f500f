"""The demo's time budget: an estimate up front and warnings, never a cap.

Every run trains exactly its configured number of updates, so the same seeds and update counts
give the same accuracies on an idle or a busy machine. `--budget-minutes` only sets what the demo
is expected to take: it prints an idle-machine estimate first (and a warning when that alone is
over the budget), a warning when a run's training takes longer than its share of the budget, and
one at the end when the whole demo did.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

from .common import say
from .methods import Method

SETUP_S = 40.0       # importing MiniLM, tokenizing and binarizing (2 idle cores: ~15-40 s)
TRAIN_START_S = 20.0  # fairseq-train's start-up and saving
FINISH_S = 20.0      # evaluation on the dev set and the export, per run


def train_estimate_s(m: Method, updates: int) -> float:
    """Seconds of one fairseq-train process on an idle 2-core machine (2 runs at a time, 1 thread each)."""
    return TRAIN_START_S + updates * m.s_per_update


def schedule_estimate_s(runs: Sequence[Tuple[Method, int]], lanes: int) -> float:
    """The whole demo on an idle machine: runs taken in order by whichever lane is free first."""
    ends = [0.0] * max(1, lanes)
    for m, updates in runs:
        i = ends.index(min(ends))
        ends[i] += train_estimate_s(m, updates) + FINISH_S
    return SETUP_S + max(ends)


class Budget:
    """Shares of `minutes` for each run's training (or a fixed `minutes_per_run`), and the warnings."""

    def __init__(self, minutes: float, runs: Sequence[Tuple[Method, int]], lanes: int,
                 minutes_per_run: Optional[float] = None):
        self.minutes = minutes
        self.estimate_s = schedule_estimate_s(runs, lanes)
        scale = 60 * minutes / self.estimate_s
        self.share_s: Dict[str, float] = {
            m.name: 60 * minutes_per_run if minutes_per_run else scale * train_estimate_s(m, u) for m, u in runs}
        self.warnings: List[str] = []

    def warn(self, msg: str) -> None:
        self.warnings.append(msg)
        say(f"WARNING: {msg}")

    def announce(self) -> None:
        say(f"      time: about {self.estimate_s / 60:.1f} min on an idle 2-core machine; budget "
            f"{self.minutes:g} min (--budget-minutes only warns: every run trains all its updates)")
        if self.estimate_s > 60 * self.minutes:
            self.warn(f"the estimate ({self.estimate_s / 60:.1f} min) is over the {self.minutes:g}-min budget; the "
                      "demo will run past it (fewer --methods or --max-update make it shorter)")

    def check_run(self, m: Method, train_wall_s: float) -> bool:
        """Warn when a run's training took longer than its share; True if it did."""
        share = self.share_s[m.name]
        if train_wall_s <= share:
            return False
        self.warn(f"{m.label} trained for {train_wall_s:.0f} s, over its {share:.0f}-s share of the budget (a busy "
                  "machine?); it still trained all its updates, so its accuracy is unaffected")
        return True

    def check_total(self, total_s: float) -> bool:
        if total_s <= 60 * self.minutes:
            return False
        self.warn(f"the demo took {total_s / 60:.1f} min, over the {self.minutes:g}-min budget; the accuracies are "
                  "unaffected (every run trained its configured updates)")
        return True
