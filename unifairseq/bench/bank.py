"""Beam-search throughput of a delta bank: N deltas mixed in one batch, against one batch per delta.

    python -m unifairseq.bench.bank                               # CPU, the shapes below, 3 rounds
    python -m unifairseq.bench.bank --device cuda --fp16 --batch 64 --rounds 5   # on a GPU
    python -m unifairseq.bench.bank --tiny --rounds 1 --methods lora_attn --ns 1 2  # seconds: the smoke test

Model: a random BART of bart_base's layout, shrunk so that the whole run takes minutes on 2 CPU
cores (``SHAPES``: 3+3 layers, dim 256, FFN 1024, 4 heads, 8,000-symbol dictionary), built as
``fairseq-train --arch bank_bart_base --bank-deltas ...`` builds it (fairseq's argument parsing and
build_model). For each method (``--methods``: LoRA, an FFN adapter, MAM) and each N (``--ns``) a bank of
N deltas of that method; every delta's tensors are moved off their initialisation (std 0.02) so that
the deltas differ. One batch of ``--batch`` random source sentences (``--src-len`` tokens), sentence i
using delta i mod N, is decoded by fairseq's SequenceGenerator (beam ``--beam``, exactly ``--gen-len``
tokens: min_len = max_len), in three ways (rows):

  mixed       the whole batch in one generate() call, ``net_input["delta_ids"]`` per sentence, the batch
              ordered by delta first as the delta_bank task and the bank hub do (``core.bank.by_delta``:
              each delta's rows contiguous, laid out by views at every site);
  sequential  N generate() calls, one per delta, each on that delta's sentences (delta_ids all equal);
  merged      LoRA only: N generate() calls, each on a plain model with that delta merged into its
              weights (the merge itself is not timed: a server would keep N merged copies).
  peft        lora_attn only, when peft and transformers are installed (``pip install 'unifairseq[bench]'``;
              ``--no-peft`` leaves it out): an HF BartForConditionalGeneration of the same shapes (random,
              seeded, init std 2/sqrt(d)) with N peft LoRA adapters of the lora_attn preset (r 16, alpha 32, q_proj and v_proj),
              each moved off its init (std 0.02), the same source batch in one
              ``generate(adapter_names=[...])`` call (``unifairseq.bench.peft_row``).

Reported: sentences per second (batch / seconds of decoding), and the ratio to the single-delta batch
of the same size (mixed with N = 1) of the same round. The rows run interleaved: every round decodes
every row ``--runs`` times and keeps the fastest (after one untimed warm-up decode per row), each
round starting one row further on, so that load drift hits every row alike; the table gives the
median over rounds and the min-max spread (``unifairseq.bench.report.spread``). Targets (issue 16; mixed vs N = 1):
LoRA >= 0.95 at N = 8 and >= 0.85 at N = 32, scaled PA and MAM >= 0.90 and >= 0.85, judged on the median
of at least 5 rounds.

Check: the mixed decode must give every sentence the tokens and scores of the sequential decode of
its own delta (``unifairseq.bench.mergecheck.compare_decodes``, 1e-4 per token; the merged rows are
checked the same way against the sequential ones; the peft row's tokens, sentence by sentence, against
the same sentences decoded with their adapter alone, ``set_adapter``). A failed check makes the exit
status 1.
``--profile METHOD:N`` prints torch.profiler's top operators of one mixed and one N=1 decode.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Dict, List, Optional

from .. import cli
from ..tools.count import build_translation_model, dummy_dictionary
from . import peft_row
from .common import progress
from .mergecheck import TOL, TOL_FP16, compare_decodes, top_hypotheses
from .report import spread
from .worker import make_batch

SHAPES = ["--encoder-layers", "3", "--decoder-layers", "3", "--encoder-embed-dim", "256",
          "--decoder-embed-dim", "256", "--encoder-ffn-embed-dim", "1024", "--decoder-ffn-embed-dim", "1024",
          "--encoder-attention-heads", "4", "--decoder-attention-heads", "4"]
VOCAB = 8000
TINY_SHAPES = ["--encoder-layers", "1", "--decoder-layers", "1", "--encoder-embed-dim", "32",
               "--decoder-embed-dim", "32", "--encoder-ffn-embed-dim", "64", "--decoder-ffn-embed-dim", "64",
               "--encoder-attention-heads", "4", "--decoder-attention-heads", "4"]
TINY_VOCAB = 200
METHODS = ("lora_attn", "scaled_pa", "mam")
# issue 16's targets, mixed vs the single-delta batch, by N (judged on the median of >= 5 interleaved rounds)
TARGETS = {"lora_attn": {8: 0.95, 32: 0.85}, "scaled_pa": {8: 0.90, 32: 0.85}, "mam": {8: 0.90, 32: 0.85}}
MIN_ROUNDS = 5
MERGEABLE = ("lora_attn", "lora_ffn")


def parse(argv=None) -> argparse.Namespace:
    ap = cli.parser("unifairseq-bench-bank", __doc__)
    cli.add_methods(ap, None, default=list(METHODS), what="presets, a bank of N deltas of each")
    ap.add_argument("--ns", nargs="+", type=int, default=[1, 2, 8, 32])
    cli.add_renamed(ap, "--batch-size", ["--batch"], dest="batch", type=int, default=32, metavar="N",
                    help="sentences decoded in one batch (default 32)")
    ap.add_argument("--src-len", type=int, default=24)
    ap.add_argument("--beam", type=int, default=4)
    ap.add_argument("--gen-len", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=1, help="decodes per row and round; the fastest counts")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--fp16", action="store_true")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes (the smoke test)")
    ap.add_argument("--no-peft", action="store_true",
                    help="leave out the peft row (lora_attn; on by default when peft is installed)")
    ap.add_argument("--profile", metavar="METHOD:N", default=None)
    ap.add_argument("--json", default="runs/bench_bank.json")
    o = ap.parse_args(argv)
    if 1 not in o.ns:
        ap.error("--ns must include 1: every ratio is against the single-delta batch")
    if any(o.batch % n for n in o.ns):
        ap.error(f"--batch-size {o.batch} must be a multiple of every N in --ns {o.ns} (equal shares per delta)")
    return o


def build_bank(method: str, n: int, o, d):
    """A bank of n fresh deltas of `method` on a random base, each moved off its init (different per delta)."""
    import torch

    spec = ",".join(f"d{k}={method}" for k in range(n))
    torch.manual_seed(0)  # the same base for every bank
    model, task, _ = build_translation_model("bank_bart_base", [*(TINY_SHAPES if o.tiny else SHAPES),
                                                                "--bank-deltas", spec], d)
    torch.manual_seed(1 + n)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.02)
    return model.eval(), task


def merged_copies(bank_model, n: int, o, d):
    """One plain fairseq model per delta with that delta merged into its weights (LoRA: every site of
    the delta is a projection, `LinearDelta.merged` gives W and b)."""
    import copy

    import torch

    plain, _, _ = build_translation_model("bart_base", TINY_SHAPES if o.tiny else SHAPES, d)
    base = bank_model.bank.base_state()
    out = []
    with torch.no_grad():
        for name in bank_model.bank.names[:n]:
            sd = dict(base)
            for key, m in bank_model.delta_bank[name].sites.items():
                if key[0] != "proj":
                    raise ValueError(f"delta {name}: {key[0]} is not a projection delta; only LoRA-like deltas merge")
                host = key[1]
                W, b = m.merged(sd[host + ".weight"], sd.get(host + ".bias"))
                sd[host + ".weight"] = W
                if b is not None:
                    sd[host + ".bias"] = b
            c = copy.deepcopy(plain)
            torch.nn.Module.load_state_dict(c, sd, strict=True)
            out.append(c.eval())
    return out


class Row:
    """One way of decoding the batch: `run()` decodes it once and returns per-sentence hypotheses."""

    def __init__(self, key, calls):
        self.key, self.calls = key, calls  # calls: [(generator, model, sample, sentence positions)]

    def run(self, batch: int):
        import torch

        from ..core.bank import by_delta, restore_order  # torch: not at --help

        hyps: List[Optional[dict]] = [None] * batch
        with torch.no_grad():
            for gen, model, sample, rows in self.calls:
                # ordered by delta, as the delta_bank task and the bank hub order every batch
                ordered, order = by_delta(sample)
                for i, h in zip(rows, restore_order(top_hypotheses(gen.generate([model], ordered)), order)):
                    hyps[i] = h
        return hyps


def rows_for(method: str, n: int, o, d, dev):
    import torch
    from fairseq.sequence_generator import SequenceGenerator

    model, task = build_bank(method, n, o, d)
    src, lengths, _, _ = make_batch(d, o.batch, o.src_len, 2)
    ids = torch.arange(o.batch) % n

    def gen_for(m):
        m.to(dev)
        if o.fp16:
            m.half()
        return SequenceGenerator([m], task.target_dictionary, beam_size=o.beam, max_len_a=0,
                                 max_len_b=o.gen_len, min_len=o.gen_len)

    def sample(sel, delta=None):
        net = {"src_tokens": src[sel].to(dev), "src_lengths": lengths[sel].to(dev)}
        if delta is not None:
            net["delta_ids"] = delta.to(dev)
        return {"net_input": net}

    gen = gen_for(model)
    everything = torch.arange(o.batch)
    rows = [Row((method, n, "mixed"), [(gen, model, sample(everything, ids), everything.tolist())])]
    if n > 1:
        per = [(ids == k).nonzero().flatten() for k in range(n)]
        rows.append(Row((method, n, "sequential"), [(gen, model, sample(s, ids[s]), s.tolist()) for s in per]))
        if method in MERGEABLE:
            copies = merged_copies(model, n, o, d)
            rows.append(Row((method, n, "merged"), [(gen_for(c), c, sample(s), s.tolist())
                                                    for c, s in zip(copies, per)]))
    elif method in MERGEABLE:
        c = merged_copies(model, 1, o, d)[0]
        rows.append(Row((method, n, "merged"), [(gen_for(c), c, sample(everything), everything.tolist())]))
    return rows


def check(rows: List[Row], hyps: Dict[tuple, list], fp16: bool = False) -> List[dict]:
    """Mixed (and merged) vs sequential decodes of the same bank: same tokens and scores per sentence;
    the peft rows against each adapter alone (tokens)."""
    out = []
    by = {r.key: hyps[r.key] for r in rows if r.key[2] != "peft"}
    for (method, n, kind), h in by.items():
        ref = by.get((method, n, "sequential"), by[(method, n, "mixed")])
        if ref is h:
            continue
        res = compare_decodes(ref, h, None, TOL_FP16 if fp16 else TOL)
        out.append(dict(method=method, n=n, row=kind, **res))
    if len(by) < len(rows):
        out += peft_row.checks(rows, hyps)
    return out


def peft_wanted(o) -> bool:
    """The peft row runs unless --no-peft, and only when peft is installed (said once when it is not)."""
    if o.no_peft or peft_row.METHOD not in o.methods:
        return False
    if not peft_row.available():
        progress("no peft row: peft and transformers are not installed (pip install 'unifairseq[bench]')")
        return False
    return True


def measure(o) -> dict:
    import torch

    if o.device == "cpu":
        torch.set_num_threads(o.threads)
    dev = torch.device(o.device)
    d = dummy_dictionary(TINY_VOCAB if o.tiny else VOCAB)
    rows: List[Row] = []
    with_peft = peft_wanted(o)
    for m in o.methods:
        for n in o.ns:
            progress(f"building {m} bank with N = {n}")
            rows += rows_for(m, n, o, d, dev)
            if with_peft and m == peft_row.METHOD:
                progress(f"building the peft model with N = {n} adapters")
                rows.append(peft_row.build_row(n, o, d, dev, TINY_SHAPES if o.tiny else SHAPES))
    sync = torch.cuda.synchronize if o.device == "cuda" else (lambda: None)
    hyps = {}
    for r in rows:  # warm-up: every kernel once, prefix caches filled; also the hypotheses checked below
        hyps[r.key] = r.run(o.batch)
    rounds = []
    for rnd in range(o.rounds):
        shift = rnd % len(rows)
        times = {}
        for r in rows[shift:] + rows[:shift]:
            best = float("inf")
            for _ in range(o.runs):  # on a shared machine the fastest of a few is the least disturbed
                sync()
                t = time.perf_counter()
                r.run(o.batch)
                sync()
                best = min(best, time.perf_counter() - t)
            times[r.key] = best
        progress(f"round {rnd + 1}/{o.rounds}: " + ", ".join(f"{'/'.join(map(str, k))} {v:.2f}s" for k, v in times.items()))
        rounds.append(times)
    return dict(rows=[r.key for r in rows], rounds=rounds, checks=check(rows, hyps, o.fp16))


def summarize(o, data: dict) -> List[dict]:
    """Per row: sentences/s and the ratio to mixed N=1 of the same method, median and spread over rounds."""
    table = []
    for key in data["rows"]:
        method, n, kind = key
        sps = [o.batch / t[key] for t in data["rounds"]]
        ratio = [(o.batch / t[key]) / (o.batch / t[(method, 1, "mixed")]) for t in data["rounds"]]
        s, q = spread(sps), spread(ratio)
        row = dict(method=method, n=n, row=kind, sent_per_s=s["median"], sent_per_s_range=s["range"],
                   ratio=q["median"], ratio_range=q["range"])
        target = TARGETS.get(method, {}).get(n) if kind == "mixed" else None
        if target is not None:
            row["target"] = target
            row["met"] = q["median"] >= target if o.rounds >= MIN_ROUNDS and not o.tiny else None
        table.append(row)
    return table


def markdown(table: List[dict]) -> str:
    lines = ["| method | N | row | sentences/s (min-max) | vs single-delta batch (min-max) | target |",
             "|---|---:|---|---:|---:|---|"]
    for r in table:
        t = ""
        if "target" in r:
            t = f">= {r['target']}: " + {True: "met", False: "MISSED", None: "not judged"}[r["met"]]
        lines.append(f"| {r['method']} | {r['n']} | {r['row']} | {r['sent_per_s']:.2f} "
                     f"({r['sent_per_s_range'][0]:.2f}-{r['sent_per_s_range'][1]:.2f}) | {r['ratio']:.3f} "
                     f"({r['ratio_range'][0]:.3f}-{r['ratio_range'][1]:.3f}) | {t} |")
    return "\n".join(lines)


def profile(o, spec: str) -> str:
    """torch.profiler's top operators (self CPU time) of the mixed decode at N and at N = 1."""
    import torch
    from torch.profiler import ProfilerActivity, profile as prof

    method, n = spec.split(":")
    torch.set_num_threads(o.threads)
    d = dummy_dictionary(TINY_VOCAB if o.tiny else VOCAB)
    out = []
    for k in sorted({1, int(n)}):
        row = rows_for(method, k, o, d, torch.device(o.device))[0]
        row.run(o.batch)
        with prof(activities=[ProfilerActivity.CPU]) as p:
            row.run(o.batch)
        out.append(f"### {method}, N = {k}, mixed\n\n```\n"
                   f"{p.key_averages().table(sort_by='self_cpu_time_total', row_limit=15)}\n```")
    return "\n\n".join(out)


