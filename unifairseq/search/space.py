"""The design space, read from the method registry (core/methods): what a search may train.

A *design* is one method at the attention side, one at the FFN side, or one of each (MAM is prefix
at attention + a scaled parallel adapter at the FFN). Each side of a design is a `Choice`: a mode,
an option and a composition, fixed, and at most one size (--attn-bn / --ffn-bn), the dimension the
budget acts on. The choices come from each method's own declaration:

* a method may declare `search_space`: a list of dicts {"side": "attn"|"ffn", "flags": {...},
  "size": (lo, hi) or None} (its choices, exactly);
* otherwise they are derived from what every method already declares: its modes and options per
  side, the compositions its presets use (`attn_composition`, `ffn_adapter_scalar`), the other flag
  values of its presets for that side (mid_dim, lora_alpha, init), and, when the method is `sized`,
  sizes from 1 to twice its largest preset size.

So a method added to the registry joins the space with no edit here. A `Point` is one design with
its sizes: the delta flags of one trial, in DeltaConfig's field names.

    space = registry_space(shape, budget)                   # designs with their size ranges
    points = paper_grid(shape, base_params, budgets)        # --space paper
    points = spacefile.file_grid(path, shape)               # --space FILE.yaml (spacefile.py)
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, fields
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from unifairseq.core.config import DeltaConfig, DeltaConfigError
from unifairseq.core.methods import METHODS, Method, ModelShape
from unifairseq.core.plan import DeltaPlan

from .errors import SearchError

SIDES = ("attn", "ffn")
SIZE_FLAG = {"attn": "attn_bn", "ffn": "ffn_bn"}
# the paper's composition dimension, per side: which flag of a preset says plain / scaled / gated
COMPOSITION_FLAG = {"attn": "attn_composition", "ffn": "ffn_adapter_scalar"}
MAX_SIZE = 4096  # no length or rank above this (a bottleneck far above d adds nothing)
FLAG_NAMES = tuple(f.name for f in fields(DeltaConfig))


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class Choice:
    """One method at one side: fixed flags and at most one size range."""
    side: str
    method: str
    flags: Tuple[Tuple[str, object], ...]
    size: Optional[Tuple[int, int]]

    @property
    def label(self) -> str:
        f = dict(self.flags)
        parts = [self.method, self.side]
        opt = f.get(self.side + "_option")
        if opt not in (None, "none"):
            parts.append(str(opt))
        comp = f.get(COMPOSITION_FLAG[self.side])
        if comp is not None and comp not in ("add", 1.0, "1.0"):
            parts.append(f"s={comp}" if self.side == "ffn" else str(comp))
        return ".".join(parts)


@dataclass(frozen=True)
class Design:
    """Zero or one choice per side (not both zero)."""
    attn: Optional[Choice]
    ffn: Optional[Choice]

    @property
    def label(self) -> str:
        return "+".join(c.label for c in (self.attn, self.ffn) if c is not None)

    @property
    def method(self) -> str:
        names = [c.method for c in (self.attn, self.ffn) if c is not None]
        if names == ["prefix", "adapter"] and dict(self.ffn.flags).get("ffn_option") == "parallel":
            return "mam"
        return "+".join(dict.fromkeys(names))

    def sides(self) -> List[Choice]:
        return [c for c in (self.attn, self.ffn) if c is not None]

    def flags(self, sizes: Optional[Dict[str, int]] = None) -> Dict[str, object]:
        out: Dict[str, object] = {}
        for c in self.sides():
            out.update(dict(c.flags))
            if c.size is not None:
                out[SIZE_FLAG[c.side]] = (sizes or {}).get(c.side, c.size[0])
        return out


@dataclass
class Point:
    """One trial's delta flags (DeltaConfig field names) and what it is."""
    label: str
    method: str
    flags: Dict[str, object]
    group: str = ""  # which comparison of the paper grid it belongs to
    stored: int = 0  # the paper's stored-parameter count on the search's base
    extra: Dict[str, object] = field(default_factory=dict)

    def argv(self) -> List[str]:
        return [a for k, v in self.flags.items() for a in (flag(k), str(v))]


# ------------------------------------------------------------------ counts
def config(flags: Dict[str, object]) -> DeltaConfig:
    unknown = [k for k in flags if k not in FLAG_NAMES]
    if unknown:
        raise SearchError(f"unknown delta flag {flag(unknown[0])}; the flags are "
                          f"{', '.join(flag(n) for n in FLAG_NAMES)}")
    return DeltaConfig(**dict(flags)).validate()


def stored_count(flags: Dict[str, object], shape: ModelShape) -> int:
    """The paper's stored-parameter count of these flags on a model shape, from the plan alone."""
    return DeltaPlan(config(flags)).formula(shape)


def valid(flags: Dict[str, object]) -> bool:
    try:
        DeltaPlan(config(flags))
    except DeltaConfigError:
        return False
    return True


