"""``python -m unifairseq.bench``: the flags, the report and its exit status."""
from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import sys
import time

from .. import cli
from .common import BASELINES, DEFAULT_METHODS, EXTRA, MIN_ROUNDS_FOR_TARGETS, arch_for, malloc_env, progress
from .report import add_ratios, check_targets, compare, merged_checks, summarize, tables, targets_judged
from .rounds import THIS_CHECKOUT, checkout_root, run_rounds
from .worker import worker

PROG = "unifairseq-bench"


def parse(argv=None) -> argparse.Namespace:
    ap = cli.parser(PROG, importlib.import_module(__package__).__doc__)
    ap.add_argument("--size", choices=("base", "large"), default="base")
    cli.add_methods(ap, lambda: [*cli.preset_names(), *EXTRA], default=list(DEFAULT_METHODS),
                    what="presets to measure besides full/frozen ('none': only those)")
    ap.add_argument("--json", default="runs/bench.json", help="where to write the results")
    ap.add_argument("--rounds", type=int, default=3,
                    help=f"interleaved rounds, every row once per round (default 3; targets are judged with at "
                         f"least {MIN_ROUNDS_FOR_TARGETS}, except that --tiny judges none)")
    ap.add_argument("--compare-with", metavar="PATH",
                    help="a second checkout of this repository: every row also runs with its code, in the same "
                         "rounds, and a before (PATH) vs after (this checkout) table is added")
    ap.add_argument("--steps", type=int, default=5, help="timed training steps (median)")
    ap.add_argument("--warmup", type=int, default=3,
                    help="untimed training steps first (methods that allocate more settle later)")
    cli.add_renamed(ap, "--batch-size", ["--batch"], dest="batch", type=int, default=8, metavar="N",
                    help="sentences per training step")
    ap.add_argument("--src-len", type=int, default=128)
    ap.add_argument("--tgt-len", type=int, default=32)
    ap.add_argument("--beam", type=int, default=4)
    ap.add_argument("--gen-batch", type=int, default=8, help="sentences decoded")
    ap.add_argument("--gen-len", type=int, default=32, help="tokens decoded (min = max length)")
    ap.add_argument("--gen-runs", type=int, default=3, help="timed decoding runs (median); 0 skips decoding")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--fp16", action="store_true", help="fp16 model (with --device cuda)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads on CPU")
    ap.add_argument("--malloc", choices=("retain", "default"), default="retain",
                    help="CPU: glibc malloc settings of the worker processes (default retain: see RETAIN_MALLOC)")
    ap.add_argument("--optimizer", choices=("fused", "foreach", "loop"), default="fused",
                    help="torch Adam implementation (default fused; loop = torch's single-tensor Adam)")
    ap.add_argument("--tiny", action="store_true",
                    help="smoke-test shapes: 2 layers, dim 64, vocabulary 1000, batch 2 x 16 / 8 tokens, "
                         "decode 2 sentences x 8 tokens")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    o = ap.parse_args(argv)
    if o.rounds < 1:
        ap.error("--rounds must be at least 1")
    if o.tiny:
        for name, tiny_value, default in (("batch", 2, 8), ("src_len", 16, 128), ("tgt_len", 8, 32),
                                          ("gen_batch", 2, 8), ("gen_len", 8, 32), ("warmup", 1, 3)):
            if getattr(o, name) == default:
                setattr(o, name, tiny_value)
    return o


def worker_flags(o: argparse.Namespace) -> list:
    """The flags every worker gets (the same set as before the rounds existed, so that a --compare-with
    checkout of older code parses them too)."""
    return ["--size", o.size, "--steps", str(o.steps), "--warmup", str(o.warmup), "--batch-size", str(o.batch),
            "--src-len", str(o.src_len), "--tgt-len", str(o.tgt_len), "--beam", str(o.beam),
            "--gen-batch", str(o.gen_batch), "--gen-len", str(o.gen_len), "--gen-runs", str(o.gen_runs),
            "--device", o.device, "--threads", str(o.threads), "--optimizer", o.optimizer] + \
        (["--fp16"] if o.fp16 else []) + (["--tiny"] if o.tiny else [])


