"""Speed, memory and size of every method against full fine-tuning and a frozen base.

    python -m unifairseq.bench                          # bart_base shapes, all presets, CPU (2 threads)
    python -m unifairseq.bench --size large --methods mam lora_attn
    python -m unifairseq.bench --device cuda --fp16     # on a machine with a GPU
    python -m unifairseq.bench --tiny --methods mam lora_attn --steps 2   # seconds; the smoke test
    python -m unifairseq.bench --malloc default --optimizer loop           # without the two CPU fixes

Prints markdown tables and writes JSON (``--json``, default ``runs/bench.json``). Each method is
measured in its own fresh subprocess (memory high-water mark and threads isolated), which builds the
model as ``fairseq-train`` would (fairseq's argument parsing and ``build_model``, see
``unifairseq.tools.count``) with a 50,264-symbol dictionary and random weights and token ids.

Rows
  full     plain fairseq ``bart_<size>``, every weight trainable (full fine-tuning)
  frozen   the frozen-base floor: plain ``bart_<size>``, every weight frozen, no delta. A forward
           hook on the token embedding module (shared by encoder and decoder in BART) calls
           ``requires_grad_()`` on its output, so the backward pass runs through the whole network
           and computes every activation gradient, but no weight gradient; there is no optimizer step.
  none     (diagnostic, not in the default list) the floor through unifairseq's layers instead of
           fairseq's: ``lora_attn_bart_<size>`` with LoRA merged (at initialisation W_up = 0, so the
           weights are the base's), everything frozen, the same hook.
  frozen_2d the same floor with the output projection applied to a 2-D view of the decoder features
           (forward hooks on ``output_projection``), as unifairseq's delta decoders do. torch's matmul
           computes fairseq's B x T x C features (a transpose) times a weight that does not require
           grad -- any frozen model's output projection -- as a bmm over B broadcast copies of the
           vocabulary matrix instead of one mm (measured here: 5.5x slower per decoding step). The
           targets compare against the faster of the two floors.
  <preset> ``<preset>_bart_<size>`` as ``fairseq-train --arch`` builds it (base frozen).

Training step: the model's forward on a batch of B x S source / B x T target tokens (training mode,
so dropout is on), cross entropy (fp32, sum over tokens, padding ignored) on the logits, ``backward``
and ``torch.optim.Adam.step`` over the trainable parameters -- the same computations fairseq's Trainer
and criterion run, called directly (no Trainer, no label smoothing, no gradient clipping). Adam is
torch's fused implementation by default (``--optimizer fused``, also what ``--optimizer torch_adam``
gives a fairseq-train run through unifairseq); ``--optimizer loop`` is torch's single-tensor Adam, which
like fairseq's own CPU Adam allocates full-size temporaries for every parameter on every step (on this
machine 0.21 s a step for MAM's 33.5M trained parameters, against 0.015 s fused). Reported:
median of ``--steps`` steps after ``--warmup`` steps. On CUDA with ``--fp16`` the model is cast to
fp16 and, as fairseq's FP16Optimizer does, Adam updates fp32 master copies of the trainable
parameters (static loss scale 128).

Memory: CPU: the resident-set high-water mark is reset (``/proc/self/clear_refs``) after the model
and optimizer are built, and ``ru_maxrss`` after training minus the RSS before training is the
training overhead (activations, gradients, optimizer state); the absolute peak is reported too.
CUDA: ``torch.cuda.max_memory_allocated`` minus the allocated memory before training.

Sizes: bytes of ``torch.save`` into memory of what resumes training (the model's ``state_dict()``
-- delta-only for delta models, with their base fingerprint -- plus the optimizer state) and of the
exported inference file (delta tensors with the prefix MLP folded into static vectors, no optimizer;
the full state dict for full fine-tuning).

Decoding: fairseq's ``SequenceGenerator`` (beam ``--beam``) on the first ``--gen-batch`` source
sentences, with ``min_len = max_len = --gen-len`` so that every model decodes exactly the same number
of steps whatever its (random) weights predict; median of ``--gen-runs`` runs. LoRA
is timed unmerged and merged (``DeltaLinear.merge()`` on every LoRA site; the merged hypotheses are
checked against the unmerged ones). Prefixes are served from the inference cache (``PrefixProvider``
runs its MLP once per set of weights). The base-model reference is the ``full`` row's decode (plain
fairseq ``bart_<size>``); the ``frozen`` row decodes the same model again, which shows the noise.
The warm-up is one short decode (4 tokens).
"""
from __future__ import annotations

