"""fairseq BART / mBART / RoBERTa -> a Hugging Face transformers model: the export direction of
unifairseq.convert.hf_import, on the same name map (hf_to_fairseq.ROBERTA_LAYER_NAMES, BART's
names being fairseq's under `model.`) read the other way.

    fairseq                                   transformers
    bart  (post-LN, layernorm_embedding)      BartForConditionalGeneration (BartForSequenceClassification with a head)
    bart  pre-LN + final layer norms (mBART)  MBartForConditionalGeneration (MBartForSequenceClassification)
    roberta (post-LN)                         RobertaForMaskedLM (RobertaForSequenceClassification with a head)

Positions: fairseq's learned positions start at padding_idx + 1 = 2; HF BART/mBART start at offset 2
and HF RoBERTa at pad_token_id + 1, so the tables are copied as they are (RoBERTa's shifted when the
HF pad id is not 1). HF BART numbers positions 0, 1, ... from the left whatever the padding, fairseq
skips pads: outputs agree for right-padded (or unpadded) input, as HF itself feeds BART. RoBERTa's
token-type embedding is one zero row. HF's classification heads are fairseq's (dense, tanh, out_proj;
BART on the last </s>), so `classification_heads.NAME` maps when its activation is tanh and its inner
size the model size.

Vocabulary order: by default the HF rows are the fairseq dictionary's (ids = fairseq ids; that is how
HF's own bart/roberta checkpoints were converted). `hf_vocab_dir` (the HF folder a model was imported
from with unifairseq-import-hf) puts the rows back in that folder's order through the importer's
mapping (hf_tokenize.build_vocab_map), so its tokenizer files apply unchanged.
"""
from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch

from unifairseq.convert.hf_to_fairseq import ACTIVATIONS, ROBERTA_LAYER_NAMES
from unifairseq.convert.hf_tokenize import HFVocabError, build_vocab_map
from unifairseq.errors import UnifairseqError

# fairseq activation -> the HF name (the first HF spelling that hf_to_fairseq maps to it)
HF_ACTIVATION: Dict[str, str] = {}
for _hf, _fs in ACTIVATIONS.items():
    HF_ACTIVATION.setdefault(_fs, _hf)
FAIRSEQ_LAYER_NAMES = {f: h for h, f in ROBERTA_LAYER_NAMES.items()}  # the same map, fairseq -> HF
RSE = "encoder.sentence_encoder."
HEAD = "classification_heads."
_LAYER = re.compile(r"^(encoder\.sentence_encoder\.layers)\.(\d+)\.(.+)\.(weight|bias)$")


class HFExportError(UnifairseqError, RuntimeError):
    """A user error, reported as one line without a traceback."""


def resolved_args(args) -> argparse.Namespace:
    """The model args with the architecture's defaults filled in, as fairseq does when it builds the model."""
    from fairseq.models import ARCH_CONFIG_REGISTRY

    ns = argparse.Namespace(**(dict(args) if isinstance(args, dict) else vars(args)))
    arch = getattr(ns, "arch", None) or getattr(ns, "_name", None)
    if arch in ARCH_CONFIG_REGISTRY:
        ARCH_CONFIG_REGISTRY[arch](ns)
    return ns


