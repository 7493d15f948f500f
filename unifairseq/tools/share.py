"""`unifairseq-export inference CKPT DIR`: the shareable delta folder (core/deltafile.py) of a delta
checkpoint, with what a second environment needs to rebuild the model: the architecture and its plain
parent, the plan's flags, the model shape, the base's name and content fingerprint, the dictionaries'
fingerprints, the classification heads. Prints the command lines that load it."""
from __future__ import annotations

import copy
import json
import os
import shlex
from argparse import Namespace

import torch
from fairseq.data import Dictionary

from unifairseq import __version__
from unifairseq.core import bases
from unifairseq.core.config import DeltaConfig
from unifairseq.core.deltafile import (CONFIG_NAME, ENTRY_NAME, DeltaFileError, _sha256, is_delta_folder, read_config,
                                       write_delta)
from unifairseq.core.deltaschema import SHAPE_ARGS
from unifairseq.fairseq.checkpoint_io import (BASE_PATH_KEY, FINGERPRINT_KEY, INFO_KEY, META_KEYS, DeltaCheckpointError,
                                              atomic_save, base_name_of, file_content_fingerprint, find_base,
                                              load_checkpoint_file, str_to_tensor, tensor_to_str)
from unifairseq.fairseq.ckpt_args import model_args, parent_arch, set_model_arg
from unifairseq.fairseq.deltacheck import check_arch, family_of
from unifairseq.fairseq.deltafolder import dictionary_fingerprint
from unifairseq.fairseq.deltaread import read_folder_delta
from unifairseq.plugin import user_dir

HEAD_PREFIX = "classification_heads."


def _args(state: dict):
    args = model_args(state)
    return Namespace(**args) if isinstance(args, dict) else args


def heads_of(sd) -> dict:
    names = sorted({k[len(HEAD_PREFIX):].split(".")[0] for k in sd if k.startswith(HEAD_PREFIX)})
    return {n: dict(num_classes=int(sd[f"{HEAD_PREFIX}{n}.out_proj.weight"].shape[0]),
                    inner_dim=int(sd[f"{HEAD_PREFIX}{n}.dense.weight"].shape[0])) for n in names}


def base_record(sd, ckpt: str, flag):
    """name, content fingerprint, plan fingerprint and path of the delta's base. A checkpoint from before
    the content fingerprint was recorded has it computed from its base file (found by --base or its path)."""
    info = json.loads(tensor_to_str(sd[INFO_KEY])) if INFO_KEY in sd else {}
    path = tensor_to_str(sd[BASE_PATH_KEY]) if BASE_PATH_KEY in sd else ""
    content = info.get("base_content")
    if not content:
        try:
            found = find_base(flag, info.get("base_name"), recorded_path=path or None, option="--base PATH")
        except bases.BaseNotFound as e:
            raise DeltaCheckpointError(f"{ckpt!r} records no base content fingerprint (made before unifairseq "
                                       f"recorded it) and its base cannot be read to compute it: pass --base "
                                       f"NAME_OR_PATH ({e})") from None
        content = file_content_fingerprint(found.path)
        path = path or found.path
    return dict(name=info.get("base_name") or base_name_of(path, flag), fingerprint=content,
                plan_fingerprint=tensor_to_str(sd[FINGERPRINT_KEY]), path_hint=path or None), info


def dictionaries_of(family: str, ckpt: str, info: dict, dicts=None) -> dict:
    """What the delta records of its task's dictionaries, else the fingerprints of the dict files given
    (`dicts`: side -> dict.txt, a .pt delta from before they were recorded): a folder always has them."""
    if dicts:
        for side, p in dicts.items():
            if not os.path.isfile(p):
                raise DeltaCheckpointError(f"--{side}-dict: {p!r} does not exist")
        out = {side: dictionary_fingerprint(Dictionary.load(p)) for side, p in dicts.items()}
        if "target" not in out and family != "roberta":
            out["target"] = out["source"]  # BART reads one dictionary on both sides unless told
        return out
    if not info.get("dictionary"):
        raise DeltaCheckpointError(
            f"{ckpt!r} records no dictionary fingerprints (made before unifairseq recorded them), and a shared "
            "delta must name the dictionary it was trained with: pass the task's dictionary with --source-dict "
            "DATA-BIN/dict.SRC.txt (and --target-dict DATA-BIN/dict.TGT.txt for another target dictionary)")
    return info["dictionary"]