def main(argv=None) -> int:
    o = parse(argv)
    if o.worker:
        res = worker(o)
        with open(o.worker_out, "w") as f:
            json.dump(res, f)
        return 0

    before = None
    if o.compare_with:
        try:
            before = checkout_root(o.compare_with)
        except ValueError as e:
            return cli.error(PROG, f"--compare-with: {e}")
    import torch

    if o.device == "cuda" and not torch.cuda.is_available():
        return cli.error(PROG, "--device cuda: no GPU is available on this machine; run without --device cuda")
    if not o.tiny and o.rounds < MIN_ROUNDS_FOR_TARGETS:
        progress(f"--rounds {o.rounds}: the targets are reported but not judged (that needs {MIN_ROUNDS_FOR_TARGETS})")
    methods = [*BASELINES, *[m for m in o.methods if m not in BASELINES]]
    shape = "tiny (2 layers, dim 64)" if o.tiny else f"bart_{o.size}"
    report = dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        command=" ".join([PROG, *(sys.argv[1:] if argv is None else argv)]),
        machine=dict(platform=platform.platform(), processor=platform.processor() or platform.machine(),
                     cpus=os.cpu_count(), torch=torch.__version__, python=platform.python_version(),
                     gpu=torch.cuda.get_device_name(0) if o.device == "cuda" else None),
        config=dict(shape=shape, size=o.size, tiny=o.tiny, rounds=o.rounds, batch=o.batch, src_len=o.src_len,
                    tgt_len=o.tgt_len, steps=o.steps, warmup=o.warmup, beam=o.beam, gen_batch=o.gen_batch,
                    gen_len=o.gen_len, gen_runs=o.gen_runs, device=o.device, fp16=o.fp16, optimizer=o.optimizer,
                    malloc=(o.malloc, malloc_env(o)) if o.device == "cpu" else None,
                    threads=o.threads if o.device == "cpu" else None,
                    train_step=f"model forward + F.cross_entropy + backward + torch.optim.Adam({o.optimizer}).step "
                               "(no fairseq Trainer)",
                    frozen_floor="plain model, all weights frozen, token-embedding outputs require grad (hook)"),
        checkout=str(THIS_CHECKOUT), compare_with=str(before) if before else None,
        loadavg_before=os.getloadavg())
    progress(f"{len(methods)} rows x {o.rounds} rounds{' x 2 checkouts' if before else ''}: "
             f"{', '.join(f'{m} ({arch_for(m, o.size)})' for m in methods)}")
    t0 = time.perf_counter()
    rounds = run_rounds(o, methods, worker_flags(o), before)
    report["loadavg_after"] = os.getloadavg()
    report["total_s"] = time.perf_counter() - t0
    for rnd in rounds:
        for side in ("results", "before"):
            if side in rnd:
                add_ratios(rnd[side])
    report["results"] = summarize(rounds)  # medians over rounds; every round's raw numbers under "rounds"
    if before:
        report["before"] = summarize(rounds, "before")
        report["compare"] = compare(rounds)
    report["targets_judged"] = targets_judged(o)
    report["targets"] = check_targets(rounds, report["targets_judged"])
    report["merged_decode_check"] = merged_checks(rounds)
    report["rounds"] = rounds
    if o.json:
        os.makedirs(os.path.dirname(os.path.abspath(o.json)), exist_ok=True)
        with open(o.json, "w") as f:
            json.dump(report, f, indent=1)
    print()
    print(tables(report))
    if o.json:
        print(f"\nwrote {o.json}")
    failed = [f"{m}: {r['error']}" for rnd in rounds for side in ("results", "before")
              for m, r in rnd.get(side, {}).items() if "error" in r]
    for f in failed:
        cli.error(PROG, f"worker failed: {f}")
    if not report["merged_decode_check"]["ok"]:
        print(f"{PROG}: error: the merged LoRA decode differs from the unmerged one:\n  "
              + "\n  ".join(report["merged_decode_check"]["failures"]), file=sys.stderr)
    return 0 if not failed and report["merged_decode_check"]["ok"] else 1
