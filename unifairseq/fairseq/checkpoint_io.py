"""The bottom layer of delta checkpoints: reading and writing checkpoint files, the meta keys a delta's
state dict carries, their str <-> tensor encoding, the base lookup by name, path or content, the base
fingerprint under a plan, and the error every checkpoint reader raises. Of unifairseq.fairseq it imports
only plain_args and safe_globals, so the checks (deltacheck.py), the delta-folder reader (deltafolder.py), the torn-resume repair (resume.py),
the checkpoint mixin (checkpoint.py), the models and the tools all build on it without a loop.

  unifairseq_meta.fingerprint  sha256 of the frozen base under the plan (names, shapes, dtypes, sampled values)
  unifairseq_meta.base_path    where the base checkpoint was loaded from
  unifairseq_meta.info         JSON: the base's name and content fingerprint (core/bases.py, every byte,
                               independent of the method plan) and the fingerprints of the task's dictionaries
"""
from __future__ import annotations

import os
import re
import zipfile
from typing import Dict, Optional

import torch

from unifairseq.core import bases
from unifairseq.core.accounting import as_plan
from unifairseq.core.fileperm import as_umask
from unifairseq.core.tmpfiles import sweep_stale, tmp_path
from unifairseq.errors import UnifairseqError
from unifairseq.fairseq.plain_args import namespace_args
from unifairseq.fairseq.safe_globals import register_safe_globals

FINGERPRINT_KEY = "unifairseq_meta.fingerprint"
BASE_PATH_KEY = "unifairseq_meta.base_path"
INFO_KEY = "unifairseq_meta.info"
META_KEYS = (FINGERPRINT_KEY, BASE_PATH_KEY, INFO_KEY)


class DeltaCheckpointError(UnifairseqError, RuntimeError):
    """A checkpoint that cannot be used as asked; the message says why and what to do."""


# ----------------------------------------------------------------- file I/O
def load_checkpoint_file(path: str) -> dict:
    """torch.load with messages a user can act on (missing, truncated, corrupt, not fairseq)."""
    if not os.path.isfile(path):
        raise DeltaCheckpointError(f"checkpoint {path!r} does not exist")
    size = os.path.getsize(path)
    if size == 0:
        raise DeltaCheckpointError(f"checkpoint {path!r} is empty (0 bytes): the write that made it was "
                                   "interrupted; use another checkpoint or retrain")
    register_safe_globals()
    try:
        # weights_only explicitly: torch's default can be turned off by the environment
        # (TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1), and a stranger's file must never run code on load
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DeltaCheckpointError(
            f"checkpoint {path!r} ({size:,} bytes) is truncated or corrupt and cannot be read "
            f"({first}); re-copy or re-export it") from None
    except Exception as e:  # pickle.UnpicklingError and friends: not a torch checkpoint, or code to run
        text = str(e)
        if "Weights only load failed" in text or "Unsupported global" in text:
            what = re.search(r"GLOBAL (\S+)", text)
            raise DeltaCheckpointError(f"{path!r} holds a Python object beyond weights "
                                       f"({what.group(1) if what else 'a global not on the allow-list'}); refused: "
                                       "loading it could run code (unifairseq loads checkpoints weights-only)") from None
        raise DeltaCheckpointError(f"{path!r} is not a readable PyTorch checkpoint ({type(e).__name__}: "
                                   f"{text.splitlines()[0] if text else ''})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise DeltaCheckpointError(f"{path!r} is a PyTorch file but not a fairseq checkpoint (no 'model' entry)")
    return namespace_args(state)  # a merged file's args (plain_args.py) as the Namespace every reader expects


def weights_only_default_off() -> bool:
    """TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD set as torch reads it: a bare torch.load (fairseq's own) unpickles."""
    return os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "0").lower() in ("1", "y", "yes", "true")


def atomic_save(obj, path: str, overwrite: bool = False) -> None:
    """Write to a temporary file beside `path`, then rename: an interruption never leaves a
    half-written checkpoint, and an existing file is only replaced when asked."""
    if os.path.exists(path) and not overwrite:
        raise DeltaCheckpointError(f"{path!r} exists; refusing to overwrite it (pass --force to replace it)")
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    sweep_stale(d, names=[os.path.basename(path)], suffix=".pt")  # what a killed earlier export left here
    tmp = tmp_path(path)
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        as_umask(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# --------------------------------------------------------------- metadata
def str_to_tensor(s: str) -> torch.Tensor:
    return torch.tensor(list(s.encode("utf-8")), dtype=torch.uint8)


def tensor_to_str(t: torch.Tensor) -> str:
    return bytes(t.tolist()).decode("utf-8")


def file_content_fingerprint(path: str, version: str = bases.CONTENT_VERSION) -> str:
    """The plan-independent content fingerprint (core/bases.py) of a base checkpoint file; `version`:
    "v1" for the sampled one older deltas recorded."""
    return bases.content_fingerprint(load_checkpoint_file(path)["model"], version)


def find_base(flag: Optional[str] = None, name: Optional[str] = None, fingerprint: Optional[str] = None,
              recorded_path: Optional[str] = None, verify: bool = True, option: str = "--delta-base PATH") -> "bases.Found":
    """THE base lookup of every tool (fairseq-generate/-interactive/-train under --user-dir, the hub,
    unifairseq-export, unifairseq-bank, unifairseq-base): core/bases.py's search order, with the content
    fingerprints read by the weights-only loader above. `flag`: what the user gave (name or path);
    `name`, `fingerprint`, `recorded_path`: the delta's record; `verify=False` when the caller checks
    the content of the file it loads itself (nothing is read twice)."""
    return bases.resolve(flag, name, fingerprint, recorded_path, file_content_fingerprint, verify=verify, option=option)


def base_name_of(path: Optional[str], flag: Optional[str] = None) -> Optional[str]:
    """The name a delta records for its base: the name given with --delta-base, else the base file's
    folder (bart.large/model.pt -> bart.large; the same for checkpoint*.pt, whose file names say nothing
    about the model), else the file's stem (tiny_bart.pt -> tiny_bart)."""
    if flag and bases.as_path(flag) is None:
        return flag
    if not path:
        return None
    file = os.path.basename(path)
    if file == bases.BASE_FILE or file.startswith("checkpoint"):
        return os.path.basename(os.path.dirname(os.path.abspath(path)))
    return os.path.splitext(os.path.basename(path))[0]


def fingerprint(state: Dict[str, torch.Tensor], delta) -> str:
    """The frozen base tensors under `delta`'s plan (what it does not train): the fingerprint `.pt`
    deltas record and check (core.bases.sampled_digest)."""
    plan = as_plan(delta)
    return bases.sampled_digest(state, lambda name: plan.is_trainable(name) or name in META_KEYS or name.endswith("version"))


def is_delta_only(state_dict, model_keys, delta) -> bool:
    """True when the dict holds no base tensor of the model (a delta checkpoint)."""
    plan = as_plan(delta)
    return not any(k in model_keys and not plan.is_trainable(k) and not k.endswith("version")
                   for k in state_dict)
