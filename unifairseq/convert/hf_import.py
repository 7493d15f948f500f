"""Convert a local Hugging Face model folder into a fairseq checkpoint.

    unifairseq-import-hf SRC_DIR OUT_DIR [--force]      (or: python -m unifairseq.convert.hf_import ...)

SRC_DIR holds config.json, the weights (model.safetensors or pytorch_model.bin, sharded or not)
and the tokenizer files (tokenizer.json, or vocab.txt, or vocab.json + merges.txt). OUT_DIR gets

    model.pt   the official fairseq layout: {"args": the model args, "model": state_dict,
               "optimizer_history": [...], "extra_state": {}, "last_optimizer_state": None}, with
               only builtin values, OrderedDicts and tensors in it (unifairseq/fairseq/plain_args.py):
               plain fairseq under torch's weights-only load reads it with nothing allow-listed
    dict.txt   the fairseq dictionary (`token count` lines) for the HF vocabulary

Supported (config.json `model_type`):
    bert, roberta  ->  fairseq `roberta` (arch roberta_base, task masked_lm, sizes from config.json):
                       post-LN, layernorm_embedding, learned positions, no embedding scaling.
                       BERT's token-type-0 embedding is folded into the position table; fairseq's
                       positions start at padding_idx+1 = 2 (HF BERT: 0, HF RoBERTa: pad_token_id+1),
                       the table is shifted accordingly. Without an MLM head in SRC_DIR (e.g. BertModel)
                       fairseq's LM head is kept at fairseq's own initialisation, tied to the embeddings,
                       with zero bias (logged); the BERT pooler / NSP head are dropped (fairseq's
                       classification heads have their own dense+tanh).
    bart, mbart    ->  fairseq `bart` (arch bart_large / mbart_large, task denoising, sizes from
                       config.json; mBART: pre-LN with final encoder/decoder layer norms, embedding
                       scaling per `scale_embedding`). Shared embeddings, output projection tied unless
                       the HF lm_head differs. Positions: both use offset 2, copied as they are.

The vocabulary: fairseq's <s> <pad> </s> <unk> are the HF tokens in those roles (BERT: [CLS] [PAD]
[SEP] [UNK]), then all other HF ids in order; embedding rows (and the LM-head bias) are permuted
to match. See `unifairseq.convert.hf_tokenize` for the naming rules and for tokenizing data with it.

Load the result with fairseq:

    from fairseq import checkpoint_utils
    [model], args, task = checkpoint_utils.load_model_ensemble_and_task([f"{OUT_DIR}/model.pt"])
    # or: RobertaModel.from_pretrained(OUT_DIR, "model.pt", bpe=None) / BARTModel.from_pretrained(...)

Fine-tuning with `fairseq-train --restore-file OUT_DIR/model.pt` builds the model from the command
line, not from the saved args: give the `--arch` and the flags the importer logs ("fairseq-train
flags: ..."), e.g. for all-MiniLM-L6-v2 `--arch roberta_base --encoder-layers 6 --encoder-embed-dim
384 --encoder-ffn-embed-dim 1536 --encoder-attention-heads 12 --max-positions 512 --activation-fn gelu`.
The data dictionary must be OUT_DIR/dict.txt (`fairseq-preprocess --srcdict`, see hf_tokenize).

LayerNorm eps. fairseq's LayerNorm has eps=1e-5 fixed (no option, and changing it on the modules after
loading is nothing a fairseq user can do); RoBERTa, BART and mBART use 1e-5 already, BERT uses
1e-12. Measured on all-MiniLM-L6-v2, plain conversion differs from transformers by ~1e-3 (max |diff|
of the last hidden states), almost all of it from the embedding LayerNorm, whose input has a small
variance (~2e-3). That part is removed exactly: LayerNorm(c*x, eps) == LayerNorm(x, eps/c^2), so the
token and position tables are stored times c = 16 (a power of two: the scaling is exact in floating
point) and the embedding LayerNorm then acts as eps 1e-5/256 = 3.9e-8 with its output unchanged;
the LM head's LayerNorm is divided by 16 so the tied logits stay the same. The in-layer LayerNorms
(input variance ~0.5) cannot be treated that way without rescaling the whole residual stream (which
would distort adapters / LoRA trained on it); what they leave is measured on every import (the
converted model run on a probe batch with its LayerNorms at fairseq's eps and at the HF eps), logged,
and warned about above 1e-4: 7e-5 for all-MiniLM-L6-v2 (6e-5 against transformers in the tests).
`--no-eps-rescale` stores the embedding tables as they are in HF.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from dataclasses import dataclass
from typing import List, Optional, Sequence

from unifairseq.convert.hf_read import HFImportError, load_hf_state_dict, read_config, strip_prefix
from unifairseq.convert.hf_to_fairseq import FAIRSEQ_LN_EPS, FAMILIES, Plan, Tracker
from unifairseq import cli

logger = logging.getLogger("unifairseq.convert.hf_import")

EPS_EFFECT_WARN = 1e-4
PROBE_TEXTS = ("The quick brown fox jumps over the lazy dog.",
               "Parameter-efficient tuning adds a few weights to a frozen pretrained model.")


# ------------------------------------------------------------------ fairseq side
def build_args(plan: Plan, data_dir: str) -> argparse.Namespace:
    """fairseq's own training-argument parsing (as fairseq-train does), then the HF structure."""
    from fairseq import options

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [data_dir, "--task", plan.task, "--arch", plan.arch, *plan.flags])
    for k, v in plan.overrides.items():
        setattr(args, k, v)
    return args


