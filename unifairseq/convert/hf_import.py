"""Convert a local Hugging Face model folder into a fairseq checkpoint.

    unifairseq-import-hf SRC_DIR OUT_DIR [--force]      (or: python -m unifairseq.convert.hf_import ...)

SRC_DIR holds config.json, the weights (model.safetensors or pytorch_model.bin, sharded or not)
and the tokenizer files (tokenizer.json, or vocab.txt, or vocab.json + merges.txt). OUT_DIR gets

    model.pt   the official fairseq layout: {"args": argparse.Namespace, "model": state_dict,
               "optimizer_history": [...], "extra_state": {}, "last_optimizer_state": None}
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
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

logger = logging.getLogger("unifairseq.convert.hf_import")

SUPPORTED_MODEL_TYPES = ("bert", "roberta", "bart", "mbart")
FAIRSEQ_LN_EPS = 1e-5
EPS_EFFECT_WARN = 1e-4
EMBED_RESCALE = 16.0  # power of two: embedding LayerNorm at eps 1e-5/256 (see the module docstring)
# HF activation names -> fairseq's (fairseq's gelu_accurate is the tanh approximation)
ACTIVATIONS = {"gelu": "gelu", "relu": "relu", "gelu_new": "gelu_accurate", "gelu_fast": "gelu_accurate",
               "gelu_pytorch_tanh": "gelu_accurate", "tanh": "tanh", "linear": "linear"}
PROBE_TEXTS = ("The quick brown fox jumps over the lazy dog.",
               "Parameter-efficient tuning adds a few weights to a frozen pretrained model.")


class HFImportError(RuntimeError):
    """A user error, reported as one line without a traceback."""


# ------------------------------------------------------------------ reading the HF folder
def read_config(src_dir: str) -> dict:
    import json

    if not os.path.isdir(src_dir):
        raise HFImportError(f"SRC_DIR {src_dir!r} is not a directory")
    path = os.path.join(src_dir, "config.json")
    if not os.path.isfile(path):
        raise HFImportError(f"no config.json in {src_dir!r}: expected a Hugging Face model folder "
                            "(config.json, model.safetensors or pytorch_model.bin, tokenizer files)")
    with open(path, encoding="utf-8") as f:
        try:
            cfg = json.load(f)
        except json.JSONDecodeError as e:
            raise HFImportError(f"{path} is not valid JSON: {e}") from None
    model_type = cfg.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        what = f"model_type {model_type!r}" if model_type else "no model_type"
        raise HFImportError(f"{path} has {what}; supported model types: {', '.join(SUPPORTED_MODEL_TYPES)}")
    return cfg


def load_hf_state_dict(src_dir: str) -> dict:
    """model.safetensors / pytorch_model.bin, or their sharded *.index.json form; floats as float32."""
    import json

    import torch

    def load_one(path):
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path)
        return torch.load(path, map_location="cpu", weights_only=True)

    files = None
    for name in ("model.safetensors", "pytorch_model.bin"):
        if os.path.isfile(os.path.join(src_dir, name)):
            files = [os.path.join(src_dir, name)]
            break
        index = os.path.join(src_dir, name + ".index.json")
        if os.path.isfile(index):
            with open(index, encoding="utf-8") as f:
                files = [os.path.join(src_dir, s) for s in sorted(set(json.load(f)["weight_map"].values()))]
            break
    if files is None:
        raise HFImportError(f"no weights in {src_dir!r}: expected model.safetensors or pytorch_model.bin "
                            "(or a sharded *.index.json)")
    sd = {}
    for path in files:
        sd.update(load_one(path))
    return {k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()}


def strip_prefix(sd: dict, prefix: str) -> dict:
    """`bert.embeddings...` -> `embeddings...` when the whole backbone sits under `prefix`;
    old TF-era LayerNorm names gamma/beta -> weight/bias."""
    out = {}
    for k, v in sd.items():
        if k.startswith(prefix):
            k = k[len(prefix):]
        if k.endswith(".gamma"):
            k = k[:-len("gamma")] + "weight"
        elif k.endswith(".beta"):
            k = k[:-len("beta")] + "bias"
        out[k] = v
    return out


def activation(name, model_type: str) -> str:
    if name not in ACTIVATIONS:
        raise HFImportError(f"{model_type}: activation {name!r} has no fairseq equivalent "
                            f"(supported: {', '.join(ACTIVATIONS)})")
    return ACTIVATIONS[name]


# ------------------------------------------------------------------ conversion plans
@dataclass
class Plan:
    """What to build in fairseq and how to fill it."""

    arch: str
    task: str
    flags: List[str]
    overrides: Dict[str, object]
    embed_key: str                      # HF key of the token embeddings (rows = HF vocabulary)
    model_flags: List[str]              # what `fairseq-train --arch ARCH` needs to rebuild this model
    ln_eps: float = FAIRSEQ_LN_EPS
    embed_rescale: float = 1.0          # token + position tables stored times this (see roberta_state)
    notes: List[str] = field(default_factory=list)


class Tracker:
    """HF tensors by name; remembers which were used so that leftovers can be reported."""

    def __init__(self, sd: dict):
        self.sd = sd
        self.used = set()

    def __contains__(self, k):
        return k in self.sd

    def get(self, k, default=None):
        if k in self.sd:
            self.used.add(k)
            return self.sd[k]
        return default

    def take(self, k):
        if k not in self.sd:
            raise HFImportError(f"the checkpoint has no tensor {k!r}: unsupported variant of this model type")
        self.used.add(k)
        return self.sd[k]

    def unused(self) -> List[str]:
        return [k for k in self.sd if k not in self.used]


def _same(a, b) -> bool:
    import torch

    return a.shape == b.shape and torch.equal(a, b)


def roberta_plan(cfg: dict, sd: dict, rescale: bool = True) -> Plan:
    mt = cfg["model_type"]
    if cfg.get("position_embedding_type", "absolute") != "absolute":
        raise HFImportError(f"{mt}: position_embedding_type {cfg['position_embedding_type']!r} is not supported "
                            "(fairseq RoBERTa has absolute learned positions only)")
    if cfg.get("is_decoder") or cfg.get("add_cross_attention"):
        raise HFImportError(f"{mt}: decoder / cross-attention configurations are not supported")
    d, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    n_pos = cfg.get("max_position_embeddings", sd["embeddings.position_embeddings.weight"].shape[0])
    offset = 0 if mt == "bert" else int(cfg.get("pad_token_id", 1)) + 1  # HF index of the first position
    max_positions = n_pos - offset
    if max_positions <= 0:
        raise HFImportError(f"{mt}: max_position_embeddings {n_pos} leaves no positions after the offset {offset}")
    untie = False
    emb = sd["embeddings.word_embeddings.weight"]
    for k in ("cls.predictions.decoder.weight", "lm_head.decoder.weight"):
        if k in sd and not _same(sd[k], emb):
            untie = True
    act = activation(cfg.get("hidden_act", "gelu"), mt)
    flags = ["--encoder-layers", str(cfg["num_hidden_layers"]), "--encoder-embed-dim", str(d),
             "--encoder-ffn-embed-dim", str(cfg["intermediate_size"]), "--encoder-attention-heads", str(heads),
             "--max-positions", str(max_positions), "--tokens-per-sample", str(max_positions),
             "--activation-fn", act,
             "--dropout", str(cfg.get("hidden_dropout_prob", 0.1)),
             "--attention-dropout", str(cfg.get("attention_probs_dropout_prob", 0.1)),
             "--activation-dropout", "0.0"]
    ln_eps = float(cfg.get("layer_norm_eps", 1e-12))
    overrides = dict(encoder_normalize_before=False, layernorm_embedding=True, no_scale_embedding=True,
                     encoder_learned_pos=True, untie_weights_roberta=untie)
    model_flags = flags[:flags.index("--tokens-per-sample")] + ["--activation-fn", act]
    if untie:
        model_flags.append("--untie-weights-roberta")
    return Plan("roberta_base", "masked_lm", flags, overrides, "embeddings.word_embeddings.weight", model_flags,
                ln_eps=ln_eps, embed_rescale=EMBED_RESCALE if rescale and ln_eps < FAIRSEQ_LN_EPS else 1.0)


def bart_plan(cfg: dict, sd: dict, rescale: bool = True) -> Plan:
    mt = cfg["model_type"]
    shared = sd.get("shared.weight", sd.get("encoder.embed_tokens.weight"))
    if shared is None:
        raise HFImportError(f"{mt}: no shared.weight / encoder.embed_tokens.weight in the checkpoint")
    tied = "lm_head.weight" not in sd or _same(sd["lm_head.weight"], shared)
    d = cfg["d_model"]
    n_pos = cfg.get("max_position_embeddings", 1024)
    flags = ["--encoder-layers", str(cfg["encoder_layers"]), "--decoder-layers", str(cfg["decoder_layers"]),
             "--encoder-embed-dim", str(d), "--decoder-embed-dim", str(d),
             "--encoder-ffn-embed-dim", str(cfg["encoder_ffn_dim"]),
             "--decoder-ffn-embed-dim", str(cfg["decoder_ffn_dim"]),
             "--encoder-attention-heads", str(cfg["encoder_attention_heads"]),
             "--decoder-attention-heads", str(cfg["decoder_attention_heads"]),
             "--max-source-positions", str(n_pos), "--max-target-positions", str(n_pos),
             "--tokens-per-sample", str(n_pos),
             "--activation-fn", activation(cfg.get("activation_function", "gelu"), mt),
             "--dropout", str(cfg.get("dropout", 0.1)),
             "--attention-dropout", str(cfg.get("attention_dropout", 0.0)),
             "--activation-dropout", str(cfg.get("activation_dropout", 0.0))]
    pre_ln = mt == "mbart"
    scale = bool(cfg.get("scale_embedding", False))
    overrides = dict(encoder_normalize_before=pre_ln, decoder_normalize_before=pre_ln, layernorm_embedding=True,
                     no_scale_embedding=not scale, encoder_learned_pos=True,
                     decoder_learned_pos=True, share_all_embeddings=True, share_decoder_input_output_embed=tied)
    embed_key = "shared.weight" if "shared.weight" in sd else "encoder.embed_tokens.weight"
    # the arch whose defaults give the embedding scaling (mbart_large = bart_large with sqrt(d) scaling), so
    # that `fairseq-train --arch ARCH` + the printed flags rebuilds the same model
    arch = "mbart_large" if scale else "bart_large"
    model_flags = flags[:flags.index("--tokens-per-sample")] + flags[flags.index("--activation-fn"):][:2]
    if pre_ln:
        model_flags += ["--encoder-normalize-before", "--decoder-normalize-before"]
    plan = Plan(arch, "denoising", flags, overrides, embed_key, model_flags)
    if not tied:
        plan.notes.append("the HF lm_head differs from the shared embeddings: saved with "
                          "share_decoder_input_output_embed=False, which fairseq-train has no flag for")
    return plan


# ------------------------------------------------------------------ filling the fairseq state dict
def _rows(t, vocab, n_rows: int):
    """HF rows (dim 0) in fairseq dictionary order; rows without an HF counterpart are zero."""
    import torch

    assert len(vocab.hf_ids) == n_rows, (len(vocab.hf_ids), n_rows)
    idx = torch.tensor([-1 if i is None else i for i in vocab.hf_ids])
    out = t[idx.clamp(min=0)].clone()
    out[idx < 0] = 0
    return out


def roberta_state(cfg: dict, hf: Tracker, vocab, template: dict, plan: Plan) -> dict:
    import torch

    mt = cfg["model_type"]
    se = "encoder.sentence_encoder."
    fs = {}
    n_rows, d = template[se + "embed_tokens.weight"].shape
    emb = _rows(hf.take("embeddings.word_embeddings.weight"), vocab, n_rows)
    fs[se + "embed_tokens.weight"] = emb

    # positions (+ token type 0): fairseq row padding_idx+1+j <- HF row offset+j
    pos = hf.take("embeddings.position_embeddings.weight")
    tt = hf.get("embeddings.token_type_embeddings.weight")
    tt0 = tt[0] if tt is not None else torch.zeros(d)
    if tt is not None and tt.shape[0] > 1:
        plan.notes.append(f"token-type embeddings 1..{tt.shape[0] - 1} dropped (fairseq RoBERTa has no segment "
                          "embeddings; type 0 is folded into the positions)")
    offset = 0 if mt == "bert" else int(cfg.get("pad_token_id", 1)) + 1
    table = torch.zeros_like(template[se + "embed_positions.weight"])
    n = table.shape[0] - 2
    table[2:] = pos[offset:offset + n] + tt0
    c = plan.embed_rescale
    if c != 1.0:
        # LayerNorm(c*x, eps) == LayerNorm(x, eps/c^2): with both embedding tables stored times c (a power
        # of two, so exactly) the embedding LayerNorm, fairseq's fixed eps 1e-5, acts as eps 1e-5/c^2 on
        # HF's input; the LM head's LayerNorm is divided by c, so tied logits are unchanged.
        emb = emb * c
        fs[se + "embed_tokens.weight"] = emb
        table = table * c
        plan.notes.append(f"HF LayerNorm eps {plan.ln_eps:g} < fairseq's fixed {FAIRSEQ_LN_EPS:g}: token and "
                          f"position embeddings stored times {c:g} (so the embedding LayerNorm acts as eps "
                          f"{FAIRSEQ_LN_EPS / c ** 2:.2g}; its output is unchanged), LM-head LayerNorm divided "
                          f"by {c:g} to keep the tied logits")
    fs[se + "embed_positions.weight"] = table
    fs[se + "layernorm_embedding.weight"] = hf.take("embeddings.LayerNorm.weight")
    fs[se + "layernorm_embedding.bias"] = hf.take("embeddings.LayerNorm.bias")

    names = {"attention.self.query": "self_attn.q_proj", "attention.self.key": "self_attn.k_proj",
             "attention.self.value": "self_attn.v_proj", "attention.output.dense": "self_attn.out_proj",
             "attention.output.LayerNorm": "self_attn_layer_norm", "intermediate.dense": "fc1",
             "output.dense": "fc2", "output.LayerNorm": "final_layer_norm"}
    for i in range(cfg["num_hidden_layers"]):
        for h, f in names.items():
            for p in ("weight", "bias"):
                fs[f"{se}layers.{i}.{f}.{p}"] = hf.take(f"encoder.layer.{i}.{h}.{p}")

    # LM head: BERT cls.predictions.* / RoBERTa lm_head.*; else fairseq's init, tied, zero bias
    heads = [("cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm", "cls.predictions.bias",
              "cls.predictions.decoder"),
             ("lm_head.dense", "lm_head.layer_norm", "lm_head.bias", "lm_head.decoder")]
    head = next((h for h in heads if h[0] + ".weight" in hf), None)
    lm = "encoder.lm_head."
    if head is not None:
        dense, ln, bias, dec = head
        for p in ("weight", "bias"):
            fs[lm + "dense." + p] = hf.take(f"{dense}.{p}")
            fs[lm + "layer_norm." + p] = hf.take(f"{ln}.{p}")
        b = hf.get(bias)
        b_dec = hf.get(dec + ".bias")
        b = b if b is not None else b_dec
        fs[lm + "bias"] = _rows(b, vocab, n_rows) if b is not None else torch.zeros(n_rows)
        w = hf.get(dec + ".weight")
        fs[lm + "weight"] = _rows(w, vocab, n_rows) if plan.overrides["untie_weights_roberta"] else emb
        plan.notes.append(f"LM head converted from {dense.rsplit('.', 2)[0]}.*")
    else:
        fs[lm + "weight"] = emb
        fs[lm + "bias"] = torch.zeros(n_rows)
        for p in ("weight", "bias"):
            fs[lm + "layer_norm." + p] = template[lm + "layer_norm." + p].clone()
        plan.notes.append("no MLM head in the HF checkpoint: fairseq's LM head (encoder.lm_head) keeps fairseq's "
                          "initialisation (dense N(0, 0.02), LayerNorm weight 1 and bias 0), tied to the embeddings, "
                          "zero bias; it is untrained")
    if c != 1.0 and not plan.overrides["untie_weights_roberta"]:
        for p in ("weight", "bias"):
            fs[lm + "layer_norm." + p] = fs[lm + "layer_norm." + p] / c
    return fs


_ROBERTA_DROPPABLE = ("embeddings.position_ids", "embeddings.token_type_ids", "pooler.", "cls.seq_relationship.",
                      "classifier.", "qa_outputs.")


def bart_state(cfg: dict, hf: Tracker, vocab, template: dict, plan: Plan) -> dict:
    mt = cfg["model_type"]
    fs = {}
    n_rows = template["encoder.embed_tokens.weight"].shape[0]
    shared = hf.take(plan.embed_key)
    for side in ("encoder", "decoder"):
        k = f"{side}.embed_tokens.weight"
        if k in hf and not _same(hf.take(k), shared):
            raise HFImportError(f"{mt}: {k} differs from the shared embeddings; fairseq BART shares all embeddings")
    emb = _rows(shared, vocab, n_rows)
    fs["encoder.embed_tokens.weight"] = emb
    fs["decoder.embed_tokens.weight"] = emb
    lm_w = hf.get("lm_head.weight")
    tied = plan.overrides["share_decoder_input_output_embed"]
    fs["decoder.output_projection.weight"] = emb if tied else _rows(lm_w, vocab, n_rows)
    flb = hf.get("final_logits_bias")
    if flb is not None and flb.abs().max() > 0:
        plan.notes.append("final_logits_bias is non-zero and dropped: fairseq's output projection has no bias, "
                          f"logits differ by up to {flb.abs().max().item():.3g}")
    for k in hf.sd:
        if k.startswith(("encoder.", "decoder.")) and not k.endswith("embed_tokens.weight"):
            if k not in template:
                raise HFImportError(f"{mt}: the checkpoint has {k!r}, which fairseq's "
                                    f"{plan.arch} has no place for: unsupported variant")
            fs[k] = hf.take(k)
    return fs


_BART_DROPPABLE = ("classification_head.", "qa_outputs.")

FAMILIES = {
    "bert": ("bert.", roberta_plan, roberta_state, _ROBERTA_DROPPABLE),
    "roberta": ("roberta.", roberta_plan, roberta_state, _ROBERTA_DROPPABLE),
    "bart": ("model.", bart_plan, bart_state, _BART_DROPPABLE),
    "mbart": ("model.", bart_plan, bart_state, _BART_DROPPABLE),
}


# ------------------------------------------------------------------ fairseq side
def build_args(plan: Plan, data_dir: str) -> argparse.Namespace:
    """fairseq's own training-argument parsing (as fairseq-train does), then the HF structure."""
    from fairseq import options

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [data_dir, "--task", plan.task, "--arch", plan.arch, *plan.flags])
    for k, v in plan.overrides.items():
        setattr(args, k, v)
    return args


