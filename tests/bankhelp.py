"""Delta banks over one tiny BART base: single-delta models of the shared method table, banks made of
them, and mixed batches of sentences each naming its delta."""
import functools
import re

import torch

from methods import METHODS, SMALL
from tiny import perturb_deltas, random_batch, tiny_model

ROWS = {m[0]: m for m in METHODS}
# companions of every row in its bank: other methods, and a prefix / prompt of another length
EXTRA = {
    "prefix_l3": ("prefix_bart_base", SMALL + ["--attn-bn", "3"]),
    "prompt_l3": ("prompt_bart_base", SMALL + ["--attn-bn", "3"]),
}


def spec(name):
    name = name[:-len(TWIN)] if name.endswith(TWIN) else name
    if name in EXTRA:
        return EXTRA[name]
    return ROWS[name][1], ROWS[name][2]


TWIN = "@2"  # a second delta of the same method and sizes (other values): it shares the row's groups


def bank_name(name):
    return re.sub(r"[^A-Za-z0-9_]", "_", name.replace(TWIN, "_2"))


@functools.lru_cache(maxsize=None)
def plain_base():
    plain, task, _ = tiny_model("bart_base")
    return {k: v.clone() for k, v in plain.state_dict().items()}, task


def single(name, seed):
    """A single-delta model on the shared base, its deltas moved off their initialisation."""
    base, _ = plain_base()
    arch, flags = spec(name)
    m, _, _ = tiny_model(arch, flags, seed=seed)
    sd = m.full_state_dict()
    sd.update(base)
    torch.nn.Module.load_state_dict(m, sd, strict=True)
    perturb_deltas(m, seed=seed, std=0.2)
    m.eval()
    delta = {k: v.clone() for k, v in m.full_state_dict().items() if m.delta_plan.is_trainable(k)}
    return m, {"cfg": m.delta_plan.cfg, "model": delta}


def make_bank(names):
    base, _ = plain_base()
    singles = {n: single(n, seed=10 + i) for i, n in enumerate(names)}
    bank, _, _ = tiny_model("bank_bart_base")
    torch.nn.Module.load_state_dict(bank, {**torch.nn.Module.state_dict(bank), **base}, strict=True)
    for n in names:
        bank.bank.add(bank_name(n), singles[n][1])
    bank.eval()
    return bank, {bank_name(n): s[0] for n, s in singles.items()}


# bank indices per sentence: every delta once (row and twin: one sample per delta), or the row's
# method on several sentences of two deltas (several samples per delta), as in beam search
# (-1: the plain base); "ordered": a batch ordered by delta with as many rows per delta, which the
# sites lay out by views (core/bank.by_delta, bank_group.Group.layout "blocks")
ID_PATTERNS = {"one_each": [0, 1, 2, 3, 4], "shared": [1, 0, 1, 4, 0], "with_base": [3, -1, 0, 1, -1],
               "ordered": [0, 0, 1, 1]}


def mixed_batch(bsz=None, pattern="shared"):
    _, task = plain_base()
    d = task.source_dictionary
    bsz = bsz or len(ID_PATTERNS[pattern])
    src, lens, prev, tgt = random_batch(d, bsz=bsz, src_len=7, tgt_len=5, seed=3)
    ids = torch.tensor(ID_PATTERNS[pattern][:bsz])
    return d, src, lens, prev, tgt, ids