def _probe_batch(tokenizer, vocab, n_rows: int, pad: int, max_len: int):
    import torch

    seqs = [vocab.map_ids(e.ids)[:max_len] for e in tokenizer.encode_batch(list(PROBE_TEXTS))]
    g = torch.Generator().manual_seed(0)
    seqs.append([0] + torch.randint(4, n_rows, (min(30, max_len - 2),), generator=g).tolist() + [2])
    T = max(len(s) for s in seqs)
    batch = torch.full((len(seqs), T), pad, dtype=torch.long)
    for b, s in enumerate(seqs):
        batch[b, :len(s)] = torch.tensor(s)
    return batch


def measure_eps_effect(model, batch, hf_eps: float, pad: int) -> float:
    """max |diff| of the last hidden states (non-pad positions) between the model as fairseq builds
    it (LayerNorm eps 1e-5) and the same model with its LayerNorms at the HF eps."""
    import torch

    lns = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    model.eval()
    with torch.no_grad():
        ref, _ = model(batch, features_only=True)
        saved = [m.eps for m in lns]
        try:
            for m in lns:
                m.eps = hf_eps
            hf_like, _ = model(batch, features_only=True)
        finally:
            for m, e in zip(lns, saved):
                m.eps = e
    keep = batch.ne(pad)
    return (ref - hf_like)[keep].abs().max().item()


@dataclass
class ImportResult:
    model_path: str
    dict_path: str
    arch: str
    notes: List[str]
    eps_effect: Optional[float]
    train_flags: List[str]  # fairseq-train flags that rebuild this model (with --restore-file model.pt)