import argparse
import datetime
import gc
import io
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from typing import Dict, List, Optional

BASELINES = ("full", "frozen", "frozen_2d")
EXTRA = ("none",)
DEFAULT_METHODS = ("mam", "prefix", "lora_attn", "lora_ffn", "pfeiffer", "houlsby", "pa_ffn", "scaled_pa",
                   "mhpa", "bitfit", "prompt")
# --tiny: 2 layers, dim 64 (positions stay at 1024 so that prompt tuning's 200 vectors fit)
TINY_DIMS = ["--encoder-layers", "2", "--decoder-layers", "2", "--encoder-embed-dim", "64",
             "--decoder-embed-dim", "64", "--encoder-ffn-embed-dim", "128", "--decoder-ffn-embed-dim", "128",
             "--encoder-attention-heads", "4", "--decoder-attention-heads", "4"]
TINY_VOCAB = 1000
# --malloc retain: glibc keeps freed memory mapped and reuses it (mmap only above 32 MiB, its maximum;
# no trimming) instead of returning it to the kernel and faulting it in again on the next step. Fresh
# pages cost ~2 us each on this project's VM (29 MB: 15 ms), and every step of a method that trains
# something allocates its gradients and the activations its weight gradients need anew; the frozen
# floor allocates neither. Any fairseq-train run on CPU can set the same variables.
RETAIN_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2 ** 20), "MALLOC_TRIM_THRESHOLD_": str(16 * 2 ** 30),
                 "MALLOC_TOP_PAD_": str(64 * 2 ** 20)}


def malloc_env(o: argparse.Namespace) -> Dict[str, str]:
    """The environment variables --malloc adds for the worker processes (CPU only)."""
    return RETAIN_MALLOC if o.malloc == "retain" and o.device == "cpu" else {}


TARGETS = {"mam_train_vs_frozen": 1.15, "mam_decode_vs_base": 1.15, "lora_merged_decode_vs_base": 1.02}


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ======================================================================= worker (one method)
def arch_for(method: str, size: str) -> str:
    if method in BASELINES:
        return f"bart_{size}"
    if method == "none":
        return f"lora_attn_bart_{size}"  # merged and frozen: unifairseq's attention, no delta computation
    return f"{method}_bart_{size}"


def rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def reset_peak_rss() -> bool:
    """Reset the RSS high-water mark that ru_maxrss reports (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def serialized_bytes(obj) -> int:
    buf = io.BytesIO()
    import torch

    torch.save(obj, buf)
    return buf.tell()


def make_batch(d, bsz: int, src_len: int, tgt_len: int, seed: int = 0):
    """Random ids (no padding): source ends with </s>, target teacher-forced as fairseq's collater does."""
    import torch

    g = torch.Generator().manual_seed(seed)
    src = torch.randint(d.nspecial, len(d), (bsz, src_len), generator=g)
    src[:, -1] = d.eos()
    tgt = torch.randint(d.nspecial, len(d), (bsz, tgt_len), generator=g)
    tgt[:, -1] = d.eos()
    prev = torch.cat([torch.full((bsz, 1), d.eos()), tgt[:, :-1]], dim=1)
    return src, torch.full((bsz,), src_len, dtype=torch.long), prev, tgt


def make_adam(params, kind: str):
    """torch's Adam: fused (one kernel over all tensors), foreach (batched ops) or loop (per tensor)."""
    import torch

    if kind == "fused":
        return torch.optim.Adam(params, lr=1e-4, fused=True)
    return torch.optim.Adam(params, lr=1e-4, foreach=kind == "foreach")


