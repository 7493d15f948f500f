"""The HF -> fairseq name/shape plans and state-dict mapping: BERT/RoBERTa -> fairseq `roberta`,
BART/mBART -> fairseq `bart` (the rules, the vocabulary order and the LayerNorm eps handling are
described in unifairseq.convert.hf_import's docstring)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List

from unifairseq.convert.hf_read import HFImportError

FAIRSEQ_LN_EPS = 1e-5
EMBED_RESCALE = 16.0  # power of two: embedding LayerNorm at eps 1e-5/256 (see unifairseq.convert.hf_import)
# HF activation names -> fairseq's (fairseq's gelu_accurate is the tanh approximation)
ACTIVATIONS = {"gelu": "gelu", "relu": "relu", "gelu_new": "gelu_accurate", "gelu_fast": "gelu_accurate",
               "gelu_pytorch_tanh": "gelu_accurate", "tanh": "tanh", "linear": "linear"}


# HF BERT/RoBERTa layer module -> fairseq TransformerEncoderLayer module: the one name map, read both ways
# (unifairseq.convert.fairseq_to_hf inverts it for the export)
ROBERTA_LAYER_NAMES = {"attention.self.query": "self_attn.q_proj", "attention.self.key": "self_attn.k_proj",
                       "attention.self.value": "self_attn.v_proj", "attention.output.dense": "self_attn.out_proj",
                       "attention.output.LayerNorm": "self_attn_layer_norm", "intermediate.dense": "fc1",
                       "output.dense": "fc2", "output.LayerNorm": "final_layer_norm"}


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

    for i in range(cfg["num_hidden_layers"]):
        for h, f in ROBERTA_LAYER_NAMES.items():
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