def convert(src_dir: str, out_dir: str, force: bool = False, seed: int = 0, eps_rescale: bool = True) -> ImportResult:
    # torch, fairseq and transformers (the tokenizer) only when converting: the module's CLI parses without them
    import torch
    from fairseq import checkpoint_utils, tasks

    from unifairseq.convert.hf_tokenize import HFVocabError, build_vocab_map, load_tokenizer
    from unifairseq.fairseq.plain_args import primitive_args, unloadable_objects
    from unifairseq.tools.tiny_base import checkpoint_state

    cfg = read_config(src_dir)
    mt = cfg["model_type"]
    model_path = os.path.join(out_dir, "model.pt")
    dict_path = os.path.join(out_dir, "dict.txt")
    existing = [p for p in (model_path, dict_path) if os.path.exists(p)]
    if existing and not force:
        raise HFImportError(f"refusing to overwrite {' and '.join(existing)}; pass --force to replace")
    prefix, make_plan, fill, droppable = FAMILIES[mt]
    sd = strip_prefix(load_hf_state_dict(src_dir), prefix)
    try:
        plan = make_plan(cfg, sd, rescale=eps_rescale)
    except KeyError as e:
        raise HFImportError(f"{mt}: config.json / checkpoint lacks {e.args[0]!r}") from None
    n_hf_rows = sd[plan.embed_key].shape[0]
    try:
        tokenizer = load_tokenizer(src_dir)
        vocab = build_vocab_map(src_dir, num_rows=n_hf_rows, tokenizer=tokenizer)
    except HFVocabError as e:
        raise HFImportError(str(e)) from None

    with tempfile.TemporaryDirectory(prefix="hf_import_") as stage:
        with open(os.path.join(stage, "dict.txt"), "w", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in vocab.dict_lines()))
        args = build_args(plan, stage)
        task = tasks.setup_task(args)
        if len(task.source_dictionary) != len(vocab):
            raise HFImportError(f"fairseq's {plan.task} task made a dictionary of {len(task.source_dictionary)} "
                                f"symbols from {len(vocab)}; cannot align the embeddings")
        torch.manual_seed(seed)
        model = task.build_model(args)
    template = model.state_dict()
    hf = Tracker(sd)
    fs = fill(cfg, hf, vocab, template, plan)

    leftovers = [k for k in hf.unused() if not k.startswith(droppable)]
    if leftovers:
        raise HFImportError(f"{mt}: {len(leftovers)} checkpoint tensors have no place in fairseq's {plan.arch} "
                            f"(e.g. {', '.join(leftovers[:5])}): unsupported variant")
    dropped = [k for k in hf.unused() if not k.endswith(("position_ids", "token_type_ids"))]
    if dropped:
        plan.notes.append(f"dropped {len(dropped)} HF tensors without a fairseq counterpart: "
                          f"{', '.join(sorted(dropped)[:6])}{' ...' if len(dropped) > 6 else ''}")
    unknown = [k for k in fs if k not in template]
    if unknown:
        raise HFImportError(f"internal error: fairseq {plan.arch} has no {unknown[:5]}")
    for k, v in fs.items():
        if tuple(v.shape) != tuple(template[k].shape):
            raise HFImportError(f"{mt}: {k} has shape {tuple(v.shape)} in the checkpoint, fairseq expects "
                                f"{tuple(template[k].shape)} (config.json and weights disagree?)")
    missing = [k for k in template if k not in fs]
    kept = [k for k in missing if not k.endswith("version") and not k.startswith("encoder.lm_head.")]
    if kept:
        raise HFImportError(f"internal error: no HF tensor for fairseq's {kept[:5]}")
    full = dict(template)
    full.update({k: v.to(template[k].dtype) for k, v in fs.items()})
    model.load_state_dict(full, strict=True)

    eps_effect = None
    if abs(plan.ln_eps - FAIRSEQ_LN_EPS) > 1e-12 and mt in ("bert", "roberta"):
        pad = task.source_dictionary.pad()
        batch = _probe_batch(tokenizer, vocab, len(vocab), pad, args.max_positions)
        eps_effect = measure_eps_effect(model, batch, plan.ln_eps, pad)
        msg = (f"LayerNorm eps: HF {plan.ln_eps:g}, fairseq {FAIRSEQ_LN_EPS:g} (fixed in fairseq); measured effect "
               f"on the last hidden states of a probe batch: max |diff| {eps_effect:.2e}")
        if eps_effect > EPS_EFFECT_WARN:
            logger.warning(msg + f" > {EPS_EFFECT_WARN:g}: outputs will differ noticeably from the HF model")
        plan.notes.append(msg)

    args.data = os.path.abspath(out_dir)
    # nothing torch's weights-only load refuses without an allow-list: the args as merge writes them
    state = primitive_args(checkpoint_state(model, args))
    left = unloadable_objects(state)
    if left:
        raise HFImportError(f"internal error: {model_path} would hold objects that plain torch.load refuses "
                            f"({'; '.join(left[:3])}); not written")
    os.makedirs(out_dir, exist_ok=True)
    tmp = dict_path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in vocab.dict_lines()))
    os.replace(tmp, dict_path)
    checkpoint_utils.torch_persistent_save(state, model_path)
    if vocab.renamed:
        sample = ", ".join(f"{i}->{s}" for i, s in list(vocab.renamed.items())[:8])
        plan.notes.append(f"{len(vocab.renamed)} HF tokens renamed in dict.txt (HF id->symbol): {sample}")
    return ImportResult(model_path, dict_path, plan.arch, plan.notes, eps_effect,
                        ["--arch", plan.arch, *plan.model_flags])


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    ap = cli.parser("unifairseq-import-hf", __doc__)
    ap.add_argument("src_dir", metavar="SRC_DIR", help="local Hugging Face model folder")
    ap.add_argument("out_dir", metavar="OUT_DIR", help="folder for model.pt and dict.txt (created if missing)")
    ap.add_argument("--force", action="store_true", help="overwrite an existing OUT_DIR/model.pt and dict.txt")
    ap.add_argument("--seed", type=int, default=0, help="seed for parts fairseq initialises (an absent LM head)")
    ap.add_argument("--no-eps-rescale", action="store_true",
                    help="BERT (LayerNorm eps 1e-12): store the embedding tables unscaled (the embedding LayerNorm "
                         "then runs at fairseq's 1e-5: ~1e-3 max |diff| on all-MiniLM-L6-v2)")
    return ap.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    a = parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(levelname)s | %(name)s | %(message)s")
    try:
        res = convert(a.src_dir, a.out_dir, force=a.force, seed=a.seed, eps_rescale=not a.no_eps_rescale)
    except HFImportError as e:
        return cli.error("unifairseq-import-hf", e)
    for note in res.notes:
        logger.info(note)
    logger.info(f"wrote {res.model_path} (fairseq {res.arch}) and {res.dict_path}")
    logger.info(f"fairseq-train flags: {' '.join(res.train_flags)} --restore-file {res.model_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