def worker(o: argparse.Namespace) -> dict:
    import torch
    import torch.nn.functional as F
    from fairseq.sequence_generator import SequenceGenerator

    from unifairseq.tools.count import BART_VOCAB, build_translation_model, dummy_dictionary
    from unifairseq.core.modules import DeltaLinear
    from unifairseq.tools.export import fold_prefix_mlps

    logging.getLogger("unifairseq").setLevel(logging.WARNING)
    logging.getLogger("fairseq").setLevel(logging.WARNING)
    m = o.worker
    cuda = o.device == "cuda"
    dev = torch.device(o.device)
    if not cuda:
        torch.set_num_threads(o.threads)
    torch.manual_seed(0)
    res: Dict[str, object] = dict(method=m, arch=arch_for(m, o.size), loadavg_start=os.getloadavg(),
                                  threads=torch.get_num_threads())

    t0 = time.perf_counter()
    flags = TINY_DIMS if o.tiny else []
    d = dummy_dictionary(TINY_VOCAB if o.tiny else BART_VOCAB)
    model, task, _ = build_translation_model(res["arch"], flags, d)
    if m == "full":
        for p in model.parameters():
            p.requires_grad_(True)
    elif m in ("frozen", "none", "frozen_2d"):
        if m == "none":
            for mod in model.modules():
                if isinstance(mod, DeltaLinear) and mod.delta is not None:
                    mod.merge()
        for p in model.parameters():
            p.requires_grad_(False)

        def needs_grad(module, inputs, output):  # activations get gradients, weights none
            return output.requires_grad_() if torch.is_grad_enabled() else output

        for emb in {id(e): e for e in (model.encoder.embed_tokens, model.decoder.embed_tokens)}.values():
            emb.register_forward_hook(needs_grad)
        if m == "frozen_2d":
            lead = []

            def to_2d(module, inputs):
                lead[:] = inputs[0].shape[:-1]
                return (inputs[0].reshape(-1, inputs[0].size(-1)),)

            def from_2d(module, inputs, output):
                return output.view(*lead, output.size(-1))

            model.decoder.output_projection.register_forward_pre_hook(to_2d)
            model.decoder.output_projection.register_forward_hook(from_2d)
    trainable = [p for p in model.parameters() if p.requires_grad]
    res["trainable"] = sum(p.numel() for p in trainable)
    res["total_params"] = sum(p.numel() for p in model.parameters())
    res["build_s"] = time.perf_counter() - t0
    progress(f"  {m}: built {res['arch']} in {res['build_s']:.1f} s, {res['trainable']:,} trainable of "
             f"{res['total_params']:,}")

    fp16 = o.fp16
    model.to(dev)
    if fp16:
        model.half()
    masters = [p.detach().float().clone().requires_grad_() for p in trainable] if fp16 else trainable
    opt = make_adam(masters, o.optimizer) if masters else None
    loss_scale = 128.0 if fp16 else 1.0

    src, src_len, prev, tgt = (t.to(dev) for t in make_batch(d, o.batch, o.src_len, o.tgt_len))

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def step():
        logits = model(src, src_len, prev)[0]
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), tgt.view(-1),
                               ignore_index=d.pad(), reduction="sum")
        (loss * loss_scale).backward()
        if opt is not None:
            if fp16:
                for p, mp in zip(trainable, masters):
                    mp.grad = p.grad.float().div_(loss_scale) if p.grad is not None else None
                    p.grad = None
            opt.step()
            opt.zero_grad(set_to_none=True)
            if fp16:
                with torch.no_grad():
                    for p, mp in zip(trainable, masters):
                        p.copy_(mp)
        return loss.item()

    # ------------------------------------------------------------- training
    model.train()
    gc.collect()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        mem0 = torch.cuda.memory_allocated()
    else:
        res["hwm_reset"] = reset_peak_rss()
        mem0 = rss_kb() * 1024
        maxrss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    times: List[float] = []
    cpu_times: List[float] = []  # process CPU seconds (all threads): less sensitive to other jobs than wall time
    for i in range(o.warmup + o.steps):
        sync()
        t, c = time.perf_counter(), time.process_time()
        loss = step()
        sync()
        dt = time.perf_counter() - t
        if i >= o.warmup:
            times.append(dt)
            cpu_times.append(time.process_time() - c)
        progress(f"  {m}: train step {i + 1}/{o.warmup + o.steps}{' (warm-up)' if i < o.warmup else ''} "
                 f"{dt:.3f} s  loss {loss:.1f}")
    res["train_steps_s"] = times
    res["train_step_s"] = statistics.median(times)
    res["train_step_cpu_s"] = statistics.median(cpu_times)
    if cuda:
        res["train_mem_bytes"] = torch.cuda.max_memory_allocated() - mem0
        res["peak_mem_bytes"] = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        # without the reset, the high-water mark may still be the model build's: the delta is a lower bound
        res["train_mem_bytes"] = peak - (mem0 if res["hwm_reset"] else maxrss0)
        res["peak_mem_bytes"] = peak

    # ---------------------------------------------------------------- sizes
    if res["trainable"] > 0:  # the frozen rows train nothing and save nothing
        model_sd = model.state_dict()  # delta models: only the trained tensors + base fingerprint
        res["resume_bytes"] = serialized_bytes({"model": model_sd, "optimizer": opt.state_dict() if opt else None})
        if m != "full":
            model_sd = OrderedDict(model_sd)
            fold_prefix_mlps(model_sd)  # what `unifairseq-export inference` stores
        res["inference_bytes"] = serialized_bytes({"model": model_sd})
        del model_sd
    for p in model.parameters():
        p.grad = None
    del opt, masters
    gc.collect()

    # ------------------------------------------------------------- decoding
    if o.gen_runs > 0:
        model.eval()
        gen = SequenceGenerator([model], task.target_dictionary, beam_size=o.beam, max_len_a=0,
                                max_len_b=o.gen_len, min_len=o.gen_len)
        n = min(o.gen_batch, o.batch)
        sample = {"net_input": {"src_tokens": src[:n], "src_lengths": src_len[:n]}}

        short = min(4, o.gen_len)  # the warm-up: a short decode runs every kernel (and fills the prefix cache)
        warm = SequenceGenerator([model], task.target_dictionary, beam_size=o.beam, max_len_a=0,
                                 max_len_b=short, min_len=short)

        def decode(label: str):
            out, ts = None, []
            for i in range(1 + o.gen_runs):
                sync()
                t = time.perf_counter()
                with torch.no_grad():
                    out = (warm if i == 0 else gen).generate([model], sample)
                sync()
                dt = time.perf_counter() - t
                if i > 0:
                    ts.append(dt)
                progress(f"  {m}: decode{label} {i}/{o.gen_runs} {dt:.3f} s" if i else
                         f"  {m}: decode{label} warm-up ({short} tokens) {dt:.3f} s")
            lengths = {len(h["tokens"]) for hyps in out for h in hyps}
            assert lengths == {o.gen_len + 1}, f"decoded lengths {lengths}, expected {o.gen_len + 1}"
            return ts, [h[0]["tokens"].tolist() for h in out]

        ts, hyps = decode("")
        res["decode_runs_s"], res["decode_s"] = ts, statistics.median(ts)
        loras = [mod for mod in model.modules() if isinstance(mod, DeltaLinear) and mod.delta is not None and not mod.merged]
        if loras:
            for mod in loras:
                mod.merge()
            ts, merged_hyps = decode(" merged")
            res["decode_merged_runs_s"], res["decode_merged_s"] = ts, statistics.median(ts)
            res["merged_same_hypotheses"] = merged_hyps == hyps
    res["loadavg_end"] = os.getloadavg()
    return res


