"""Reading a local Hugging Face model folder: config.json (with a supported `model_type`) and the
weights (model.safetensors or pytorch_model.bin, sharded or not), reported as HFImportError.
See unifairseq.convert.hf_import for the conversion as a whole."""
from __future__ import annotations

import os
from unifairseq.errors import UnifairseqError

SUPPORTED_MODEL_TYPES = ("bert", "roberta", "bart", "mbart")


class HFImportError(UnifairseqError, RuntimeError):
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