def upgrade_legacy(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The renames fairseq's own loaders apply to pre-0.10 files (released roberta.* checkpoints among them),
    done here on the state dict so that such a file converts as fairseq would load it: RoBERTa's `decoder.` ->
    `encoder.`, `emb_layer_norm` -> `layernorm_embedding`, `layer_norms.0/1` -> `self_attn_layer_norm` /
    `final_layer_norm`, a fused `in_proj_weight/bias` split into q, k, v (MultiheadAttention's upgrade)."""
    roberta = "decoder.sentence_encoder.embed_tokens.weight" in sd
    out = {}
    for k, v in sd.items():
        if roberta and k.startswith("decoder."):
            k = "encoder." + k[len("decoder."):]
        k = k.replace(".emb_layer_norm.", ".layernorm_embedding.")
        k = k.replace(".layer_norms.0.", ".self_attn_layer_norm.").replace(".layer_norms.1.", ".final_layer_norm.")
        if k.endswith((".in_proj_weight", ".in_proj_bias")):
            stem, kind = k.rsplit(".in_proj_", 1)
            for name, part in zip(("q_proj", "k_proj", "v_proj"), v.chunk(3, dim=0)):
                out[f"{stem}.{name}.{kind}"] = part.clone()
            continue
        out[k] = v
    return out


def family_of(sd: Dict[str, torch.Tensor]) -> str:
    if RSE + "embed_tokens.weight" in sd:
        return "roberta"
    if "decoder.embed_tokens.weight" in sd and "encoder.embed_tokens.weight" in sd:
        return "mbart" if "encoder.layer_norm.weight" in sd else "bart"
    raise HFExportError("not a fairseq BART, mBART or RoBERTa state dict (no encoder/decoder embed_tokens, no "
                        "encoder.sentence_encoder.embed_tokens)")


def hf_key(family: str, key: str, with_head: bool = False) -> Optional[str]:
    """The HF name of a fairseq parameter (None: no HF counterpart, e.g. fairseq's `version` buffers).
    The task model's names: BartForConditionalGeneration / RobertaForMaskedLM, or the *ForSequenceClassification
    class when `with_head`. Vocabulary rows, heads and tied tables are handled by the caller."""
    if key.endswith(".version") or key.endswith("_float_tensor"):
        return None
    if key.startswith(HEAD):
        rest = key.split(".", 2)[2]
        return ("classification_head." if family != "roberta" else "classifier.") + rest
    if family != "roberta":
        if key.startswith(("encoder.", "decoder.")):
            return "model." + key
        raise HFExportError(f"{family}: {key!r} has no place in the HF model: unsupported variant")
    if key.startswith("encoder.lm_head.") and with_head:
        return None  # RobertaForSequenceClassification has no MLM head
    m = _LAYER.match(key)
    if m:
        if m.group(3) not in FAIRSEQ_LAYER_NAMES:
            raise HFExportError(f"roberta: {key!r} has no place in the HF model: unsupported variant")
        return f"roberta.encoder.layer.{m.group(2)}.{FAIRSEQ_LAYER_NAMES[m.group(3)]}.{m.group(4)}"
    fixed = {RSE + "embed_tokens.weight": "roberta.embeddings.word_embeddings.weight",
             RSE + "embed_positions.weight": "roberta.embeddings.position_embeddings.weight",
             RSE + "layernorm_embedding.weight": "roberta.embeddings.LayerNorm.weight",
             RSE + "layernorm_embedding.bias": "roberta.embeddings.LayerNorm.bias",
             "encoder.lm_head.weight": "lm_head.decoder.weight", "encoder.lm_head.bias": "lm_head.bias"}
    if key in fixed:
        return fixed[key]
    if key.startswith("encoder.lm_head."):
        return None if with_head else "lm_head." + key[len("encoder.lm_head."):]
    raise HFExportError(f"roberta: {key!r} has no place in the HF model: unsupported variant (pre-LN RoBERTa?)")


def hf_module(family: str, host: str) -> str:
    """The HF module path of a fairseq projection (`encoder.layers.0.self_attn.q_proj` ->
    `model.encoder.layers.0.self_attn.q_proj`): what peft's target_modules and key names use."""
    return hf_key(family, host + ".weight")[: -len(".weight")]


def import_transformers():
    """transformers, or one line naming the extra that brings it (it is not a dependency of unifairseq)."""
    try:
        import transformers
    except ImportError:
        raise HFExportError("unifairseq-export hf needs transformers, which a plain pip install of unifairseq does "
                            "not bring; install it with: pip install 'unifairseq[hf]'") from None
    return transformers


@dataclass
class HFModel:
    family: str
    config: object                       # a transformers PretrainedConfig
    class_name: str                      # e.g. "BartForConditionalGeneration"
    state: Dict[str, torch.Tensor]       # HF names, HF row order
    notes: List[str] = field(default_factory=list)
    tokenizer_dir: Optional[str] = None  # tokenizer files to copy (hf_vocab_dir)

    def build(self):
        """The transformers model with these weights, loaded strictly (tied tables included)."""
        model = getattr(import_transformers(), self.class_name)(self.config)
        missing, unexpected = model.load_state_dict(self.state, strict=False)
        tied = {k for k in missing if k.endswith(("embed_tokens.weight", "lm_head.weight", "lm_head.decoder.weight",
                                                  "lm_head.decoder.bias", "position_ids"))}
        if unexpected or set(missing) - tied:
            raise HFExportError(f"internal error: {self.class_name} missing {sorted(set(missing) - tied)[:5]}, "
                                f"unexpected {sorted(unexpected)[:5]}")
        model.tie_weights()
        return model.eval()


def _heads(sd) -> List[str]:
    return sorted({k.split(".")[1] for k in sd if k.startswith(HEAD)})


def _vocab_perm(hf_vocab_dir: str, dict_symbols: Optional[Sequence[str]], n_rows: int):
    """HF row j <- fairseq row perm[j], and the HF ids of <s> <pad> </s> <unk>, by the importer's mapping."""
    try:
        vocab = build_vocab_map(hf_vocab_dir)
    except (HFVocabError, OSError) as e:
        raise HFExportError(f"--hf-vocab {hf_vocab_dir}: {e}") from None
    if dict_symbols is None:
        raise HFExportError("--hf-vocab needs the fairseq dictionary the model was trained with (--dict DICT.txt) "
                            "to check that it is the one unifairseq-import-hf made from that folder")
    if list(dict_symbols[:len(vocab)]) != vocab.symbols or n_rows != len(vocab):
        first = next((k for k, (a, b) in enumerate(zip(dict_symbols, vocab.symbols)) if a != b),
                     min(len(dict_symbols), len(vocab)))
        raise HFExportError(f"the fairseq dictionary ({len(dict_symbols)} symbols, {n_rows} embedding rows) is not "
                            f"the one unifairseq-import-hf made from {hf_vocab_dir} ({len(vocab)} symbols; first "
                            f"difference at index {first}); drop --hf-vocab to keep the fairseq order")
    n_hf = max(vocab.hf_to_fairseq) + 1
    perm = torch.tensor([vocab.hf_to_fairseq[j] for j in range(n_hf)])
    return perm, vocab.hf_ids[:4]


def to_hf(sd: Dict[str, torch.Tensor], args, head: Optional[str] = None, hf_vocab_dir: Optional[str] = None,
          dict_symbols: Optional[Sequence[str]] = None) -> HFModel:
    """fairseq state dict + its model args -> HFModel. `head`: which classification head to export
    (default: the only one; none = the LM model)."""
    sd = upgrade_legacy(sd)
    family = family_of(sd)
    a = resolved_args(args)
    heads = _heads(sd)
    if head is None and len(heads) > 1:
        raise HFExportError(f"the checkpoint has {len(heads)} classification heads ({', '.join(heads)}); "
                            "name the one to export with --head NAME")
    if head is not None and head not in heads:
        raise HFExportError(f"no classification head {head!r} in the checkpoint (heads: {', '.join(heads) or 'none'})")
    head = head or (heads[0] if heads else None)
    sd = {k: v for k, v in sd.items() if not k.startswith(HEAD) or k.split(".")[1] == head}
    emb_key = RSE + "embed_tokens.weight" if family == "roberta" else "encoder.embed_tokens.weight"
    emb = sd[emb_key]
    n_rows, d = emb.shape
    notes = []
    perm, special = None, [0, 1, 2, 3]
    if hf_vocab_dir is not None:
        perm, special = _vocab_perm(hf_vocab_dir, dict_symbols, n_rows)
        notes.append(f"vocabulary rows put back in {hf_vocab_dir}'s order ({len(perm)} rows)")
    else:
        notes.append("vocabulary rows in fairseq dictionary order: HF ids = fairseq ids (no tokenizer files "
                     "unless --hf-vocab or --bpe-dir)")

    def rows(t):
        return t if perm is None else t[perm].clone()

    act = getattr(a, "activation_fn", "gelu")
    if act not in HF_ACTIVATION:
        raise HFExportError(f"activation {act!r} has no transformers equivalent")
    num_labels = None
    if head is not None:
        inner, out = sd[f"{HEAD}{head}.dense.weight"].shape[0], sd[f"{HEAD}{head}.out_proj.weight"].shape[0]
        pooler_act = getattr(a, "pooler_activation_fn", "tanh")
        if inner != d or pooler_act != "tanh":
            raise HFExportError(f"classification head {head!r}: inner size {inner}, activation {pooler_act}; "
                                f"transformers' heads are dense {d}x{d} + tanh")
        num_labels = out
    common = dict(vocab_size=len(perm) if perm is not None else n_rows, bos_token_id=special[0],
                  pad_token_id=special[1], eos_token_id=special[2])
    if num_labels is not None:
        common.update(num_labels=num_labels, classifier_dropout=float(getattr(a, "pooler_dropout", 0.0)))
    state = {}
    for k, v in sd.items():
        name = hf_key(family, k, with_head=head is not None)
        if name is not None:
            state[name] = v
    if family == "roberta":
        cfg, cls = _roberta(sd, a, d, act, common, state, rows, notes, head)
    else:
        cfg, cls = _bart(family, sd, a, d, act, common, state, rows, notes, head)
    return HFModel(family, cfg, cls, state, notes, hf_vocab_dir)


def _n_layers(sd, prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({m.group(1) for k in sd for m in [pat.match(k)] if m})


def _roberta(sd, a, d, act, common, state, rows, notes, head):
    RobertaConfig = import_transformers().RobertaConfig

    if getattr(a, "encoder_normalize_before", False) or not getattr(a, "layernorm_embedding", True):
        raise HFExportError("roberta: only post-LN RoBERTa with an embedding layer norm has a transformers class")
    if not getattr(a, "no_scale_embedding", True):
        raise HFExportError("roberta: scaled token embeddings (--no-scale-embedding off) have no transformers form")
    pad = common["pad_token_id"]
    table = sd[RSE + "embed_positions.weight"]
    # fairseq: positions at rows 2.. (padding_idx 1); HF RoBERTa: rows pad+1..
    pos = torch.zeros(pad + 1 + table.shape[0] - 2, d)
    pos[pad + 1:] = table[2:]
    state["roberta.embeddings.position_embeddings.weight"] = pos
    state["roberta.embeddings.token_type_embeddings.weight"] = torch.zeros(1, d)
    state["roberta.embeddings.word_embeddings.weight"] = rows(sd[RSE + "embed_tokens.weight"])
    tied = torch.equal(sd["encoder.lm_head.weight"], sd[RSE + "embed_tokens.weight"])
    if head is None:
        state["lm_head.decoder.weight"] = rows(sd["encoder.lm_head.weight"])
        state["lm_head.bias"] = rows(sd["encoder.lm_head.bias"])
        if act != "gelu":
            notes.append(f"HF's RobertaLMHead always applies gelu; fairseq's applies {act}: MLM logits differ")
    else:
        notes.append(f"classification head {head!r} -> RobertaForSequenceClassification.classifier; "
                     "the MLM head is left out")
    cfg = RobertaConfig(hidden_size=d, num_hidden_layers=_n_layers(sd, RSE + "layers."),
                        num_attention_heads=a.encoder_attention_heads,
                        intermediate_size=sd[RSE + "layers.0.fc1.weight"].shape[0], hidden_act=HF_ACTIVATION[act],
                        hidden_dropout_prob=float(a.dropout), attention_probs_dropout_prob=float(a.attention_dropout),
                        max_position_embeddings=pos.shape[0], type_vocab_size=1, layer_norm_eps=1e-5,
                        tie_word_embeddings=tied, **common)
    return cfg, "RobertaForSequenceClassification" if head else "RobertaForMaskedLM"


def _bart(family, sd, a, d, act, common, state, rows, notes, head):
    transformers = import_transformers()
    BartConfig, MBartConfig = transformers.BartConfig, transformers.MBartConfig

    for side in ("encoder", "decoder"):
        if f"{side}.layernorm_embedding.weight" not in sd:
            raise HFExportError(f"{family}: no {side}.layernorm_embedding; transformers' BART/mBART always have one")
        if f"{side}.embed_positions.weight" not in sd:
            raise HFExportError(f"{family}: sinusoidal positions; transformers' BART/mBART learn them")
    if bool(getattr(a, "encoder_normalize_before", False)) != bool(getattr(a, "decoder_normalize_before", False)):
        raise HFExportError(f"{family}: pre-LN on one side only has no transformers class")
    enc_pos, dec_pos = sd["encoder.embed_positions.weight"], sd["decoder.embed_positions.weight"]
    if enc_pos.shape != dec_pos.shape:
        raise HFExportError(f"{family}: {enc_pos.shape[0] - 2} source vs {dec_pos.shape[0] - 2} target positions; "
                            "transformers' BART has one max_position_embeddings")
    emb = sd["encoder.embed_tokens.weight"]
    if not torch.equal(sd["decoder.embed_tokens.weight"], emb):
        raise HFExportError(f"{family}: encoder and decoder embeddings differ; transformers' BART shares them")
    out_w = sd.get("decoder.output_projection.weight", emb)
    tied = torch.equal(out_w, emb)
    shared = rows(emb)
    for k in ("model.shared.weight", "model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight"):
        state[k] = shared
    state.pop("model.decoder.output_projection.weight", None)
    if head is None:
        state["lm_head.weight"] = shared if tied else rows(out_w)
        state["final_logits_bias"] = torch.zeros(1, shared.shape[0])
    else:
        notes.append(f"classification head {head!r} -> {'M' if family == 'mbart' else ''}BartForSequenceClassification"
                     ".classification_head; the LM output projection is left out")
    kw = dict(d_model=d, encoder_layers=_n_layers(sd, "encoder.layers."),
              decoder_layers=_n_layers(sd, "decoder.layers."),
              encoder_attention_heads=a.encoder_attention_heads, decoder_attention_heads=a.decoder_attention_heads,
              encoder_ffn_dim=sd["encoder.layers.0.fc1.weight"].shape[0],
              decoder_ffn_dim=sd["decoder.layers.0.fc1.weight"].shape[0],
              max_position_embeddings=enc_pos.shape[0] - 2, activation_function=HF_ACTIVATION[act],
              dropout=float(a.dropout), attention_dropout=float(a.attention_dropout),
              activation_dropout=float(getattr(a, "activation_dropout", 0.0)),
              scale_embedding=not getattr(a, "no_scale_embedding", False), tie_word_embeddings=tied,
              decoder_start_token_id=common["eos_token_id"], forced_eos_token_id=common["eos_token_id"],
              encoder_layerdrop=0.0, decoder_layerdrop=0.0, **common)
    cfg = (MBartConfig if family == "mbart" else BartConfig)(**kw)
    base = "MBart" if family == "mbart" else "Bart"
    return cfg, base + ("ForSequenceClassification" if head else "ForConditionalGeneration")


# ------------------------------------------------------------------ writing the folder
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "vocab.txt", "sentencepiece.bpe.model", "added_tokens.json")


def save(hf: HFModel, folder: str, dict_symbols: Optional[Sequence[str]] = None, bpe_dir: Optional[str] = None):
    """config.json + model.safetensors (transformers' save_pretrained) and the tokenizer files: copied from
    hf_vocab_dir, or made from fairseq's GPT-2 BPE files (bpe_dir: encoder.json + vocab.bpe)."""
    import shutil

    hf.build().save_pretrained(folder)
    if hf.tokenizer_dir is not None:
        import os

        for name in TOKENIZER_FILES:
            if os.path.isfile(os.path.join(hf.tokenizer_dir, name)):
                shutil.copy(os.path.join(hf.tokenizer_dir, name), os.path.join(folder, name))
    elif bpe_dir is not None:
        gpt2_tokenizer_files(hf, dict_symbols, bpe_dir, folder)


def gpt2_tokenizer_files(hf: HFModel, dict_symbols, bpe_dir: str, folder: str) -> None:
    """vocab.json (each fairseq symbol -- a GPT-2 BPE id, or a special -- as the GPT-2 token, at its fairseq
    id) + merges.txt (= vocab.bpe): HF's byte-level BPE tokenizers then give fairseq's gpt2 BPE + dictionary ids."""
    import json
    import os
    import shutil

    enc_path, bpe_path = os.path.join(bpe_dir, "encoder.json"), os.path.join(bpe_dir, "vocab.bpe")
    for p in (enc_path, bpe_path):
        if not os.path.isfile(p):
            raise HFExportError(f"--bpe-dir {bpe_dir}: no {os.path.basename(p)} (fairseq's GPT-2 BPE files: "
                                "encoder.json and vocab.bpe)")
    if dict_symbols is None:
        raise HFExportError("--bpe-dir needs the fairseq dictionary (--dict DICT.txt) to name each row's token")
    with open(enc_path, encoding="utf-8") as f:
        token_of = {i: t for t, i in json.load(f).items()}
    vocab = {}
    for k, s in enumerate(dict_symbols[:hf.config.vocab_size]):
        tok = token_of.get(int(s), s) if s.isdigit() else s
        vocab.setdefault(tok, k)
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    shutil.copy(bpe_path, os.path.join(folder, "merges.txt"))
    cls = "RobertaTokenizer" if hf.family == "roberta" else "BartTokenizer"
    cfg = dict(tokenizer_class=cls, bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>",
               unk_token="<unk>", pad_token="<pad>", mask_token="<mask>", add_prefix_space=False, errors="replace",
               model_max_length=int(hf.config.max_position_embeddings) - (2 if hf.family == "roberta" else 0))
    with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2)
