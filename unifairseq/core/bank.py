"""The delta bank (torch only): N deltas on one frozen base, a different delta per sentence in one batch.

    bank = Bank(model.delta_bank)            # a ModuleDict name -> DeltaSet, registered on the model
    with bank.using(delta_ids):              # LongTensor [B] of bank indices; -1 = the plain base
        out = model(...)                     # every site reads the ids of its batch from the bank

A `DeltaSet` is one delta: its modules sit at the same paths as in a single-delta model (so its
`state_dict()` has exactly the keys of that model's delta checkpoint) and `sites` indexes them by
site key ("proj", host path), ("attn_out", path), ("ffn", layer path), ("prefix", stack path, kind),
("prompt", path), ("bias", parameter name), ("head", name).

How a site computes a mixed batch (no Python loop over sentences; a loop over the *groups* present
at a site): the deltas at a site are grouped by module structure (`structure_key`: class, parameter
shapes, every plain attribute such as LoRA's scale, an adapter's insertion, dropout p). For each
group the members' parameters are stacked ([n_group, ...]), gathered by the samples' ids
([n_samples, ...]) and the group's own module forward runs under `torch.func.vmap` over the samples
(`functional_call`), so every method computes exactly its single-model formula per sample (DoRA's
per-sample row norms included) and new methods need no bank code. Samples whose delta has nothing at
a site keep the base computation (Δh = 0 for additive forms, identity for scaling forms). A group
whose samples all use one delta calls the module directly (same numbers, no gather).
Prefixes (prefix tuning, MAM, gated prefix, MH PA) and prompts, which change sequence lengths, are
padded per sample instead: `prefix_rows`, `prompt_rows`. BitFit's biases: `bias_rows`.

Gradients: the stacked/gathered tensors are differentiable views of each delta's own parameters, so
in a mixed batch each delta's gradient comes only from its own samples (deltas without samples get
zero); the base is frozen and never written.
"""
from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from unifairseq.core.bank_group import Group, structure_key  # noqa: F401  (part of this module's API)
from unifairseq.core.bank_sites import SiteComputations
from unifairseq.errors import UnifairseqError

BASE_ID = -1  # a sample with delta id -1 runs the plain base


def by_delta(sample: dict):
    """The batch ordered by delta, once per forward: (sample, order) with order the stable permutation
    of its rows (None when already ordered or without delta_ids). Each delta's sentences are then
    contiguous, and stay so through beam search (a sentence's beams are consecutive rows; finished
    sentences leave without reordering the rest), so every site lays them out by views
    (bank_group.Group.layout "blocks") instead of gathering and scattering rows. Row order does
    not change any sentence's numbers: rows never interact."""
    ids = (sample or {}).get("net_input", {}).get("delta_ids")
    if ids is None or ids.numel() < 2 or bool((ids[1:] >= ids[:-1]).all()):
        return sample, None
    order = torch.sort(ids, stable=True).indices
    return take_rows(sample, order, ids.numel()), order


def take_rows(obj, order: torch.Tensor, n: int):
    """Every tensor of a (nested) fairseq sample whose first dimension is the n sentences, in `order`."""
    if isinstance(obj, dict):
        return {k: take_rows(v, order, n) for k, v in obj.items()}
    if torch.is_tensor(obj) and obj.dim() >= 1 and obj.size(0) == n:
        return obj.index_select(0, order.to(obj.device))
    return obj


def restore_order(rows: list, order: Optional[torch.Tensor]) -> list:
    """Per-sentence results of a batch taken in `order` (by_delta), back in the batch's own order."""
    if order is None:
        return rows
    out = [None] * len(rows)
    for j, i in enumerate(order.tolist()):
        out[i] = rows[j]
    return out


class BankError(UnifairseqError, ValueError):
    """A bank request that cannot be served; the message names the deltas and the fix."""


BANK_ATTR = "delta_bank"  # the ModuleDict of DeltaSets on a model (a delta_* name: trainable, never base)


class DeltaSet(nn.Module):
    """One delta of a bank: modules at their single-model paths + a flat index by site key."""

    def __init__(self, config=None):
        super().__init__()
        object.__setattr__(self, "sites", {})  # site key -> module / parameter / (provider, form)
        self.config = config  # DeltaConfig (or None for a head-only set)

    def put(self, path: str, value, key=None) -> None:
        """Place a module or parameter at a dotted path (containers are created on the way)."""
        *parents, last = path.split(".")
        node = self
        for part in parents:
            if part not in node._modules:
                node.add_module(part, nn.Module())
            node = node._modules[part]
        if isinstance(value, nn.Parameter):
            node.register_parameter(last, value)
        else:
            node.add_module(last, value)
        if key is not None:
            self.sites[key] = value