# ======================================================================= driver
def run_worker(method: str, o: argparse.Namespace, common: List[str]) -> dict:
    with tempfile.NamedTemporaryFile("r", suffix=".json", delete=False) as f:
        out = f.name
    try:
        cmd = [sys.executable, "-m", "unifairseq.bench", "--worker", method, "--worker-out", out, *common]
        t = time.perf_counter()
        env = dict(os.environ, **malloc_env(o))
        rc = subprocess.run(cmd, env=env).returncode
        if rc != 0:
            progress(f"  {method}: FAILED (exit status {rc})")
            return dict(method=method, error=f"worker exit status {rc}")
        with open(out) as f:
            res = json.load(f)
        res["wall_s"] = time.perf_counter() - t
        return res
    finally:
        os.remove(out)


def add_ratios(results: Dict[str, dict]) -> None:
    full = results.get("full", {}).get("train_step_s")
    floors = [results.get(k, {}).get("train_step_s") for k in ("frozen", "frozen_2d")]
    floors = [f for f in floors if f]
    frozen = min(floors) if floors else None  # the faster floor: the stricter target
    base_dec = results.get("full", {}).get("decode_s")
    for r in results.values():
        if "train_step_s" in r:
            r["train_vs_full"] = r["train_step_s"] / full if full else None
            r["train_vs_frozen"] = r["train_step_s"] / frozen if frozen else None
        if "decode_s" in r and base_dec:
            r["decode_vs_base"] = r["decode_s"] / base_dec
        if "decode_merged_s" in r and base_dec:
            r["decode_merged_vs_base"] = r["decode_merged_s"] / base_dec


