"""fairseq's own checkpoint loading under --user-dir: weights-only always, and a delta folder as --path.

fairseq's `checkpoint_utils.load_checkpoint_to_cpu` (behind fairseq-generate/-interactive --path,
fairseq-train's --restore-file, the hub's from_pretrained) calls `torch.load(f)` with no flags, so
`TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1` in the environment turns unpickling of arbitrary code back on.
Once unifairseq is registered (user_dir, unifairseq.fairseq.register(), the hub's from_pretrained),
that function is replaced by `load_checkpoint_to_cpu` below, which reads the file with
`weights_only=True` explicitly (checkpoint.load_checkpoint_file, fairseq's allow-list of
safe_globals.py) and then does exactly what fairseq's does after torch.load (model overrides,
the cfg as OmegaConf, `_upgrade_state_dict`). Plain fairseq without --user-dir is not changed:
there `--path` is loaded by torch's default, which that variable turns into a full unpickle.

A shared delta folder given as the path (`fairseq-generate DATA --user-dir ... --path my_delta`)
stands for its base plus the overrides that put the delta on it: the base is found by the one lookup
(checkpoint.find_base: `delta_base` in --model-overrides or $UNIFAIRSEQ_DELTA_BASE, else the
folder's recorded name, path and fingerprint), read weights-only, and `arch`, `_name` and
`delta_file` are set as `--model-overrides` would set them. Nothing in the folder is unpickled.
"""
from __future__ import annotations

import os

_ORIGINAL = None


def delta_folder_as_base(path: str, arg_overrides):
    """(base file, overrides) for a delta folder; (path, overrides) unchanged for anything else."""
    from unifairseq.core.deltafile import is_delta_folder, read_config

    if not is_delta_folder(path):
        return path, arg_overrides
    from unifairseq.fairseq.checkpoint import find_base

    config = read_config(path)
    rec = config["base"]
    overrides = dict(arg_overrides or {})
    # popped: the base is resolved here once; left in, the model would load it again
    flag = overrides.pop("delta_base", None) or os.environ.get("UNIFAIRSEQ_DELTA_BASE")
    # unverified by name or path: the base is read right after, and apply_delta checks its content
    found = find_base(flag, rec["name"], rec["fingerprint"], rec["path_hint"], verify=False,
                      option="--model-overrides \"{'delta_base': 'PATH'}\" or UNIFAIRSEQ_DELTA_BASE=PATH")
    import logging

    logging.getLogger("unifairseq.fairseq").info(f"unifairseq: delta folder {path}: base {found.path} found {found.how}")
    overrides.update(arch=config["arch"], _name=config["arch"], delta_file=os.path.abspath(path))
    return found.path, overrides


def load_checkpoint_to_cpu(path, arg_overrides=None, load_on_all_ranks=False):
    """fairseq's function of the same name, with torch.load(weights_only=True) and delta folders."""
    from fairseq import checkpoint_utils
    from fairseq.file_io import PathManager

    if PathManager.path_requires_pathmanager(path):  # a remote path: fairseq's own handling
        return _ORIGINAL(path, arg_overrides, load_on_all_ranks)
    from omegaconf import OmegaConf

    from unifairseq.fairseq.checkpoint import load_checkpoint_file

    path, arg_overrides = delta_folder_as_base(path, arg_overrides)
    state = load_checkpoint_file(path)
    # from here on, what fairseq 0.12's load_checkpoint_to_cpu does after its torch.load
    if state.get("args") is not None and arg_overrides is not None:
        for arg_name, arg_val in arg_overrides.items():
            setattr(state["args"], arg_name, arg_val)
    if state.get("cfg") is not None:
        from omegaconf import __version__ as oc_version
        from omegaconf import _utils

        if oc_version < "2.2":  # fairseq's hack to hold a Namespace in a DictConfig
            old_primitive = _utils.is_primitive_type
            _utils.is_primitive_type = lambda _: True
            state["cfg"] = OmegaConf.create(state["cfg"])
            _utils.is_primitive_type = old_primitive
            OmegaConf.set_struct(state["cfg"], True)
        else:
            state["cfg"] = OmegaConf.create(state["cfg"], flags={"allow_objects": True})
        if arg_overrides is not None:
            checkpoint_utils.overwrite_args_by_name(state["cfg"], arg_overrides)
    return checkpoint_utils._upgrade_state_dict(state)


def install() -> None:
    """Replace fairseq's loader (idempotent). Its callers look it up in the module at call time."""
    global _ORIGINAL
    from fairseq import checkpoint_utils

    if checkpoint_utils.load_checkpoint_to_cpu is load_checkpoint_to_cpu:
        return
    _ORIGINAL = checkpoint_utils.load_checkpoint_to_cpu
    checkpoint_utils.load_checkpoint_to_cpu = load_checkpoint_to_cpu
