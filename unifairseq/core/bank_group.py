"""Groups of a delta bank's deltas at one site (see core/bank.py): modules of equal structure, their
stacked parameters, and the batched call of their own forward for a mixed set of samples."""
from __future__ import annotations

from typing import Dict, List, Tuple

import torch
import torch.nn as nn
from torch.func import functional_call, vmap


def _plain(v):
    if isinstance(v, (int, float, str, bool, type(None))):
        return v
    if callable(v) and hasattr(v, "__name__"):  # e.g. an activation function
        return getattr(v, "__module__", "") + "." + v.__name__
    return None


def structure_key(module: nn.Module) -> tuple:
    """Modules with equal keys compute the same function of (parameters, inputs): they can share one
    vmapped call. Class, parameter names/shapes/dtypes and every plain attribute of every submodule."""
    parts = []
    for name, m in module.named_modules():
        attrs = tuple(sorted((k, _plain(v)) for k, v in vars(m).items()
                             if not k.startswith("_") and _plain(v) is not None))
        parts.append((name, type(m).__qualname__, attrs))
    params = tuple((n, tuple(p.shape), p.dtype) for n, p in module.named_parameters())
    return tuple(parts) + params


class Group:
    """Deltas of one structure at one site: their bank indices, a template module, stacked params."""

    def __init__(self, members: List[Tuple[int, nn.Module]], n_bank: int, device):
        self.indices = [i for i, _ in members]
        self.modules = [m for _, m in members]
        self.template = self.modules[0]
        local = torch.full((n_bank + 1,), -1, dtype=torch.long)  # position in the group, by id + 1
        for j, i in enumerate(self.indices):
            local[i + 1] = j
        self.local = local.to(device)
        self._cache = None
        self._params = None
        self.cache = True

    def local_on(self, device) -> torch.Tensor:
        if self.local.device != device:  # the model moved (e.g. .cuda()) after this group was built
            self.local = self.local.to(device)
        return self.local

    def stacked(self) -> Dict[str, torch.Tensor]:
        if self._params is None:  # the members' Parameter objects (kept by load_state_dict and .to())
            self._params = ([n for n, _ in self.template.named_parameters()],
                            [dict(m.named_parameters()) for m in self.modules])
        names, per = self._params
        if torch.is_grad_enabled():  # training: differentiable stacks of the members' own tensors
            return {n: torch.stack([p[n] for p in per]) for n in names}
        if not self.cache:  # memory first: stack per call, freed after it
            return {n: torch.stack([p[n] for p in per]) for n in names}
        # the members' train()/eval() switches too: fairseq's optimizer steps leave _version as it was
        # (DeltaModule.mode_switches)
        key = (tuple(getattr(m, "mode_switches", 0) for m in self.modules),
               *((p[n].data_ptr(), p[n]._version) for p in per for n in names))
        if self._cache is None or self._cache[0] != key:  # inference: stacked once per set of weights
            self._cache = (key, {n: torch.stack([p[n] for p in per]) for n in names})
        return self._cache[1]

    def layout(self, local_ids: torch.Tensor) -> tuple:
        """How call() lays these samples out; it depends on the ids only, so the bank computes it once
        per set of ids (a forward, a decoding step) and every site with the same members reuses it."""
        if len(self.modules) == 1 or bool((local_ids == local_ids[0]).all()):
            return ("one", int(local_ids[0]))
        present, inverse = torch.unique(local_ids, return_inverse=True)  # the group's deltas in this batch
        counts = torch.bincount(inverse, minlength=present.numel())
        width = int(counts.max())
        sub = None if present.numel() == len(self.modules) else present  # all present: sorted = 0..n-1
        if width == 1:
            return ("each", local_ids)
        n = local_ids.numel()
        if bool((counts == width).all()) and bool((inverse.view(-1, width) == torch.arange(
                present.numel(), device=inverse.device).unsqueeze(1)).all()):
            # a batch ordered by delta (the delta_bank task sorts it once per forward) with as many rows
            # per delta: each delta's rows are one contiguous block, laid out by views, no copies
            return ("blocks", sub, present.numel(), width)
        order = torch.argsort(inverse, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.empty_like(order)
        slot[order] = torch.arange(n, device=order.device) - starts[inverse[order]]
        flat = inverse * width + slot  # each row's place in the [deltas, width] layout
        pad_idx = torch.zeros(present.numel() * width, dtype=torch.long, device=order.device)  # spare: row 0
        pad_idx[flat] = torch.arange(n, device=order.device)
        return ("padded", sub, present.numel(), width, flat, pad_idx, pad_idx.view(-1, width)[:, 0])

    def call(self, local_ids: torch.Tensor, args: tuple, dims: tuple, out_dim: int, layout: tuple = None):
        """The module's forward per sample. dims[k]: None (shared by all samples, e.g. the base W),
        an int (the sample dimension of a data argument) or "r" (a per-sample constant, sample dim 0,
        equal for samples of one delta: BitFit's bias rows). `layout`: self.layout(local_ids), if known."""
        layout = layout or self.layout(local_ids)
        if layout[0] == "one":
            # one delta for all these samples: its plain forward on the block (same numbers, no gather)
            return self.modules[layout[1]](*[a[0] if d == "r" else a for a, d in zip(args, dims)])
        stacked = self.stacked()

        def one(p, *a):
            return functional_call(self.template, p, a)

        in_dims = (0, *[0 if d == "r" else d for d in dims])
        if layout[0] == "each":  # one sample per delta: vmap over the samples, each with its delta's parameters
            per = {n: t.index_select(0, layout[1]) for n, t in stacked.items()}
            return vmap(one, in_dims=in_dims, out_dims=out_dim, randomness="different")(per, *args)
        if layout[0] == "blocks":
            _, sub, n_present, width = layout
            if sub is not None:
                stacked = {n: t.index_select(0, sub) for n, t in stacked.items()}
            # each delta's rows made one contiguous block (one copy in, one out): the batched matmuls
            # then run on dense [n, rows, C] operands instead of copying strided ones at every op
            laid = [a if d is None else a.unflatten(0, (n_present, width))[:, 0] if d == "r"
                    else a.unflatten(d, (n_present, width)).movedim(d, 0).contiguous() for a, d in zip(args, dims)]
            fast = getattr(self.template, "blocks_forward", None)  # the method's own batched math, if any
            out = fast(stacked, *laid) if fast is not None else None
            if out is None:
                block_dims = (0, *[None if d is None else 0 for d in dims])
                out = vmap(one, in_dims=block_dims, out_dims=0, randomness="different")(stacked, *laid)
            return out.movedim(0, out_dim).flatten(out_dim, out_dim + 1)
        _, sub, n_present, width, flat, pad_idx, first = layout
        if sub is not None:
            stacked = {n: t.index_select(0, sub) for n, t in stacked.items()}
        # several samples per delta (beams, tasks): vmap over the deltas present, each on its own rows
        # padded to the most rows of one delta -- every delta's weights are read once, not per sample
        # (gathered with the rows first, so each delta's rows are one dense block, as in "blocks")
        laid = []
        for a, d in zip(args, dims):
            if d is None:
                laid.append(a)
            elif d == "r":
                laid.append(a.index_select(0, first))
            else:
                laid.append(a.movedim(d, 0).index_select(0, pad_idx).unflatten(0, (n_present, width)))
        block_dims = (0, *[None if d is None else 0 for d in dims])
        out = vmap(one, in_dims=block_dims, out_dims=0, randomness="different")(stacked, *laid)
        return out.flatten(0, 1).index_select(0, flat).movedim(0, out_dim)
