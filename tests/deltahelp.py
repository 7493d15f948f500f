"""Editing a delta folder's JSON as a hand (or a forger) would: the change, then the v2 digest recomputed
over the new JSON and the tensor header, so that the check under test -- not the digest -- is what refuses."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from unifairseq.core.config import DeltaConfig
from unifairseq.core.deltafile import CONFIG_NAME, TENSORS_NAME
from unifairseq.core.deltaschema import config_digest


def header_raw(folder) -> bytes:
    raw = (Path(folder) / TENSORS_NAME).read_bytes()
    return raw[8:8 + int.from_bytes(raw[:8], "little")]


def write_signed(folder, cfg: dict) -> None:
    """CFG as FOLDER's delta_config.json, with a consistent digest (version-1 folders have none)."""
    if "digest" in cfg:
        cfg["digest"] = config_digest(cfg, header_raw(folder))
    (Path(folder) / CONFIG_NAME).write_text(json.dumps(cfg))


def resign(folder, change) -> None:
    """Apply change(cfg) to FOLDER's delta_config.json and recompute its digest."""
    cfg = json.loads((Path(folder) / CONFIG_NAME).read_text())
    change(cfg)
    write_signed(folder, cfg)


# a minimal valid LoRA folder's content (a 1-layer BART of width D), for tests of the folder format alone
D = 8  # model width


def lora_config():
    return dict(unifairseq_version="0.1.0", family="bart", arch="lora_attn_bart_base", parent_arch="bart_base",
                delta=DeltaConfig(attn_mode="lora", attn_bn=4).validate().to_dict(),
                model=dict(encoder_embed_dim=D, encoder_ffn_embed_dim=2 * D, encoder_layers=1,
                           encoder_attention_heads=2, decoder_embed_dim=D, decoder_ffn_embed_dim=2 * D,
                           decoder_layers=1, decoder_attention_heads=2),
                base=dict(name="bart.base", fingerprint="v2:" + "a" * 64, plan_fingerprint="b" * 64, path_hint=None),
                dictionary={"source": "c" * 64, "target": "d" * 64}, heads={})


def lora_tensors():
    g = torch.Generator().manual_seed(0)
    name = "encoder.layers.0.self_attn.{}_proj.delta_lora.W_{}.weight"
    return {name.format(p, "down"): torch.randn(4, D, generator=g) for p in "qv"} | \
        {name.format(p, "up"): torch.randn(D, 4, generator=g) for p in "qv"}