def parse_budget(text: str, base_params: int) -> int:
    """'0.5%' (of the base's parameters) or a count ('120000', '1.2e5') -> a parameter count."""
    t = str(text).strip()
    try:
        if t.endswith("%"):
            value = float(t[:-1]) * base_params / 100.0
        else:
            value = float(t)
    except ValueError:
        raise SearchError(f"budget {text!r} is neither a percentage of the base (0.5%) nor a parameter "
                          "count (120000)") from None
    if not (math.isfinite(value) and value > 0):
        raise SearchError(f"budget {text!r} must be positive")
    return int(value)


def largest_size(flags: Dict[str, object], side: str, shape: ModelShape, budget: int,
                 lo: int = 1, hi: int = MAX_SIZE) -> int:
    """The largest size of `side` in [lo, hi] whose count stays within `budget` (0: none does).
    Every method's count grows with its size, so a bisection finds it."""
    def count(n):
        return stored_count({**flags, SIZE_FLAG[side]: n}, shape)

    if count(lo) > budget:
        return 0
    if count(hi) <= budget:
        return hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if count(mid) <= budget else (lo, mid)
    return lo


# ------------------------------------------------------------------ the registry's choices
def _side_presets(m: Method, side: str) -> List[dict]:
    modes = getattr(m, side + "_modes")
    return [p for p in m.presets.values() if p.get(side + "_mode") in modes]


def method_choices(m: Method) -> List[Choice]:
    """This method's choices at each side: its own `search_space` declaration, else derived."""
    declared = getattr(m, "search_space", None)
    if declared is not None:
        return [Choice(d["side"], m.name, tuple(sorted(d["flags"].items())),
                       tuple(d["size"]) if d.get("size") else None) for d in declared]
    out: List[Choice] = []
    defaults = DeltaConfig()
    for side in SIDES:
        modes = getattr(m, side + "_modes")
        if not modes:
            continue
        presets = _side_presets(m, side)
        options = getattr(m, side + "_options") or (None,)
        comp_flag = COMPOSITION_FLAG[side]
        used = [p[comp_flag] for p in presets if comp_flag in p]  # a method without them has no such choice
        comps = list(dict.fromkeys([getattr(defaults, comp_flag)] + used)) if used else [None]
        sizes = [p[SIZE_FLAG[side]] for p in presets if SIZE_FLAG[side] in p]
        # a sized method with no preset size on this side: up to 256
        size = (1, min(MAX_SIZE, 2 * max(sizes, default=128))) if m.sized else None
        for option, comp in itertools.product(options, comps):
            # the other flags of the preset closest to this choice (same option, else the side's first)
            like = [p for p in presets if p.get(side + "_option") == option] or presets or [{}]
            other = "ffn_" if side == "attn" else "attn_"
            fixed = {k: v for k, v in like[0].items() if not k.startswith(other)
                     and k not in (side + "_mode", side + "_option", SIZE_FLAG[side], comp_flag)}
            f = {side + "_mode": modes[0], **({side + "_option": option} if option else {}),
                 **({comp_flag: comp} if comp is not None else {}), **fixed}
            out.append(Choice(side, m.name, tuple(sorted(f.items())), size))
    return out


def _specs_key(flags: Dict[str, object]) -> str:
    """What the plan would build (two spellings of one design, e.g. pfeiffer = sequential, are one)."""
    cfg = config(flags)
    return repr(sorted(repr(s) for s in DeltaPlan(cfg).specs))


def registry_designs(methods: Optional[Iterable[str]] = None) -> List[Design]:
    """Every valid design of the registry (one side, or one method per side), each once."""
    names = list(METHODS) if methods is None else list(methods)
    for n in names:
        if n not in METHODS:
            raise SearchError(f"unknown method {n!r}; the registry has {', '.join(METHODS)}")
    choices = [c for n in names for c in method_choices(METHODS[n])]
    attn = [None] + [c for c in choices if c.side == "attn"]
    ffn = [None] + [c for c in choices if c.side == "ffn"]
    out, seen = [], set()
    for a, f in itertools.product(attn, ffn):
        if a is None and f is None:
            continue
        d = Design(a, f)
        flags = d.flags()
        if not valid(flags):
            continue
        key = _specs_key(flags)
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


@dataclass
class SpaceEntry:
    design: Design
    ranges: Dict[str, Tuple[int, int]]  # side -> (lo, hi) of its size, already cut to the budget


def registry_space(shape: ModelShape, budget: Optional[int] = None,
                   methods: Optional[Iterable[str]] = None) -> List[SpaceEntry]:
    """The designs with their size ranges; under a budget, ranges end at the largest size that fits
    (the other side at its smallest), and designs that cannot fit at all are left out."""
    out = []
    for d in registry_designs(methods):
        ranges = {}
        ok = True
        for c in d.sides():
            if c.size is None:
                continue
            lo, hi = c.size
            if budget is not None:
                hi = largest_size(d.flags(), c.side, shape, budget, lo, hi)
                if hi < lo:
                    ok = False
            ranges[c.side] = (lo, hi)
        if ok and (budget is None or stored_count(d.flags(), shape) <= budget):
            out.append(SpaceEntry(d, ranges))
    if not out:
        raise SearchError(f"the budget of {budget:,} stored parameters is below every point of the space; "
                          "raise --budget")
    return out


