"""The peft row of ``unifairseq-bench-bank``: the same batch decoded by peft's mixed-adapter batches.

An HF ``BartForConditionalGeneration`` of the bench's shapes (random weights, seeded) carries N peft
LoRA adapters configured as the ``lora_attn`` preset (r = attn_bn, alpha = lora_alpha, on q_proj and
v_proj of every attention; dropout 0, as in eval), each moved off its init by std 0.02 noise as
``bank.build_bank`` moves our deltas. The whole batch, sentence i on adapter i mod N, is one
``generate(adapter_names=[...])`` call: beam ``--beam``, exactly ``--gen-len`` + 1 new tokens, greedy
beams (no sampling). That is the decoder steps of our rows: fairseq's SequenceGenerator takes
``--gen-len`` steps and one more, whose output it forces to </s>.

Check: every sentence's tokens equal those of the same sentence decoded with its adapter alone
(``set_adapter``, no ``adapter_names``; one generate() per adapter on that adapter's sentences).
peft returns no positional scores from a plain generate(), so the check is on tokens.

torch, transformers and peft are imported inside the functions: ``--help`` imports none of them.
"""
from __future__ import annotations

import importlib.util
import math
import warnings
from typing import Dict, List, Optional, Sequence

from .worker import make_batch

METHOD = "lora_attn"  # the only method with a peft counterpart here
TARGET_MODULES = ["q_proj", "v_proj"]  # core/methods/lora.py projection_specs: W_q and W_v of every attention
NOISE_STD = 0.02  # as bank.build_bank moves our deltas off their init


def available() -> bool:
    """peft and transformers importable (the [bench] extra)."""
    return all(importlib.util.find_spec(m) is not None for m in ("peft", "transformers"))


def hf_shapes(flags: Sequence[str]) -> dict:
    """BartConfig keyword arguments from the bench's fairseq shape flags (bank.SHAPES / TINY_SHAPES)."""
    f = dict(zip(flags[::2], flags[1::2]))
    if f["--encoder-embed-dim"] != f["--decoder-embed-dim"]:
        raise ValueError("HF BART has one d_model: the encoder and decoder dims must agree")
    return dict(encoder_layers=int(f["--encoder-layers"]), decoder_layers=int(f["--decoder-layers"]),
                d_model=int(f["--encoder-embed-dim"]), encoder_ffn_dim=int(f["--encoder-ffn-embed-dim"]),
                decoder_ffn_dim=int(f["--decoder-ffn-embed-dim"]),
                encoder_attention_heads=int(f["--encoder-attention-heads"]),
                decoder_attention_heads=int(f["--decoder-attention-heads"]))


def lora_config():
    """peft's LoraConfig of our lora_attn preset."""
    from peft import LoraConfig

    from ..core.presets import PRESETS  # imports the methods, hence torch: not at --help time

    p = PRESETS[METHOD]
    return LoraConfig(r=int(p["attn_bn"]), lora_alpha=float(p["lora_alpha"]), target_modules=list(TARGET_MODULES),
                      lora_dropout=0.0, bias="none", task_type="SEQ_2_SEQ_LM")


def build_model(n: int, flags: Sequence[str], d, seed: int = 0):
    """A random HF BART (seeded: the same base for every N) with adapters a0..a{n-1}, each off its init."""
    import torch
    import transformers
    from peft import get_peft_model

    special = dict(pad_token_id=d.pad(), bos_token_id=d.bos(), eos_token_id=d.eos())
    shapes = hf_shapes(flags)
    # init std 2/sqrt(d_model), not BART's 0.02: at 0.02 every sentence decodes one repeated token
    # whatever its source and adapter, and the check below could not tell the adapters apart
    cfg = transformers.BartConfig(vocab_size=len(d), max_position_embeddings=1024, dropout=0.0,
                                  attention_dropout=0.0, activation_dropout=0.0,
                                  init_std=2.0 / math.sqrt(shapes["d_model"]), **special, **shapes)
    torch.manual_seed(seed)
    hf = transformers.BartForConditionalGeneration(cfg).eval()
    # fairseq's BART starts decoding from </s>; nothing forced, no n-gram blocking: the search alone decides
    hf.generation_config = transformers.GenerationConfig(
        decoder_start_token_id=d.eos(), forced_bos_token_id=None, forced_eos_token_id=None,
        no_repeat_ngram_size=0, length_penalty=1.0, **special)
    names = [f"a{k}" for k in range(n)]
    with warnings.catch_warnings():  # transformers' deprecation of a name peft still calls; nothing to act on
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        model = get_peft_model(hf, lora_config(), adapter_name=names[0])
    for name in names[1:]:
        model.add_adapter(name, lora_config())
    torch.manual_seed(1 + n)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if ".lora_" in pname:
                p.add_(torch.randn_like(p) * NOISE_STD)
    return model.eval(), names


