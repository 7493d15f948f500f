"""Delta files made for sharing: a folder with `delta_config.json` and `delta_model.safetensors`.

    write_delta(folder, config, tensors)     config: a JSON-able dict (see REQUIRED), tensors: name -> tensor
    read_delta(folder) -> (config, tensors)  strict validation first; never unpickles anything

Reading someone else's file must not run code, and a damaged file must give one line naming the file and
the problem. So the reader checks everything itself before safetensors sees a byte: the JSON (bounded
parse, then every field against the schema of core/deltaschema.py), the safetensors header (its length
against the file size, JSON, dtypes, shapes, offsets that tile the data exactly), the tensor names against
the JSON's list, the digest binding the JSON to the header (format version 2), and the sha256 of the
tensor file recorded in the JSON (a tampered data byte shows there). Every failure is a `DeltaFileError`.
torch and the standard library only (safetensors' torch reader for the data).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from typing import Dict, Tuple

import torch
from unifairseq.core.fileperm import as_umask
from unifairseq.core.tmpfiles import sweep_stale
from unifairseq.core.deltaschema import (FORMAT, REQUIRED, DeltaFileError, check_header, config_digest,  # noqa: F401
                                         parse_json, validate)

FORMAT_VERSION = 2
READ_VERSIONS = (1, 2)  # 1: no digest (written before 2026-12); read with every other check
CONFIG_NAME = "delta_config.json"
TENSORS_NAME = "delta_model.safetensors"
# the folder's fairseq entry file (the `.pt` delta of the same tensors, for `fairseq-generate --path
# DIR/model.pt`), bound to the JSON by the optional field "entry" (deltaschema.OPTIONAL); folders without it load
ENTRY_NAME = "model.pt"
MAX_HEADER = 16 * 1024 * 1024  # a delta's header lists its tensors: kilobytes (safetensors allows 100 MB)
MAX_CONFIG = 4 * 1024 * 1024  # a config lists tensor names: kilobytes; anything this big is not one
# safetensors dtype -> (torch dtype, bytes per element)
DTYPES = {"F64": (torch.float64, 8), "F32": (torch.float32, 4), "F16": (torch.float16, 2),
          "BF16": (torch.bfloat16, 2), "I64": (torch.int64, 8), "I32": (torch.int32, 4), "I16": (torch.int16, 2),
          "I8": (torch.int8, 1), "U8": (torch.uint8, 1), "BOOL": (torch.bool, 1)}


def _fail(path: str, problem: str):
    raise DeltaFileError(f"{path}: {problem}")


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def is_delta_folder(path) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, CONFIG_NAME))


# -------------------------------------------------------------------- write
def write_delta(folder: str, config: dict, tensors: Dict[str, torch.Tensor], overwrite: bool = False) -> dict:
    """Write the folder; `config` gets format fields, the tensor record (count, parameters, sha256,
    names) and the digest filled in, and is validated as a reader will (a folder this writes always
    reads back). Files are written under temporary names and renamed, the JSON last: a reader never
    sees a JSON that describes a tensor file it does not match. Returns the config as written."""
    from safetensors.torch import save_file

    cfg_path, st_path = os.path.join(folder, CONFIG_NAME), os.path.join(folder, TENSORS_NAME)
    if os.path.exists(cfg_path) and not overwrite:
        raise DeltaFileError(f"{folder}: holds a delta already; refusing to overwrite it (pass --force)")
    os.makedirs(folder, exist_ok=True)
    sweep_stale(folder, names=[TENSORS_NAME, CONFIG_NAME])  # what a killed earlier export left here
    # safetensors stores contiguous, unshared tensors; clones cut the ties to the model's storage
    flat = {k: v.detach().cpu().contiguous().clone() for k, v in sorted(tensors.items())}
    tmp_st = os.path.join(folder, f".{TENSORS_NAME}.tmp.{os.getpid()}")
    tmp_cfg = os.path.join(folder, f".{CONFIG_NAME}.tmp.{os.getpid()}")
    try:
        save_file(flat, tmp_st)
        config = dict(config, format=FORMAT, format_version=FORMAT_VERSION)
        config.pop("digest", None)
        config["tensors"] = dict(count=len(flat), parameters=sum(v.numel() for v in flat.values()),
                                 sha256=_sha256(tmp_st), names=list(flat))
        header, raw = _read_header(tmp_st)
        config["digest"] = config_digest(config, raw)
        validate(config, cfg_path, (FORMAT_VERSION,), os.path.getsize(tmp_st), tmp_st)
        check_header(tmp_st, header)
        with open(tmp_cfg, "w") as f:
            json.dump(config, f, indent=1, sort_keys=True, allow_nan=False)
            f.write("\n")
        as_umask(tmp_st)  # safetensors creates its file 0600
        as_umask(tmp_cfg)
        os.replace(tmp_st, st_path)
        os.replace(tmp_cfg, cfg_path)
    finally:
        for t in (tmp_st, tmp_cfg):
            if os.path.exists(t):
                os.remove(t)
    return config


# --------------------------------------------------------------------- read
def read_config(folder: str) -> dict:
    """The JSON, checked field by field against the schema (core/deltaschema.py); no tensor is read, but
    the tensor file's size bounds the sizes the JSON may ask for."""
    path = os.path.join(folder, CONFIG_NAME)
    if not os.path.isdir(folder):
        _fail(folder, "no such delta folder (a delta is a folder holding delta_config.json and "
                      "delta_model.safetensors, as `unifairseq-export inference CKPT OUT_DIR` writes it)")
    if not os.path.isfile(path):
        _fail(path, "missing: this folder is not a unifairseq delta")
    if os.path.getsize(path) > MAX_CONFIG:
        _fail(path, f"{os.path.getsize(path):,} bytes: far larger than a delta's config; not a unifairseq delta")
    with open(path, "rb") as f:
        raw = f.read(MAX_CONFIG + 1)  # the size may have changed since the stat
    if len(raw) > MAX_CONFIG:
        _fail(path, "far larger than a delta's config; not a unifairseq delta")
    config = parse_json(raw, path)
    st_path = os.path.join(folder, TENSORS_NAME)
    size = os.path.getsize(st_path) if os.path.isfile(st_path) else None
    validate(config, path, READ_VERSIONS, size, st_path)
    if size is None:
        _fail(st_path, "missing: the delta folder has no tensor file")
    if "entry" in config:
        check_entry_digest(folder, config)
    return config