def make_point(design: Design, sizes: Dict[str, int], shape: ModelShape, group: str = "") -> Point:
    flags = design.flags(sizes)
    label = design.label + "".join(f" {SIZE_FLAG[s]}={n}" for s, n in sorted(sizes.items()))
    return Point(label, design.method, flags, group, stored_count(flags, shape))


# ------------------------------------------------------------------ the paper's grids
def _design(**flags) -> Design:
    """The one-sided registry design whose flags include these (so a grid names no method's internals)."""
    side = "attn" if "attn_mode" in flags else "ffn"
    for d in registry_designs():
        if [c.side for c in d.sides()] == [side] and all(d.flags().get(k) == v for k, v in flags.items()):
            return d
    raise SearchError(f"the registry has no design with {flags}")


PAPER_GROUPS = {
    # sec. 4.4: sequential vs parallel, at the FFN and at attention
    "insertion": [dict(ffn_mode="adapter", ffn_option="sequential", ffn_adapter_scalar=1.0),
                  dict(ffn_mode="adapter", ffn_option="parallel", ffn_adapter_scalar=1.0),
                  dict(attn_mode="adapter", attn_option="sequential"),
                  dict(attn_mode="adapter", attn_option="parallel")],
    # sec. 4.5: which representation to modify, at matched budgets
    "representation": [dict(attn_mode="lora"), dict(ffn_mode="lora"), dict(attn_mode="prefix", attn_option="concat")],
    # sec. 4.6: plain vs scaled composition of the parallel FFN adapter
    "composition": [dict(ffn_mode="adapter", ffn_option="parallel", ffn_adapter_scalar=4.0)],
}
# --demo: the paper's three comparisons that one form of delta (the adapter) shows on its own, so that a
# difference is the dimension's and not the functional form's: sequential vs parallel at the FFN,
# attention vs FFN (the parallel adapter at either), plain vs scaled (s = 1 vs s = 4)
DEMO_GROUPS = {
    "insertion": [dict(ffn_mode="adapter", ffn_option="sequential", ffn_adapter_scalar=1.0),
                  dict(ffn_mode="adapter", ffn_option="parallel", ffn_adapter_scalar=1.0)],
    "representation": [dict(attn_mode="adapter", attn_option="parallel")],
    "composition": [dict(ffn_mode="adapter", ffn_option="parallel", ffn_adapter_scalar=4.0)],
}


def paper_grid(shape: ModelShape, base_params: int, budgets: Sequence[str] = ("0.1%", "1%", "5%"),
               groups: Dict[str, List[dict]] = PAPER_GROUPS, mam: bool = True) -> List[Point]:
    """The paper's comparisons as one grid: each design of `groups` at each budget (its size the
    largest that fits), and, with `mam`, MAM (a prefix of about a tenth of the budget + the scaled
    parallel FFN adapter on the rest)."""
    points: List[Point] = []
    seen = set()

    def add(p: Point):
        key = tuple(sorted(p.flags.items()))
        if key not in seen:
            seen.add(key)
            points.append(p)

    for b in budgets:
        n = parse_budget(b, base_params)
        for group, designs in groups.items():
            for want in designs:
                d = _design(**want)
                side = d.sides()[0].side
                size = largest_size(d.flags(), side, shape, n)
                if size:
                    p = make_point(d, {side: size}, shape, group)
                    p.extra["budget"] = b
                    add(p)
        if not mam:
            continue
        mam_design = Design(_design(attn_mode="prefix", attn_option="concat").attn,
                            _design(ffn_mode="adapter", ffn_option="parallel", ffn_adapter_scalar=4.0).ffn)
        l = max(1, largest_size(Design(mam_design.attn, None).flags(), "attn", shape, n // 10))
        if l:
            r = largest_size(mam_design.flags({"attn": l}), "ffn", shape, n)
            if r:
                p = make_point(mam_design, {"attn": l, "ffn": r}, shape, "mam")
                p.extra["budget"] = b
                add(p)
    if not points:
        raise SearchError(f"every budget of {', '.join(budgets)} is below every point of the paper grid; "
                          "raise --budgets")
    return points


def within(points: List[Point], budget: Optional[int]) -> List[Point]:
    """The points at or under the budget (all without one); none left is an error naming the fix."""
    if budget is None:
        return points
    kept = [p for p in points if p.stored <= budget]
    if not kept:
        smallest = min(p.stored for p in points)
        raise SearchError(f"the budget of {budget:,} stored parameters is below every point of the space "
                          f"(the smallest stores {smallest:,}); raise --budget")
    return kept
