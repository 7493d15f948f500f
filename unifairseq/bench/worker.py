"""One row of the bench, measured in its own process (``python -m unifairseq.bench --worker ROW``).

Builds the row's model as ``fairseq-train --arch`` would, times training steps, measures memory and
sizes, and times beam-search decoding (LoRA also merged, with the merged decode checked against the
unmerged one: ``mergecheck``). The package docstring says exactly what each number is.
"""
from __future__ import annotations

import argparse
import gc
import io
import logging
import os
import resource
import statistics
import time
from collections import OrderedDict
from typing import Dict, List

from ..tools.count import BART_VOCAB, build_translation_model, dummy_dictionary
from .common import TINY_DIMS, TINY_VOCAB, arch_for, progress
from .mergecheck import TOL, TOL_FP16, compare_decodes, forced_scores, top_hypotheses


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
    # torch, fairseq and the models only here, in the worker process: bench/cli.py imports this module
    # for its parser too, and `unifairseq-bench --help` loads neither
    import torch
    import torch.nn.functional as F
    from fairseq.sequence_generator import SequenceGenerator

    from ..core.modules import DeltaLinear
    from ..tools.export import fold_prefix_mlps

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
            return ts, top_hypotheses(out)

        loras = [mod for mod in model.modules() if isinstance(mod, DeltaLinear) and mod.delta is not None and not mod.merged]
        # a trained-like delta (training leaves LoRA's W_up within ~1e-3 of its zeros, (IA)³'s l near
        # ones), so that merging changes the weights and a wrong merge changes the scores: what the
        # merged-decode check compares. Every projection delta (LoRA, DoRA, (IA)³) is moved the same way.
        torch.manual_seed(1)
        with torch.no_grad():
            for mod in loras:
                for p in mod.delta.parameters():
                    p.add_(torch.randn_like(p) * 0.02)
        ts, hyps = decode("")
        res["decode_runs_s"], res["decode_s"] = ts, statistics.median(ts)
        if loras:
            for mod in loras:
                mod.merge()
            ts, merged_hyps = decode(" merged")
            res["decode_merged_runs_s"], res["decode_merged_s"] = ts, statistics.median(ts)
            res["merged_same_hypotheses"] = [h["tokens"] for h in merged_hyps] == [h["tokens"] for h in hyps]
            rescored = forced_scores(model, src[:n], src_len[:n], hyps, d.eos())
            res["merged_check"] = check = compare_decodes(hyps, merged_hyps, rescored, TOL_FP16 if fp16 else TOL)
            progress(f"  {m}: merged decode {'matches' if check['ok'] else 'DIFFERS FROM'} the unmerged one "
                     f"({check['same_tokens']}/{check['sentences']} same tokens, {check['tie_flips']} tie flips, "
                     f"max |score diff| {check['max_score_diff']:.2g}, rescored {check['max_rescore_diff']:.2g})")
    res["loadavg_end"] = os.getloadavg()
    return res