def check_targets(results: Dict[str, dict]) -> Dict[str, dict]:
    out = {}

    def put(name, value):
        if value is not None:
            out[name] = dict(value=value, target=TARGETS[name], met=value <= TARGETS[name])

    put("mam_train_vs_frozen", results.get("mam", {}).get("train_vs_frozen"))
    put("mam_decode_vs_base", results.get("mam", {}).get("decode_vs_base"))
    merged = [r["decode_merged_vs_base"] for k, r in results.items() if "decode_merged_vs_base" in r]
    if merged:
        put("lora_merged_decode_vs_base", max(merged))
    return out


def _f(x, fmt="{:.3f}") -> str:
    return "–" if x is None else fmt.format(x)


def _mb(x) -> str:
    return "–" if x is None else f"{x / 2 ** 20:,.1f}"


def tables(report: dict) -> str:
    results, c = report["results"], report["config"]
    mem = "GPU memory (max allocated)" if c["device"] == "cuda" else "RSS (ru_maxrss)"
    lines = [f"Training step ({c['shape']}, batch {c['batch']} x {c['src_len']} source / {c['tgt_len']} target "
             f"tokens, {c['device']}{' fp16' if c['fp16'] else ''}, Adam {c.get('optimizer', 'loop')}, "
             f"{'malloc ' + c['malloc'][0] + ', ' if c.get('malloc') else ''}median of {c['steps']} after {c['warmup']} "
             f"warm-up; memory = {mem})", "",
             "| method | trainable | step (s) | vs full | vs frozen floor | train memory (MB) | peak (MB) | "
             "resume ckpt (MB) | inference file (MB) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for m, r in results.items():
        if "error" in r:
            lines.append(f"| {m} | failed: {r['error']} |||||||")
            continue
        lines.append(f"| {m} | {r['trainable']:,} | {_f(r['train_step_s'])} | {_f(r.get('train_vs_full'), '{:.2f}x')} | "
                     f"{_f(r.get('train_vs_frozen'), '{:.2f}x')} | {_mb(r['train_mem_bytes'])} | "
                     f"{_mb(r['peak_mem_bytes'])} | {_mb(r.get('resume_bytes'))} | {_mb(r.get('inference_bytes'))} |")
    if any("decode_s" in r for r in results.values()):
        lines += ["", f"Decoding (SequenceGenerator, {c['gen_batch']} sentences x {c['src_len']} source tokens, "
                      f"beam {c['beam']}, exactly {c['gen_len']} tokens + </s>, median of {c['gen_runs']} after a "
                      "short warm-up decode; base = the `full` row's plain model)", "",
                  "| method | decode (s) | vs base | LoRA merged (s) | merged vs base |",
                  "|---|---:|---:|---:|---:|"]
        for m, r in results.items():
            if "decode_s" in r:
                lines.append(f"| {m} | {_f(r['decode_s'])} | {_f(r.get('decode_vs_base'), '{:.2f}x')} | "
                             f"{_f(r.get('decode_merged_s'))} | {_f(r.get('decode_merged_vs_base'), '{:.2f}x')} |")
    if report.get("targets"):
        lines += ["", "| target | measured | limit | met |", "|---|---:|---:|---|"]
        for k, t in report["targets"].items():
            lines.append(f"| {k} | {t['value']:.3f}x | {t['target']:.2f}x | {'yes' if t['met'] else 'NO'} |")
    la, lb = report["loadavg_before"], report["loadavg_after"]
    lines += ["", f"load average (1/5/15 min) before {la[0]:.2f}/{la[1]:.2f}/{la[2]:.2f}, "
                  f"after {lb[0]:.2f}/{lb[1]:.2f}/{lb[2]:.2f}; {report['machine']['cpus']} CPUs"]
    return "\n".join(lines)


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=("base", "large"), default="base")
    ap.add_argument("--methods", nargs="*", default=list(DEFAULT_METHODS),
                    help=f"presets to measure besides full/frozen (default: {' '.join(DEFAULT_METHODS)}; "
                         "also: none, any other preset)")
    ap.add_argument("--json", default="runs/bench.json", help="where to write the results")
    ap.add_argument("--steps", type=int, default=5, help="timed training steps (median)")
    ap.add_argument("--warmup", type=int, default=3,
                    help="untimed training steps first (methods that allocate more settle later)")
    ap.add_argument("--batch", type=int, default=8)
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
    if o.tiny:
        for name, tiny_value, default in (("batch", 2, 8), ("src_len", 16, 128), ("tgt_len", 8, 32),
                                          ("gen_batch", 2, 8), ("gen_len", 8, 32), ("warmup", 1, 3)):
            if getattr(o, name) == default:
                setattr(o, name, tiny_value)
    return o