class PeftRow:
    """Decodes the bench's batch with peft: `run()` is the timed mixed call, `alone()` the reference."""

    def __init__(self, key, model, names: List[str], src, o, dev):
        import torch

        self.key, self.model, self.names, self.o = key, model, names, o
        self.src = src.to(dev)
        self.mask = torch.ones_like(self.src)  # no padding: make_batch's sentences are all --src-len long
        self.assign = [names[i % len(names)] for i in range(src.size(0))]  # sentence i -> adapter i mod N

    def _generate(self, rows: Optional[List[int]] = None, **extra) -> List[List[int]]:
        import torch

        src, mask = (self.src, self.mask) if rows is None else (self.src[rows], self.mask[rows])
        with torch.no_grad():
            out = self.model.generate(input_ids=src, attention_mask=mask, num_beams=self.o.beam,
                                      min_new_tokens=self.o.gen_len + 1, max_new_tokens=self.o.gen_len + 1,
                                      do_sample=False, **extra)
        return out[:, 1:].tolist()  # the decoder start token dropped

    def run(self, batch: int) -> List[dict]:
        """One generate() of the whole batch, each sentence on its adapter (peft's mixed-adapter batch)."""
        toks = self._generate(adapter_names=list(self.assign))
        if len(toks) != batch:
            raise RuntimeError(f"peft returned {len(toks)} hypotheses for a batch of {batch}")
        return [dict(tokens=t) for t in toks]

    def alone(self, assign: Optional[List[str]] = None) -> List[dict]:
        """Each adapter active alone (`set_adapter`), one generate() on the sentences `assign` gives it."""
        assign = self.assign if assign is None else assign
        out: List[Optional[dict]] = [None] * len(assign)
        for name in dict.fromkeys(assign):
            rows = [i for i, a in enumerate(assign) if a == name]
            self.model.set_adapter(name)
            for i, t in zip(rows, self._generate(rows)):
                out[i] = dict(tokens=t)
        return out


def compare_tokens(reference: List[dict], mixed: List[dict]) -> dict:
    """Token-equality of two decodes of the same sentences: ``ok`` and the evidence."""
    out = dict(ok=True, sentences=len(reference), same_tokens=0, failures=[])
    if len(reference) != len(mixed):
        out.update(ok=False, failures=[f"{len(reference)} reference, {len(mixed)} mixed sentences"])
        return out
    for i, (r, m) in enumerate(zip(reference, mixed)):
        if list(r["tokens"]) == list(m["tokens"]):
            out["same_tokens"] += 1
            continue
        first = next((j for j, (a, b) in enumerate(zip(r["tokens"], m["tokens"])) if a != b),
                     min(len(r["tokens"]), len(m["tokens"])))
        out["failures"].append(f"sentence {i}: the mixed-adapter hypothesis differs from the adapter alone "
                               f"from token {first} on")
    out["ok"] = not out["failures"]
    return out


def check(row: PeftRow, mixed: List[dict], assign: Optional[List[str]] = None) -> dict:
    """peft's mixed-adapter decode against each adapter alone (`assign`: which adapter decodes which
    sentence alone; default the row's own, sentence i on adapter i mod N)."""
    method, n, kind = row.key
    res = compare_tokens(row.alone(assign), mixed)
    return dict(method=method, n=n, row=kind, against="each adapter alone (set_adapter)", **res)


def build_row(n: int, o, d, dev, flags: Sequence[str]) -> PeftRow:
    """The peft row of a bank of n deltas: the bench's batch (worker.make_batch, the same seed)."""
    model, names = build_model(n, flags, d)
    model.to(dev)
    if o.fp16:
        model.half()
    src, _, _, _ = make_batch(d, o.batch, o.src_len, 2)
    return PeftRow((METHOD, n, "peft"), model, names, src, o, dev)


def checks(rows, hyps: Dict[tuple, list]) -> List[dict]:
    return [check(r, hyps[r.key]) for r in rows if isinstance(r, PeftRow)]
