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

from unifairseq import __version__
from unifairseq.core import bases
from unifairseq.core.config import DeltaConfig
from unifairseq.core.deltafile import write_delta
from unifairseq.fairseq.checkpoint import (BASE_PATH_KEY, FINGERPRINT_KEY, INFO_KEY, META_KEYS, DeltaCheckpointError,
                                           _str_to_tensor, _tensor_to_str, base_name_of,
                                           file_content_fingerprint)
from unifairseq.fairseq.models.sharing import SHAPE_ARGS

HEAD_PREFIX = "classification_heads."


def _args(state: dict):
    from unifairseq.tools.export import model_args

    args = model_args(state)
    return Namespace(**args) if isinstance(args, dict) else args


def heads_of(sd) -> dict:
    names = sorted({k[len(HEAD_PREFIX):].split(".")[0] for k in sd if k.startswith(HEAD_PREFIX)})
    return {n: dict(num_classes=int(sd[f"{HEAD_PREFIX}{n}.out_proj.weight"].shape[0]),
                    inner_dim=int(sd[f"{HEAD_PREFIX}{n}.dense.weight"].shape[0])) for n in names}


def base_record(sd, ckpt: str, flag):
    """name, content fingerprint, plan fingerprint and path of the delta's base. A checkpoint from before
    the content fingerprint was recorded has it computed from its base file (found by --base or its path)."""
    info = json.loads(_tensor_to_str(sd[INFO_KEY])) if INFO_KEY in sd else {}
    path = _tensor_to_str(sd[BASE_PATH_KEY]) if BASE_PATH_KEY in sd else ""
    content = info.get("base_content")
    if not content:
        try:
            found = bases.resolve(flag, recorded_path=path or None)
        except bases.BaseNotFound as e:
            raise DeltaCheckpointError(f"{ckpt!r} records no base content fingerprint (made before unifairseq "
                                       f"recorded it) and its base cannot be read to compute it: pass --base "
                                       f"NAME_OR_PATH ({e})") from None
        content = file_content_fingerprint(found.path)
        path = path or found.path
    return dict(name=info.get("base_name") or base_name_of(path, flag), fingerprint=content,
                plan_fingerprint=_tensor_to_str(sd[FINGERPRINT_KEY]), path_hint=path or None), info


def dictionaries_of(family: str, ckpt: str, info: dict, dicts=None) -> dict:
    """What the delta records of its task's dictionaries, else the fingerprints of the dict files given
    (`dicts`: side -> dict.txt, a .pt delta from before they were recorded): a folder always has them."""
    from unifairseq.fairseq.models.sharing import dictionary_fingerprint

    if dicts:
        from fairseq.data import Dictionary

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
    from unifairseq.tools.export import parent_arch

    args = _args(state)
    sd = state["model"]
    parent = parent_arch(args.arch)
    base, info = base_record(sd, ckpt, base_flag)
    config = dict(unifairseq_version=__version__, family=parent.split("_")[0], arch=args.arch, parent_arch=parent,
                  delta=DeltaConfig.from_args(args).to_dict(),
                  model={k: getattr(args, k) for k in SHAPE_ARGS if getattr(args, k, None) is not None},
                  base=base, dictionary=dictionaries_of(parent.split("_")[0], ckpt, info, dicts), heads=heads_of(sd))
    config = write_delta(out, config, {k: v for k, v in sd.items() if k not in META_KEYS}, overwrite=force)
    print(usage(out, config))
    return config


def usage(out: str, config: dict) -> str:
    folder = os.path.abspath(out)
    arch = config["arch"]
    overrides = str({"arch": arch, "_name": arch, "delta_file": folder})
    # double quotes read best (fairseq's own docs write overrides so); shlex's quoting when the path needs it
    overrides = f'"{overrides}"' if not any(c in overrides for c in '"$`\\!') else shlex.quote(overrides)
    find = f'"$(unifairseq-base find {shlex.quote(folder)})"'
    return "\n".join([
        f"delta written to {folder} (base {config['base']['name']!r}, "
        f"fingerprint {config['base']['fingerprint'][:12]})",
        "decode it with (add your task's flags: --task, languages, beam, ...):",
        f'  fairseq-generate DATA-BIN --user-dir "$(unifairseq-user-dir)" --path {find} \\',
        f"      --model-overrides {overrides}",
        "  (fairseq-interactive takes the same --path and --model-overrides)",
        "or in Python:",
        f"  {'DeltaRobertaModel' if config['family'] == 'roberta' else 'DeltaBARTModel'}.from_pretrained("
        f"{config['base']['name']!r}, delta={folder!r}, data_name_or_path=DATA-BIN)"])


def read_input(path: str, base_flag=None, with_base_args: bool = False) -> dict:
    """What merge/unmerge read: a delta checkpoint (.pt), or a delta folder presented the same way (its
    tensors with the base's path and plan fingerprint under "model"; the model args are the base's with
    the delta's arch and flags on top when `with_base_args` -- a merged checkpoint is the base's args and
    weights -- else the folder's own flags and shape). The folder is read without unpickling."""
    from unifairseq.core.deltafile import is_delta_folder, read_delta
    from unifairseq.fairseq.checkpoint import load_checkpoint_file
    from unifairseq.tools.export import set_model_arg

    if not is_delta_folder(path):
        return load_checkpoint_file(path)
    from unifairseq.fairseq.deltacheck import check_arch

    config, tensors = read_delta(path)
    check_arch(path, config)
    rec = config["base"]
    own = dict(arch=config["arch"], **config["delta"])
    state = {"model": dict(tensors), "args": Namespace(**config["model"], **own), "cfg": None}
    if with_base_args:
        where = (base_flag, rec["name"], rec["fingerprint"], rec["path_hint"])
        try:  # by name or path (verified below, on the weights read anyway), else by content
            try:
                found = bases.resolve(*where)
            except bases.BaseNotFound:
                found = bases.resolve(*where, file_content_fingerprint)
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
        from unifairseq.fairseq.deltacheck import family_of
        from unifairseq.tools.export import model_args

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
        state["model"][BASE_PATH_KEY] = _str_to_tensor(found.path)
    state["model"][FINGERPRINT_KEY] = _str_to_tensor(rec["plan_fingerprint"])
    return state