def write_shared(state: dict, ckpt: str, out: str, base_flag=None, force: bool = False, dicts=None) -> dict:
    args = _args(state)
    sd = state["model"]
    parent = parent_arch(args.arch)
    base, info = base_record(sd, ckpt, base_flag)
    config = dict(unifairseq_version=__version__, family=parent.split("_")[0], arch=args.arch, parent_arch=parent,
                  delta=DeltaConfig.from_args(args).to_dict(),
                  model={k: getattr(args, k) for k in SHAPE_ARGS if getattr(args, k, None) is not None},
                  base=base, dictionary=dictionaries_of(parent.split("_")[0], ckpt, info, dicts), heads=heads_of(sd))
    config["entry"] = write_entry(state, out, force)
    config = write_delta(out, config, {k: v for k, v in sd.items() if k not in META_KEYS}, overwrite=force)
    check_entry(out, config)  # what was just written: the entry's tensors are the safetensors' own
    print(usage(out, config))
    return config


def write_entry(state: dict, out: str, force: bool) -> dict:
    """DIR/model.pt: the `.pt` delta itself (what `export inference CKPT X.pt` writes), so that
    `fairseq-generate --path DIR/model.pt` loads it as any `.pt` delta (its base found inside the model).
    Written before the JSON, which records its sha256 (a crash in between leaves a folder whose JSON and
    entry disagree: refused by the reader, never half-trusted)."""
    entry = os.path.join(out, ENTRY_NAME)
    if is_delta_folder(out) and not force:
        raise DeltaFileError(f"{out}: holds a delta already; refusing to overwrite it (pass --force)")
    if os.path.lexists(entry) and not is_delta_folder(out):  # e.g. a base folder: its model.pt is not ours
        raise DeltaFileError(f"{out}: holds a {ENTRY_NAME} that is not a delta folder's entry (no {CONFIG_NAME}); "
                             "export the delta to a new folder")
    atomic_save(state, entry, overwrite=True)
    return dict(file=ENTRY_NAME, sha256=_sha256(entry), bytes=os.path.getsize(entry))


def check_entry(folder: str, config: dict = None) -> None:
    """The folder's model.pt read weights-only (explicitly: refused in one line if it would run code,
    whatever TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD says) and compared with the safetensors, bitwise: the
    same names, dtypes and values, the same architecture. What the sha256 in the JSON cannot show for a
    folder someone made by hand; a folder without an entry has nothing to check."""
    config = config or read_config(folder)
    if "entry" not in config:
        return
    config, tensors = read_folder_delta(folder)  # its sha256 checked, and the entry's
    entry = os.path.join(folder, ENTRY_NAME)
    state = load_checkpoint_file(entry)
    sd = {k: v for k, v in state["model"].items() if k not in META_KEYS}
    if FINGERPRINT_KEY not in state["model"]:
        raise DeltaFileError(f"{entry}: not a delta checkpoint (no base fingerprint); re-export the folder")
    arch = getattr(_args(state), "arch", None)
    if arch != config["arch"]:
        raise DeltaFileError(f"{entry}: architecture {arch!r}, the folder's JSON says {config['arch']!r}")
    if set(sd) != set(tensors):
        extra, gone = sorted(set(sd) - set(tensors)), sorted(set(tensors) - set(sd))
        raise DeltaFileError(f"{entry}: its tensors are not the folder's: "
                             + "; ".join(p for p in (f"only here: {', '.join(extra[:3])}" if extra else "",
                                                     f"missing here: {', '.join(gone[:3])}" if gone else "") if p))
    for k in sorted(sd):
        a, b = sd[k], tensors[k]
        if a.dtype != b.dtype or a.shape != b.shape or not torch.equal(a, b):
            raise DeltaFileError(f"{entry}: tensor {k} differs from the one in delta_model.safetensors; the "
                                 "folder's two files disagree: re-export it, or load it without the entry "
                                 "(the hub, or --model-overrides with delta_file)")