def main(argv=None) -> int:
    o = parse(argv)
    if o.worker:
        res = worker(o)
        with open(o.worker_out, "w") as f:
            json.dump(res, f)
        return 0

    from unifairseq.core.presets import PRESETS

    for m in o.methods:
        if m not in PRESETS and m not in EXTRA:
            print(f"unknown method {m!r}; choose from {', '.join(list(PRESETS) + list(EXTRA))}", file=sys.stderr)
            return 2
    if o.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("--device cuda: no GPU is available on this machine", file=sys.stderr)
            return 2
    methods = [*BASELINES, *[m for m in o.methods if m not in BASELINES]]
    common = ["--size", o.size, "--steps", str(o.steps), "--warmup", str(o.warmup), "--batch", str(o.batch),
              "--src-len", str(o.src_len), "--tgt-len", str(o.tgt_len), "--beam", str(o.beam),
              "--gen-batch", str(o.gen_batch), "--gen-len", str(o.gen_len), "--gen-runs", str(o.gen_runs),
              "--device", o.device, "--threads", str(o.threads), "--optimizer", o.optimizer] + (["--fp16"] if o.fp16 else []) + \
             (["--tiny"] if o.tiny else [])
    import torch

    shape = "tiny (2 layers, dim 64)" if o.tiny else f"bart_{o.size}"
    report = dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        machine=dict(platform=platform.platform(), processor=platform.processor() or platform.machine(),
                     cpus=os.cpu_count(), torch=torch.__version__, python=platform.python_version(),
                     gpu=torch.cuda.get_device_name(0) if o.device == "cuda" else None),
        config=dict(shape=shape, size=o.size, tiny=o.tiny, batch=o.batch, src_len=o.src_len, tgt_len=o.tgt_len,
                    steps=o.steps, warmup=o.warmup, beam=o.beam, gen_batch=o.gen_batch, gen_len=o.gen_len,
                    gen_runs=o.gen_runs, device=o.device, fp16=o.fp16, optimizer=o.optimizer,
                    malloc=(o.malloc, malloc_env(o)) if o.device == "cpu" else None,
                    threads=o.threads if o.device == "cpu" else None,
                    train_step=f"model forward + F.cross_entropy + backward + torch.optim.Adam({o.optimizer}).step "
                               "(no fairseq Trainer)",
                    frozen_floor="plain model, all weights frozen, token-embedding outputs require grad (hook)"),
        loadavg_before=os.getloadavg(), results={})
    t0 = time.perf_counter()
    for i, m in enumerate(methods):
        progress(f"[{i + 1}/{len(methods)}] {m} ({arch_for(m, o.size)}), load average {os.getloadavg()[0]:.2f}")
        report["results"][m] = run_worker(m, o, common)
    report["loadavg_after"] = os.getloadavg()
    report["total_s"] = time.perf_counter() - t0
    add_ratios(report["results"])
    report["targets"] = check_targets(report["results"]) if not o.tiny else {}
    if o.json:
        os.makedirs(os.path.dirname(os.path.abspath(o.json)), exist_ok=True)
        with open(o.json, "w") as f:
            json.dump(report, f, indent=1)
    print()
    print(tables(report))
    if o.json:
        print(f"\nwrote {o.json}")
    return 0 if all("error" not in r for r in report["results"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