class Bank(SiteComputations):
    """The deltas of a bank and the ids of the batch being computed; built over the model's ModuleDict."""

    def __init__(self, sets: nn.ModuleDict):
        self.sets = sets
        self.default: Optional[str] = None
        self._stack_cache = True
        self._ids: List[torch.Tensor] = []
        self._groups: Dict[tuple, List[Group]] = {}

    # ------------------------------------------------------------ membership
    @property
    def names(self) -> List[str]:
        return list(self.sets.keys())

    def index(self, name: str) -> int:
        if name not in self.sets:
            raise BankError(f"no delta named {name!r} in the bank; it holds {', '.join(self.names) or 'nothing'}")
        return self.names.index(name)

    def ids(self, names, default: Optional[str] = None) -> torch.Tensor:
        """Bank indices of per-sentence delta names; None -> the default delta (or the base)."""
        default = default if default is not None else self.default
        out = []
        for n in names:
            n = n if n is not None else default
            out.append(BASE_ID if n is None else self.index(n))
        return torch.tensor(out, dtype=torch.long)

    def changed(self) -> None:
        self._groups.clear()
        self._plans = OrderedDict()

    def plan(self, group: Group, ids: torch.Tensor) -> tuple:
        """(rows of `ids` in the group, their local ids, the group's layout of them), computed once per
        ids tensor for every group of the same members: the sites of one forward / decoding step share
        it. The cache holds the ids tensors themselves (the last few: a step's ids and the per-sentence
        view beamable cross-attention takes), so `is` plus the version counter identify them."""
        if not hasattr(self, "_plans"):
            self._plans = OrderedDict()
        entry = self._plans.get(id(ids))
        if entry is None or entry[0] is not ids or entry[1] != ids._version:
            entry = self._plans[id(ids)] = (ids, ids._version, {})
            while len(self._plans) > 4:
                self._plans.popitem(last=False)
        plans = entry[2]
        key = (tuple(group.indices), ids.device)
        got = plans.get(key)
        if got is None:
            local = group.local_on(ids.device)[ids + 1]
            sel = (local >= 0).nonzero().squeeze(1)
            if sel.numel() == 0:
                got = (sel, None, None)
            else:
                sub = local if sel.numel() == ids.numel() else local.index_select(0, sel)
                got = (sel, sub, group.layout(sub))
            plans[key] = got
        return got

    # ------------------------------------------------------------------ ids
    @contextlib.contextmanager
    def using(self, ids: Optional[torch.Tensor]):
        self._ids.append(ids)
        try:
            yield
        finally:
            self._ids.pop()

    def current(self) -> Optional[torch.Tensor]:
        return self._ids[-1] if self._ids else None

    def batch_ids(self, ids: Optional[torch.Tensor], B: int, device) -> torch.Tensor:
        """The ids of a batch of B sentences: those given, else the default delta for all of them."""
        n = len(self.sets)
        if ids is None and self.current() is not None and self.current().numel() == B:
            ids = self.current()  # the model's forward was given the ids (fairseq passes them no further)
        if ids is None:
            if self.default is None and n != 1:
                raise BankError(f"this bank holds {n} deltas ({', '.join(self.names)}) and no delta_ids were given: "
                                "pass sample['net_input']['delta_ids'] (a LongTensor [B] of bank indices) or set "
                                "model.bank.default = NAME")
            return torch.full((B,), self.index(self.default) if self.default is not None else 0, dtype=torch.long,
                              device=device)
        ids = torch.as_tensor(ids, device=device).long().view(-1)
        if ids.numel() != B:
            raise BankError(f"delta_ids has {ids.numel()} entries for {B} sentences; give one bank index per sentence")
        if ids.numel() and (int(ids.min()) < BASE_ID or int(ids.max()) >= n):
            raise BankError(f"delta_ids must be bank indices 0..{n - 1} (or -1 for the plain base), got "
                            f"{sorted(set(ids.tolist()))}; see model.bank.names for the order")
        return ids

    def max_prompt_len(self, key) -> int:
        return max((m.weight.size(0) for _, m in self.entries(key)), default=0)

    def ids_for(self, n: int) -> torch.Tensor:
        """The ids of a batch of n rows: the current ids, or one id per block of rows when a site
        sees fewer rows (beamable cross-attention keeps one K/V row per sentence of `beam` rows)."""
        ids = self.current()
        if ids is None:
            raise BankError("a bank model needs delta_ids (sample['net_input']['delta_ids'], a LongTensor [B] of "
                            "bank indices) or a default delta (model.bank.default = NAME)")
        if ids.numel() == n:
            return ids
        if n and ids.numel() % n == 0:  # the same view object for every site of this step (see plan)
            held = getattr(self, "_per_block", None)
            if held is None or held[0] is not ids or held[1] != n or held[2] != ids._version:
                held = self._per_block = (ids, n, ids._version, ids.view(n, -1)[:, 0])
            return held[3]
        raise BankError(f"delta_ids has {ids.numel()} entries for a batch of {n} rows; give one id per sentence")

    # --------------------------------------------------------------- groups
    def entries(self, key) -> List[Tuple[int, object]]:
        return [(i, s.sites[key]) for i, s in enumerate(self.sets.values()) if key in s.sites]

    def groups(self, key) -> List[Group]:
        g = self._groups.get(key)
        if g is None:
            by = {}
            for i, m in self.entries(key):
                by.setdefault(structure_key(m), []).append((i, m))
            dev = next((p.device for _, m in self.entries(key) for p in m.parameters()), torch.device("cpu"))
            g = self._groups[key] = [Group(members, len(self.sets), dev) for members in by.values()]
            for group in g:
                group.cache = self.stack_cache
        return g

    @property
    def stack_cache(self) -> bool:
        """Inference keeps one stacked copy of each mixing group's parameters (speed); False stacks per
        call instead, so that a delta costs exactly its own size (memory)."""
        return self._stack_cache

    @stack_cache.setter
    def stack_cache(self, value: bool) -> None:
        self._stack_cache = bool(value)
        self.changed()

    def cache_bytes(self) -> int:
        """Bytes of the stacked parameter copies kept for inference (stack_cache=True)."""
        return sum(t.numel() * t.element_size() for gs in self._groups.values() for g in gs
                   if g._cache is not None for t in g._cache[1].values())

    def apply(self, key, out: torch.Tensor, ids: torch.Tensor, dim: int, fn_args, dims) -> torch.Tensor:
        """For each group at `key`: out[its samples' rows along dim] = module(*fn_args(rows)), the
        samples' own delta each (see Group.call for dims)."""
        for group in self.groups(key):
            sel, local, layout = self.plan(group, ids)
            if sel.numel() == 0:
                continue
            every = sel.numel() == out.size(dim)
            y = group.call(local, fn_args(None if every else sel), dims, dim, layout)
            out = y if every else out.index_copy(dim, sel, y)
        return out

    def route(self, key, ids: torch.Tensor, dim: int, fn_args, dims, rest):
        """Like apply, for sites whose modules compute the whole output (a LinearDelta computes
        y = f(x, W, b), base included): each row is computed once, by its group or by rest(rows) (the
        base) -- a batch of one group, or of none, runs with no gather or scatter at all."""
        n = ids.numel()
        parts, covered = [], torch.zeros(n, dtype=torch.bool, device=ids.device)
        for group in self.groups(key):
            sel, local, layout = self.plan(group, ids)
            if sel.numel() == 0:
                continue
            if sel.numel() == n:
                return group.call(local, fn_args(None), dims, dim, layout)
            parts.append((sel, group.call(local, fn_args(sel), dims, dim, layout)))
            covered[sel] = True
        if not parts:
            return rest(None)
        left = (~covered).nonzero().squeeze(1)
        if left.numel():
            parts.append((left, rest(left)))
        shape = list(parts[0][1].shape)
        shape[dim] = n
        out = parts[0][1].new_empty(shape)
        for sel, y in parts:
            out = out.index_copy(dim, sel, y)
        return out

    def has(self, key) -> bool:
        return any(key in s.sites for s in self.sets.values())

    # ------------------------------------------------------------ per-sample
    def bias_rows(self, key: str, ids: torch.Tensor, base: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """BitFit: [B, n] per-sample biases (a delta's trained bias, else the base bias); None when no
        delta of the bank trains this bias."""
        own = self.entries(("bias", key))
        if not own or base is None:
            return None
        table = [base] * (len(self.sets) + 1)
        for i, b in own:
            table[i + 1] = b
        return torch.stack(table).index_select(0, ids + 1)

    def prefix_rows(self, key, layer: int, ids: torch.Tensor, heads: int):
        """Per form: (form, rows, P_k, P_v [n, H, l_max, D], pad [n, l_max] True = padding) for the
        rows whose delta has a head-level delta at this attention."""
        out = []
        by_form: Dict[str, list] = {}
        for i, (prov, form) in self.entries(key):
            by_form.setdefault(form, []).append((i, prov))
        for form, members in by_form.items():
            local = torch.full((len(self.sets) + 1,), -1, dtype=torch.long, device=ids.device)
            local[torch.tensor([i + 1 for i, _ in members], device=ids.device)] = torch.arange(
                len(members), device=ids.device)
            loc = local[ids + 1]
            rows = (loc >= 0).nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            loc = loc.index_select(0, rows)
            present = sorted(set(loc.tolist()))
            Ps = [members[j][1](layer) for j in present]  # 2 x l_j x C each (cached at inference)
            lengths = [P.size(1) for P in Ps]
            l_max, C = max(lengths), Ps[0].size(2)
            if min(lengths) != l_max:
                Ps = [F.pad(P, (0, 0, 0, l_max - P.size(1))) for P in Ps]
            # one stack of the present deltas' prefixes, then each row's own: [n, 2, l_max, C]
            table = torch.stack(Ps)
            pos = loc if len(present) == len(members) else torch.searchsorted(
                torch.tensor(present, device=ids.device), loc)
            pad = None  # [n_present, l_max], True = padding; none when all prefixes are equally long
            if min(lengths) != l_max:
                pad = torch.arange(l_max, device=ids.device).unsqueeze(0) >= torch.tensor(
                    lengths, device=ids.device).unsqueeze(1)
            P = table.index_select(0, pos).view(rows.numel(), 2, l_max, heads, C // heads).transpose(2, 3)
            out.append((form, rows, P[:, 0], P[:, 1], None if pad is None else pad.index_select(0, pos)))
        return out

    def prompt_rows(self, key, ids: torch.Tensor):
        """Prompt tuning: (vectors [B, l_max, C] left-aligned, lengths [B]) or None when no sample of
        this batch has a prompt."""
        entries = dict(self.entries(key))
        if not entries:
            return None
        present = [i for i in sorted(set(ids.tolist())) if i in entries]
        if not present:
            return None
        l_max = max(entries[i].weight.size(0) for i in present)
        ref = entries[present[0]].weight
        table = [ref.new_zeros(l_max, ref.size(1))] * (len(self.sets) + 1)
        lengths = [0] * (len(self.sets) + 1)
        for i in present:
            w = entries[i].weight
            table[i + 1] = F.pad(w, (0, 0, 0, l_max - w.size(0)))
            lengths[i + 1] = w.size(0)
        rows = torch.stack(table).index_select(0, ids + 1)
        return rows, torch.tensor(lengths, device=ids.device).index_select(0, ids + 1)

    def classify(self, name: str, rep: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Per-sample classification heads: rep [B, 1, C] -> logits [B, classes], each row by its own
        delta's head; rows of heads with fewer classes than the widest are padded with -inf."""
        key = ("head", name)
        have = {i for i, _ in self.entries(key)}
        lacking = sorted({self.names[i] if i >= 0 else "the base (-1)" for i in ids.tolist() if i not in have})
        if lacking:
            raise BankError(f"classification head {name!r}: {', '.join(lacking)} have none; register it "
                            f"(model.register_classification_head({name!r}, num_classes=K, deltas=[...])) or send "
                            "those sentences to a delta that has it")
        parts = []
        for group in self.groups(key):
            local = group.local_on(ids.device)[ids + 1]
            sel = (local >= 0).nonzero().squeeze(1)
            if sel.numel():
                # [n, 1, 1, C]: a head reads features[:, 0] of its input, with or without vmap's sample dim
                y = group.call(local.index_select(0, sel), (rep.index_select(0, sel).unsqueeze(1),), (0,), 0)
                parts.append((sel, y.squeeze(1)))
        width = max(y.size(-1) for _, y in parts)
        out = rep.new_full((rep.size(0), width), float("-inf"))
        for sel, y in parts:
            out = out.index_copy(0, sel, F.pad(y, (0, width - y.size(-1)), value=float("-inf")))
        return out