def plain_args(args: argparse.Namespace) -> argparse.Namespace:
    """Only builtin values (enums as their value), so that torch.load(weights_only=True) needs no global
    but argparse.Namespace, which `import unifairseq` allow-lists."""
    import enum

    def plain(v):
        if isinstance(v, enum.Enum):
            v = v.value
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v] if isinstance(v, list) else tuple(plain(x) for x in v)
        if isinstance(v, dict):
            return {plain(k): plain(x) for k, x in v.items()}
        for t in (bool, int, float, str):  # bool first: it is an int
            if isinstance(v, t):
                return t(v)
        return v if v is None else str(v)

    return argparse.Namespace(**{k: plain(v) for k, v in vars(args).items()})


def checkpoint_state(model, args) -> dict:
    """The layout of the released fairseq checkpoints. `optimizer_history` holds one entry without
    optimizer state, as in the released files: fairseq 0.12's loader
    (`checkpoint_utils._upgrade_state_dict`) reads `state["optimizer_history"][-1]` unconditionally,
    so an empty list fails there with IndexError."""
    history = [{"criterion_name": "CrossEntropyCriterion", "optimizer_name": "FairseqAdam",
                "lr_scheduler_state": {"best": None}, "num_updates": 0}]
    return {"args": args, "model": model.state_dict(), "optimizer_history": history, "extra_state": {},
            "last_optimizer_state": None}


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
    import torch
    from fairseq import checkpoint_utils, tasks

    from unifairseq.convert.hf_tokenize import HFVocabError, build_vocab_map, load_tokenizer

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
    args = plain_args(args)
    os.makedirs(out_dir, exist_ok=True)
    tmp = dict_path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in vocab.dict_lines()))
    os.replace(tmp, dict_path)
    checkpoint_utils.torch_persistent_save(checkpoint_state(model, args), model_path)
    if vocab.renamed:
        sample = ", ".join(f"{i}->{s}" for i, s in list(vocab.renamed.items())[:8])
        plan.notes.append(f"{len(vocab.renamed)} HF tokens renamed in dict.txt (HF id->symbol): {sample}")
    return ImportResult(model_path, dict_path, plan.arch, plan.notes, eps_effect,
                        ["--arch", plan.arch, *plan.model_flags])


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="unifairseq-import-hf", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
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
        print(f"unifairseq-import-hf: error: {e}", file=sys.stderr)
        return 2
    for note in res.notes:
        logger.info(note)
    logger.info(f"wrote {res.model_path} (fairseq {res.arch}) and {res.dict_path}")
    logger.info(f"fairseq-train flags: {' '.join(res.train_flags)} --restore-file {res.model_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