def main(argv=None) -> int:
    o = parse(argv)
    if o.profile:
        print(profile(o, o.profile))
        return 0
    t = time.time()
    data = measure(o)
    table = summarize(o, data)
    bad = [c for c in data["checks"] if not c["ok"]]
    shapes = TINY_SHAPES if o.tiny else SHAPES
    head = (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.node()} "
            f"({os.cpu_count()} CPUs, {o.threads} threads, device {o.device}{' fp16' if o.fp16 else ''}); "
            f"model {' '.join(shapes)}, dictionary {TINY_VOCAB if o.tiny else VOCAB}; batch {o.batch}, "
            f"source {o.src_len} tokens, beam {o.beam}, {o.gen_len} tokens; {o.rounds} rounds x fastest of {o.runs}, "
            f"{time.time() - t:.0f} s")
    print(head + "\n\n" + markdown(table))
    print(f"\nchecks: {len(data['checks']) - len(bad)}/{len(data['checks'])} decodes equal their per-delta "
          f"reference (sequential; peft: each adapter alone)"
          + "".join(f"\n  FAILED {c['method']} N={c['n']} {c['row']}: {c['failures'][:2]}" for c in bad))
    if o.json:
        os.makedirs(os.path.dirname(os.path.abspath(o.json)), exist_ok=True)
        with open(o.json, "w") as f:
            json.dump(dict(header=head, argv=sys.argv[1:], table=table, checks=data["checks"],
                           rounds=[{"/".join(map(str, k)): v for k, v in r.items()} for r in data["rounds"]]),
                      f, indent=1)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