def check_entry_digest(folder: str, config: dict) -> None:
    """The entry file is the one this JSON was written with (its bytes' sha256, the field's shape checked
    by the schema; nothing is unpickled). It cannot say that a hand-made folder's model.pt holds the
    safetensors' tensors: that needs the entry read, weights-only (tools/share.py check_entry, behind
    `unifairseq-base find DIR`)."""
    e = config["entry"]
    entry = os.path.join(folder, ENTRY_NAME)
    if not os.path.isfile(entry):
        _fail(entry, f"missing: {CONFIG_NAME} records it as the folder's fairseq entry file; re-copy the folder")
    digest = _sha256(entry)
    if digest != e["sha256"]:
        _fail(entry, f"checksum mismatch (sha256 {digest[:16]}…, {CONFIG_NAME} records {e['sha256'][:16]}…): "
                     "not the entry file exported with this delta; re-copy the folder")


def _read_header(path: str) -> Tuple[Dict[str, dict], bytes]:
    if not os.path.isfile(path):
        _fail(path, "missing: the delta folder has no tensor file")
    size = os.path.getsize(path)
    if size < 8:
        _fail(path, f"truncated: {size} bytes, shorter than the 8-byte header length")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > MAX_HEADER or 8 + n > size:
            _fail(path, f"truncated or corrupt: the header claims {n:,} bytes, the file has {size - 8:,} after the "
                        "length field")
        raw = f.read(n)
    header = parse_json(raw, path, "header JSON")
    if not isinstance(header, dict):
        _fail(path, "corrupt header (not a JSON object)")
    header.pop("__metadata__", None)
    spans = []
    for name, entry in header.items():
        if not (isinstance(entry, dict) and set(entry) == {"dtype", "shape", "data_offsets"}):
            _fail(path, f"corrupt header entry for {name!r}")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in DTYPES:
            _fail(path, f"tensor {name!r} has unsupported dtype {dtype!r}")
        if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                for d in shape)):
            _fail(path, f"tensor {name!r} has a malformed shape {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
                and 0 <= offsets[0] <= offsets[1]):
            _fail(path, f"tensor {name!r} has malformed data offsets {offsets!r}")
        if offsets[1] - offsets[0] != math.prod(shape) * DTYPES[dtype][1]:
            _fail(path, f"tensor {name!r}: {offsets[1] - offsets[0]} bytes do not hold a {dtype} tensor of shape "
                        f"{shape}")
        spans.append((offsets[0], offsets[1], name))
    end = 0
    for begin, stop, name in sorted(spans):
        if begin != end:
            _fail(path, f"corrupt header: tensor {name!r} starts at byte {begin} of the data, expected {end}")
        end = stop
    if 8 + n + end != size:
        _fail(path, f"truncated or corrupt: the header describes {end:,} data bytes, the file holds "
                    f"{size - 8 - n:,}")
    return header, raw


def read_header(path: str) -> Dict[str, dict]:
    """The safetensors header, validated against the file size: dtypes, shapes and offsets that tile the
    data area exactly, as safetensors requires (checked here so the error names the file and the fault)."""
    return _read_header(path)[0]


def read_delta(folder: str) -> Tuple[dict, Dict[str, torch.Tensor]]:
    """(config, tensors) of a delta folder. Validates the JSON, the header, the names, the digest and the
    checksum before loading the tensors with safetensors (no pickle anywhere)."""
    folder = os.fspath(folder)
    config = read_config(folder)
    cfg_path, st_path = os.path.join(folder, CONFIG_NAME), os.path.join(folder, TENSORS_NAME)
    header, raw = _read_header(st_path)
    names = config["tensors"]["names"]
    if set(header) != set(names):
        extra, gone = sorted(set(header) - set(names)), sorted(set(names) - set(header))
        _fail(st_path, f"tensor names differ from {CONFIG_NAME}: "
                       + "; ".join(p for p in (f"not listed there: {', '.join(extra[:3])}" if extra else "",
                                               f"missing here: {', '.join(gone[:3])}" if gone else "") if p))
    if "digest" in config and config_digest(config, raw) != config["digest"]:
        _fail(cfg_path, f"digest mismatch: this JSON or the header of {st_path} was edited or damaged after the "
                        "delta was written (the digest binds the two); re-copy or re-export the delta")
    check_header(st_path, header)
    digest = _sha256(st_path)
    if digest != config["tensors"]["sha256"]:
        _fail(st_path, f"checksum mismatch (sha256 {digest[:16]}…, {CONFIG_NAME} records "
                       f"{config['tensors']['sha256'][:16]}…): the file was altered or damaged; re-copy it")
    from safetensors.torch import load_file

    try:
        tensors = load_file(st_path, device="cpu")
    except Exception as e:  # validated above; anything left is a damaged file, said in one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        _fail(st_path, f"cannot be read ({first})")
    params = sum(v.numel() for v in tensors.values())
    if params != config["tensors"]["parameters"]:
        _fail(st_path, f"{params:,} parameters, {CONFIG_NAME} records {config['tensors']['parameters']:,}")
    return config, tensors
