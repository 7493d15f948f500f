"""What a delta folder's `delta_config.json` may hold, checked field by field before anything uses it.

A delta folder comes from someone else, so nothing in it is trusted: the JSON is parsed with bounded size
and depth (no RecursionError, no huge allocation), duplicate keys and non-finite numbers (NaN, Infinity)
are refused, and every field is checked for its type, range and meaning:

  - `delta`: exactly the DeltaConfig fields, of their types, then DeltaConfig.validate() -- the method
    registry owns the modes, options and per-method checks (alpha > 0 and finite, ...), so they are not
    repeated here -- and the values must already be the normalised ones (a missing or defaulted option
    would silently build another method: a Pfeiffer adapter without `ffn_option` is a parallel one);
  - sizes: every unit of a length/rank costs at least d parameters, so attn_bn * d (ffn_bn, mid_dim alike)
    cannot exceed the parameters the tensor file holds -- a huge attn_bn is refused before a model is built;
  - `arch` must be of the `family` and end in its `parent_arch` (the fairseq side checks the registry);
  - `base.fingerprint`, `base.plan_fingerprint` and `dictionary` must be real digests: an empty one is not
    "no check", it is refused;
  - `tensors.names`: exactly what the plan trains (no base weight smuggled in under a LoRA plan).

Format version 2 adds `digest`: sha256 over the canonical JSON (every field but `digest`) and the raw
safetensors header, so an edited config, a relabelled dtype or a header swapped between folders shows even
where the tensor checksum was recomputed. Version 1 (no digest) is still read, with every other check.
Standard library and the core only; every failure is a DeltaFileError naming the file and the field.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import fields
from typing import Optional

from unifairseq.core import bases
from unifairseq.core.config import DeltaConfig, DeltaConfigError
from unifairseq.core.methods import METHODS
from unifairseq.core.plan import DeltaPlan
from unifairseq.errors import UnifairseqError

FORMAT = "unifairseq-delta"
# top-level JSON fields: all required, no others (a file from a newer format version says so instead)
REQUIRED = ("format", "format_version", "unifairseq_version", "family", "arch", "parent_arch", "delta",
            "model", "base", "dictionary", "heads", "tensors")
# optional: "entry", the folder's model.pt (deltafile.ENTRY_NAME: the .pt delta of the same tensors, for
# fairseq-generate --path DIR/model.pt), bound by its sha256 and, in version 2, by the digest over this JSON
OPTIONAL = ("entry",)
ENTRY_FIELDS = ("file", "sha256", "bytes")
FAMILIES = ("bart", "mbart", "roberta")
# model args that fix the tensors' shapes (the fairseq side compares them with the loaded base)
SHAPE_ARGS = ("encoder_embed_dim", "encoder_ffn_embed_dim", "encoder_layers", "encoder_attention_heads",
              "decoder_embed_dim", "decoder_ffn_embed_dim", "decoder_layers", "decoder_attention_heads")
DELTA_FIELDS = tuple(f.name for f in fields(DeltaConfig))
TENSOR_FIELDS = ("count", "parameters", "sha256", "names")
BASE_FIELDS = ("name", "fingerprint", "plan_fingerprint", "path_hint")
HEAD_FIELDS = ("num_classes", "inner_dim")
MAX_DEPTH = 16  # a config nests 3 deep; a header 2
MAX_DIM = 1 << 20  # no model dimension, layer or head count comes near this
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")  # every tensor a plan trains is a floating-point parameter
HEX64 = re.compile(r"^[0-9a-f]{64}$")
DIGEST_PREFIX = "sha256:"
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


class DeltaFileError(UnifairseqError, ValueError):
    """A delta folder that cannot be read: one line naming the file and the problem."""


def fail(path: str, problem: str):
    raise DeltaFileError(f"{path}: {problem}")


# ---------------------------------------------------------------- parsing
def _no_duplicates(path):
    def hook(pairs):
        out = {}
        for k, v in pairs:
            if k in out:
                fail(path, f"duplicate key {k!r} (a second value would silently win); re-export the delta")
            out[k] = v
        return out
    return hook


def _no_constant(path):
    def hook(name):
        fail(path, f"holds the non-number {name}; a delta's numbers are finite")
    return hook


def parse_json(raw: bytes, path: str, what: str = "JSON"):
    """json.loads with the nesting depth bounded before parsing (so deep input is one line, not a
    RecursionError), duplicate keys and NaN/Infinity refused."""
    import numpy as np

    brackets = np.frombuffer(_STRINGS.sub(b'""', raw).translate(None, delete=_NOT_BRACKETS), dtype=np.uint8)
    if len(brackets):  # brackets inside strings (removed above) do not nest
        depth = np.cumsum(np.where((brackets == ord("[")) | (brackets == ord("{")), 1, -1).astype(np.int32))
        if int(depth.max()) > MAX_DEPTH:
            fail(path, f"{what} nests deeper than {MAX_DEPTH} levels: not a unifairseq delta")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        fail(path, f"not UTF-8 text ({e.reason} at byte {e.start}); re-copy the file")
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates(path), parse_constant=_no_constant(path))
    except DeltaFileError:  # from the hooks: already the one line
        raise
    except json.JSONDecodeError as e:
        fail(path, f"not valid {what} ({e.msg} at line {e.lineno} column {e.colno}); re-copy the file")
    except (ValueError, RecursionError) as e:  # e.g. an integer of more than 4,300 digits
        fail(path, f"not valid {what} ({str(e).splitlines()[0] if str(e) else type(e).__name__})")


# ---------------------------------------------------------------- digest
def canonical(config: dict) -> bytes:
    """The config as bytes that do not depend on key order, spacing or escaping."""
    body = {k: v for k, v in config.items() if k != "digest"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def config_digest(config: dict, header: bytes) -> str:
    """sha256 over the canonical config and the safetensors header bytes: binds the two together."""
    h = hashlib.sha256(b"unifairseq-delta-digest/1\0")
    h.update(canonical(config))
    h.update(b"\0")
    h.update(header)
    return DIGEST_PREFIX + h.hexdigest()


# ---------------------------------------------------------------- the schema
def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _exact(path, where, obj, want):
    if not isinstance(obj, dict):
        fail(path, f"field {where} must be a JSON object")
    missing, unknown = [k for k in want if k not in obj], sorted(set(obj) - set(want))
    if missing:
        fail(path, f"field {where} lacks {', '.join(missing)}; re-export the delta")
    if unknown:
        fail(path, f"field {where} has unknown key(s) {', '.join(unknown)}")


def _delta(path, d) -> DeltaConfig:
    _exact(path, "'delta'", d, DELTA_FIELDS)
    for f in fields(DeltaConfig):
        v, kind, where = d[f.name], str(f.type), f"delta.{f.name}"
        ok = {"str": isinstance(v, str), "int": _is_int(v), "float": _is_number(v),
              "Optional[str]": v is None or isinstance(v, str),
              "Union[float, str]": _is_number(v) or v == "learnable_scalar"}.get(kind)
        assert ok is not None, kind  # a new DeltaConfig field type: say here what the file may hold
        if not ok:
            fail(path, f"field {where} is {v!r}, not a {'finite number' if 'float' in kind else kind}")
        if _is_int(v) and kind == "int" and abs(v) > 1 << 62:
            fail(path, f"field {where} is {v}, out of range")
    try:
        cfg = DeltaConfig(**d).validate()
    except DeltaConfigError as e:
        msg = str(e)
        flag, sep, rest = msg.partition(": ")
        field = flag[2:].replace("-", "_") if sep and flag.startswith("--") else None
        fail(path, f"field delta.{field}: {rest}" if field in DELTA_FIELDS else f"field 'delta': {msg}")
    for k, v in cfg.to_dict().items():
        if v != d[k]:
            fail(path, f"field delta.{k} is {d[k]!r}, which builds {v!r}: a delta records the values it was "
                       "trained with; re-export it")
    return cfg


def _sizes(path, cfg: DeltaConfig, model: dict, parameters: int) -> None:
    """A length or rank of n costs at least n*d stored parameters (d the model width)."""
    d = min(v for k, v in model.items() if k.endswith("_embed_dim"))
    chosen = [m for m in METHODS.values() if m.selected(cfg)]
    used = []
    if any(m.sized and cfg.attn_mode in m.attn_modes for m in chosen):
        used.append("attn_bn")
    if any(m.sized and cfg.ffn_mode in m.ffn_modes for m in chosen):
        used.append("ffn_bn")
    if cfg.attn_mode == "prefix":
        used.append("mid_dim")
    for k in used:
        if getattr(cfg, k) * d > parameters:
            fail(path, f"field delta.{k} is {getattr(cfg, k):,}: with model width {d} that needs more than the "
                       f"{parameters:,} parameters the delta holds")


def _check_entry(e, path: str) -> None:
    if not (isinstance(e, dict) and set(e) == set(ENTRY_FIELDS) and e["file"] == "model.pt"
            and isinstance(e["sha256"], str) and HEX64.match(e["sha256"]) and _is_int(e["bytes"]) and e["bytes"] > 0):
        fail(path, "field 'entry' must be {'file': 'model.pt', 'sha256': 64 hex digits, 'bytes': N}")


def validate(config, path: str, versions, tensor_bytes: Optional[int] = None, tensor_path: str = "") -> dict:
    """The whole config, or a DeltaFileError naming the field. `tensor_bytes`: the size of the tensor file
    `tensor_path` (bounds the parameter count, and so every size, before anything is built)."""
    if not isinstance(config, dict):
        fail(path, f"expected a JSON object, found {type(config).__name__}")
    if config.get("format") != FORMAT:
        fail(path, f"format is {config.get('format')!r}, not {FORMAT!r}: not a unifairseq delta")
    version = config.get("format_version")
    if not _is_int(version) or version not in versions:
        fail(path, f"format version {version!r} is not one this unifairseq reads ({', '.join(map(str, versions))});"
                   " use the unifairseq version named in the file's unifairseq_version")
    want = REQUIRED + (("digest",) if version >= 2 else ())
    missing = [k for k in want if k not in config]
    unknown = sorted(set(config) - set(want) - set(OPTIONAL))
    if missing:
        fail(path, f"missing field(s) {', '.join(missing)}")
    if unknown:
        fail(path, f"unknown field(s) {', '.join(unknown)} for format version {version}")
    if "entry" in config:
        _check_entry(config["entry"], path)
    for key in ("unifairseq_version", "family", "arch", "parent_arch") + (("digest",) if version >= 2 else ()):
        if not isinstance(config[key], str):
            fail(path, f"field {key!r} must be a JSON string")
    family, arch, parent = config["family"], config["arch"], config["parent_arch"]
    if family not in FAMILIES:
        fail(path, f"field 'family' is {family!r}; one of {', '.join(FAMILIES)}")
    if not (parent.split("_")[0] == family and arch.endswith("_" + parent)):
        fail(path, f"field 'arch' {arch!r} / 'parent_arch' {parent!r} are not of the family {family!r}")
    if version >= 2 and not (config["digest"].startswith(DIGEST_PREFIX) and HEX64.match(config["digest"][7:])):
        fail(path, "field 'digest' must be 'sha256:' and 64 hex digits")
    # tensors first: their parameter count bounds the sizes below
    t = config["tensors"]
    _exact(path, "'tensors'", t, TENSOR_FIELDS)
    if not (isinstance(t["names"], list) and all(isinstance(n, str) and n for n in t["names"])
            and _is_int(t["count"]) and t["count"] == len(t["names"]) and len(set(t["names"])) == len(t["names"])):
        fail(path, "field 'tensors': 'names' must be a list of distinct names, 'count' its length")
    if not (isinstance(t["sha256"], str) and HEX64.match(t["sha256"])):
        fail(path, "field 'tensors': 'sha256' must be a 64-digit hex digest")
    params = t["parameters"]
    if not _is_int(params) or params < 0:
        fail(path, f"field tensors.parameters is {params!r}: not a parameter count")
    if tensor_bytes is not None and params * 2 > tensor_bytes:  # 2 bytes: the narrowest floating dtype
        fail(tensor_path, f"truncated or not this delta's: {tensor_bytes:,} bytes cannot hold the {params:,} "
                          "parameters its tensors.parameters records")
    model = config["model"]
    # the encoder's shape always, the decoder's for the encoder-decoder families (RoBERTa may record it too)
    _exact(path, "'model'", model, [k for k in SHAPE_ARGS if k in model or k.startswith("encoder")
                                    or family != "roberta"])
    for k, v in model.items():
        if not (_is_int(v) and 0 < v <= MAX_DIM):
            fail(path, f"field model.{k} is {v!r}, not a positive dimension")
    cfg = _delta(path, config["delta"])
    _sizes(path, cfg, model, params)
    _exact(path, "'base'", config["base"], BASE_FIELDS)
    b = config["base"]
    for k in ("name", "path_hint"):
        if not (b[k] is None or isinstance(b[k], str)):
            fail(path, f"field base.{k} must be a string or null")
    if not (isinstance(b["fingerprint"], str) and bases.is_content_fingerprint(b["fingerprint"])):
        fail(path, f"field base.fingerprint is {b['fingerprint']!r}, not a content fingerprint; the base check "
                   "cannot be switched off from the file (to force another base: --delta-allow-base-mismatch)")
    if not (isinstance(b["plan_fingerprint"], str) and HEX64.match(b["plan_fingerprint"])):
        fail(path, f"field base.plan_fingerprint is {b['plan_fingerprint']!r}, not a 64-digit hex digest")
    sides = ("source",) if family == "roberta" else ("source", "target")
    dic = config["dictionary"]
    if version >= 2 or dic:  # version 1 written from a .pt that recorded none: refused where it is applied
        _exact(path, "'dictionary'", dic, sides)
        for k, v in dic.items():
            if not (isinstance(v, str) and HEX64.match(v)):
                fail(path, f"field dictionary.{k} is {v!r}, not a 64-digit hex digest")
    elif not isinstance(dic, dict):
        fail(path, "field 'dictionary' must be a JSON object")
    heads = config["heads"]
    if not isinstance(heads, dict):
        fail(path, "field 'heads' must be a JSON object")
    for name, h in heads.items():
        _exact(path, f"heads.{name}", h, HEAD_FIELDS)
        if not (re.match(r"^[A-Za-z0-9_]+$", name) and all(_is_int(h[k]) and 0 < h[k] <= MAX_DIM for k in h)):
            fail(path, f"field heads.{name}: a head name and positive num_classes, inner_dim")
    _names(path, cfg, t["names"], heads)
    return config


def _names(path, cfg: DeltaConfig, names, heads) -> None:
    """Exactly what the plan trains: a base tensor under a plan that does not train it is refused."""
    try:
        plan = DeltaPlan(cfg)
    except DeltaConfigError as e:  # e.g. two methods on one site
        fail(path, f"field 'delta': {e}")
    for n in names:
        if n.startswith("classification_heads."):
            if n.split(".")[1] not in heads:
                fail(path, f"field tensors.names: {n} belongs to no head listed in 'heads'")
        elif not plan.is_trainable(n):
            fail(path, f"field tensors.names: {n} is not a tensor the plan ({plan.describe()}) trains; a delta "
                       "carries only its own tensors")


def check_header(path: str, header: dict) -> None:
    """The dtypes the plan builds: floating-point parameters only (an I32 relabel of F32 bytes is refused)."""
    for name, entry in header.items():
        if entry["dtype"] not in FLOAT_DTYPES:
            fail(path, f"tensor {name!r} has dtype {entry['dtype']}; the tensors a plan trains are floating point "
                       f"({', '.join(FLOAT_DTYPES)})")