def usage(out: str, config: dict) -> str:
    folder = os.path.abspath(out)
    # DIR/model.pt is a `.pt` delta: fairseq loads it, and the model finds its base by the one lookup
    # (the recorded name, path, fingerprint). The plugin's path is spelled out, not "$(unifairseq-user-dir)":
    # a substitution that prints nothing (the command not on PATH) leaves fairseq an empty --user-dir,
    # which it accepts silently and then fails on something else
    model = "DeltaRobertaModel" if config["family"] == "roberta" else "DeltaBARTModel"
    return "\n".join([
        f"delta written to {folder} (base {config['base']['name']!r}, "
        f"fingerprint {config['base']['fingerprint'][:12]})",
        "decode it with (add your task's flags: --task, languages, beam, ...):",
        f"  fairseq-generate DATA-BIN --user-dir {shlex.quote(user_dir())} --path "
        f"{shlex.quote(os.path.join(folder, config['entry']['file']))} \\",
        "      --required-batch-size-multiple 1",
        "  (on another machine --user-dir is the path `unifairseq-user-dir` prints there; fairseq-interactive "
        "takes the same --path; another base: --model-overrides \"{'delta_base': 'NAME_OR_PATH'}\")",
        "or in Python:",
        f"  {model}.from_pretrained({config['base']['name']!r}, delta={folder!r}, data_name_or_path=DATA-BIN)"])


def read_input(path: str, base_flag=None, with_base_args: bool = False) -> dict:
    """What merge/unmerge read: a delta checkpoint (.pt), or a delta folder presented the same way (its
    tensors with the base's path and plan fingerprint under "model"; the model args are the base's with
    the delta's arch and flags on top when `with_base_args` -- a merged checkpoint is the base's args and
    weights -- else the folder's own flags and shape). The folder is read without unpickling."""
    if not is_delta_folder(path):
        return load_checkpoint_file(path)

    config, tensors = read_folder_delta(path)
    check_arch(path, config)
    rec = config["base"]
    own = dict(arch=config["arch"], **config["delta"])
    state = {"model": dict(tensors), "args": Namespace(**config["model"], **own), "cfg": None}
    if with_base_args:
        try:  # by name or path (verified below, on the weights read anyway), else by content
            found = find_base(base_flag, rec["name"], rec["fingerprint"], rec["path_hint"], verify=False, option="--base PATH")
        except bases.BaseNotFound as e:
            raise DeltaCheckpointError(f"{path}: {e}") from None
        base = load_checkpoint_file(found.path)
        have = bases.content_fingerprints(base["model"])
        if not bases.same_content(rec["fingerprint"], have):
            got = have[bases.fingerprint_version(rec["fingerprint"])]
            raise DeltaCheckpointError(
                f"{path}: this delta was trained on a different base model: the delta records base {rec['name']!r} "
                f"with fingerprint {rec['fingerprint'][:16]}…, {found.path} has {got[:16]}…; pass its own base "
                "with --base NAME_OR_PATH")

        base_args = model_args(base) if (base.get("args") is not None or base.get("cfg") is not None) else None
        base_arch = base_args.get("arch") if isinstance(base_args, dict) else getattr(base_args, "arch", None)
        if family_of(base_arch) not in (None, config["family"]):
            raise DeltaCheckpointError(f"{path}: a {config['family']} delta ({config['arch']}) cannot be merged into "
                                       f"the {family_of(base_arch)} base {found.path} ({base_arch}); pass a "
                                       f"{config['family']} base with --base NAME_OR_PATH")
        if base.get("args") is not None or base.get("cfg") is not None:  # else: the folder's own flags and shape
            state.update(args=copy.deepcopy(base.get("args")), cfg=copy.deepcopy(base.get("cfg")))
            for k, v in {**own, "_name": config["arch"]}.items():
                set_model_arg(state, k, v)
        state["model"][BASE_PATH_KEY] = str_to_tensor(found.path)
    state["model"][FINGERPRINT_KEY] = str_to_tensor(rec["plan_fingerprint"])
    return state
