"""Delta checkpoints: one small file per task on top of one shared base model.

A delta model's `state_dict()` -- which is what fairseq's trainer writes into
`checkpoint_last.pt`, `checkpoint_best.pt`, epoch/update checkpoints -- holds only the
trained tensors plus two small entries:

  unifairseq_meta.fingerprint, unifairseq_meta.base_path, unifairseq_meta.info (checkpoint_io.py)

Loading such a dict (resume, fairseq-generate, hub `from_pretrained`) first loads the
base from `--delta-base` if given, else from the stored path, checks it as a delta folder is
checked (fairseq/deltacheck.py: base content fingerprint, else the plan fingerprint of older files;
the task's dictionaries; the tensors' names, shapes and dtypes; a base mismatch is refused with both
fingerprints unless `--delta-allow-base-mismatch`), then puts the delta tensors on top. Loading a
full checkpoint (an official `bart.large/model.pt` through `--restore-file` or
`--finetune-from-model`) records it as the base, whatever its file name: base or delta is decided
by the content.

A shared delta folder (core/deltafile.py) comes in through `delta_file` (model overrides or the
hub's `delta=`): fairseq loads the base as a full checkpoint, then `apply_delta_file` puts the
folder's tensors on top (deltafolder.py), with nothing unpickled. File I/O, the meta keys and the
base lookup are the layer below (checkpoint_io.py).
"""
from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict
from typing import Optional

import torch

from unifairseq.core import bases
from unifairseq.core.bank import BANK_ATTR
from unifairseq.core.modules import base_init_values, is_delta_name
from unifairseq.fairseq.basefit import other_size
from unifairseq.fairseq.checkpoint_io import (BASE_PATH_KEY, FINGERPRINT_KEY, INFO_KEY, META_KEYS, DeltaCheckpointError,
                                              base_name_of, find_base, fingerprint, is_delta_only,
                                              load_checkpoint_file, str_to_tensor, tensor_to_str)
from unifairseq.fairseq.deltacheck import check_base, check_dictionary, check_tensors
from unifairseq.fairseq.deltafolder import apply_delta

logger = logging.getLogger(__name__)

class DeltaCheckpointMixin:
    """For fairseq models with deltas: what `state_dict()` saves and how `load_state_dict()` loads.

    Set on the model by the builder: `delta_plan` (DeltaPlan), `save_delta_only`, `delta_base`
    (override path), `delta_allow_base_mismatch`.
    """

    base_path: Optional[str] = None  # where the current base weights came from
    base_fingerprint: Optional[str] = None  # plan-dependent (the old .pt deltas' check)
    base_content: Optional[str] = None  # plan-independent, of the base file's tensors (core/bases.py)
    base_contents: Optional[dict] = None  # version -> content fingerprint (v1 verifies older deltas)
    base_name: Optional[str] = None
    dictionary_fingerprints: Optional[dict] = None  # set by the builder from the task's dictionaries

    def info(self) -> dict:
        return dict(base_name=self.base_name, base_content=self.base_content,
                    dictionary=self.dictionary_fingerprints or {})

    def full_state_dict(self) -> "OrderedDict[str, torch.Tensor]":
        return super().state_dict()

    def state_dict(self, destination=None, prefix: str = "", keep_vars: bool = False):
        full = super().state_dict(destination=destination, prefix=prefix, keep_vars=keep_vars)
        if not getattr(self, "save_delta_only", False):
            if self.base_content is not None:  # --delta-save-full: the base's record travels (not the weights')
                full[prefix + INFO_KEY] = str_to_tensor(json.dumps(self.info(), sort_keys=True))
            return full
        if self.base_fingerprint is None:
            self.base_fingerprint = fingerprint(self.full_state_dict(), self.delta_plan)
        out = OrderedDict((k, v) for k, v in full.items() if self.delta_plan.is_trainable(k[len(prefix):]))
        out[prefix + FINGERPRINT_KEY] = str_to_tensor(self.base_fingerprint)
        out[prefix + BASE_PATH_KEY] = str_to_tensor(self.base_path or "")
        out[prefix + INFO_KEY] = str_to_tensor(json.dumps(self.info(), sort_keys=True))
        return out

    def load_state_dict(self, state_dict, strict=True, model_cfg=None, args=None):
        state_dict = OrderedDict(state_dict)
        stored_fp = state_dict.pop(FINGERPRINT_KEY, None)
        stored_path = state_dict.pop(BASE_PATH_KEY, None)
        info = state_dict.pop(INFO_KEY, None)
        info = json.loads(tensor_to_str(info)) if info is not None else {}
        stored_fp = tensor_to_str(stored_fp) if stored_fp is not None else None
        stored_path = tensor_to_str(stored_path) if stored_path is not None else None
        full = self.full_state_dict()
        if is_delta_only(state_dict, full, self.delta_plan):
            self._ensure_base(stored_path, info)
            self._check_delta(state_dict, stored_fp, stored_path, info)
            merged = OrderedDict((k, v) for k, v in self.full_state_dict().items())
            merged.update(state_dict)
            result = super().load_state_dict(merged, strict=strict, model_cfg=model_cfg, args=args)
            # the delta's record of its base travels on, whatever path the base came from this time
            if stored_path:
                self.base_path = self.base_path or stored_path
            # the name the delta was trained under stays its base's name, wherever the file is now
            self.base_name = info.get("base_name") or self.base_name
            self.base_content = self.base_content or info.get("base_content")
            self._load_pending({k.split(".")[1] for k in state_dict if k.startswith(BANK_ATTR + ".")})
            return result
        # before fairseq's upgrades touch the dict; a full checkpoint of a delta model (--delta-save-full)
        # records its base, whose content differs from its own where a plan trains in place (BitFit)
        recorded = info.get("base_content")
        contents = ({bases.fingerprint_version(recorded): recorded} if recorded
                    else bases.content_fingerprints(state_dict))
        self._refuse_other_size(state_dict, full, repr(getattr(self, "base_path_hint", None) or "checkpoint"))
        result = super().load_state_dict(state_dict, strict=strict, model_cfg=model_cfg, args=args)
        # a full checkpoint (the pretrained model through --restore-file / --finetune-from-model, or the
        # --path of fairseq-generate under a delta folder) is the base
        self.base_path = getattr(self, "base_path_hint", None) or self.base_path
        self.base_name = (info.get("base_name") or base_name_of(self.base_path, getattr(self, "delta_base", None))
                          or self.base_name)
        self.base_content, self.base_contents = recorded or contents[bases.CONTENT_VERSION], contents
        self.base_fingerprint = fingerprint(self.full_state_dict(), self.delta_plan)
        if getattr(self, "delta_file", None):
            self.apply_delta_file(self.delta_file)
        if stored_fp is not None and stored_fp != self.base_fingerprint:
            logger.warning("unifairseq: loaded a full checkpoint whose recorded base fingerprint differs")
        self._load_pending(())
        return result

    def _load_pending(self, skip) -> None:
        """A bank's delta files (--bank-deltas) wait for the base (model_bank.ModelBank.add after_base): now it
        is in. `skip`: deltas whose trained values the checkpoint being resumed holds (they win)."""
        bank = self.__dict__.get("bank")
        if bank is not None:
            bank.load_pending(skip=skip)

    def base_init_values(self, sd, prefix: str = ""):
        """{key: value} of the delta tensors that start from the base in `sd` (DoRA's magnitude; a bank's
        BitFit biases and DoRA magnitudes): what fresh deltas hold on that base."""
        out = base_init_values(self, sd, prefix)
        bank = self.__dict__.get("bank")
        if bank is not None:
            out.update(bank.from_base(sd, prefix))
        return out

    # -------------------------------------------------------------- base
    def _refuse_other_size(self, sd, own, source: str) -> None:
        problem = other_size(sd, own, getattr(self, "args", None), source)  # before torch's line per tensor
        if problem:
            raise DeltaCheckpointError(problem)

    def load_base(self, path: str, state: Optional[dict] = None) -> None:
        """Load the frozen base weights from a (full) fairseq checkpoint file (`state`: the file, read already)."""
        state = state if state is not None else load_checkpoint_file(path)
        sd = state["model"]
        if is_delta_only(sd, self.full_state_dict(), self.delta_plan) and any(k in sd for k in META_KEYS):
            raise DeltaCheckpointError(f"{path!r} is itself a delta checkpoint, not a base model; point "
                                       "--delta-base at the full pretrained checkpoint (e.g. bart.large/model.pt)")
        own = self.full_state_dict()
        contents = bases.content_fingerprints(sd)
        self._refuse_other_size(sd, own, repr(path))
        self.upgrade_state_dict(sd)  # fairseq's checkpoint upgrades (and our missing-delta fill)
        for k, v in sd.items():
            if k in own and tuple(own[k].shape) != tuple(v.shape):
                raise DeltaCheckpointError(
                    f"base model {path!r} does not fit this model: {k} has shape {tuple(v.shape)} there and "
                    f"{tuple(own[k].shape)} here (another architecture or dictionary?)")
        # keep the current delta values, except those that start from the base (DoRA's m): under fresh
        # deltas they must come from this base; a delta loaded next overwrites them anyway
        from_base = self.base_init_values(sd)
        keep = {k: v for k, v in own.items() if is_delta_name(k) and k not in from_base}
        sd = OrderedDict(sd)
        sd.update(keep)
        torch.nn.Module.load_state_dict(self, sd, strict=True)
        self.base_path = os.path.abspath(path)
        self.base_content, self.base_contents = contents[bases.CONTENT_VERSION], contents
        self.base_name = base_name_of(path, getattr(self, "delta_base", None))
        self.base_fingerprint = fingerprint(self.full_state_dict(), self.delta_plan)
        logger.info(f"unifairseq: base model loaded from {path} (fingerprint {self.base_fingerprint[:12]})")

    def _ensure_base(self, stored_path: Optional[str], info: Optional[dict] = None) -> None:
        """Find the base of a delta-only checkpoint: --delta-base / UNIFAIRSEQ_DELTA_BASE (a name or a
        path), else the recorded name, the recorded path, or the recorded content fingerprint."""
        if self.base_path is not None:
            return
        info = info or {}
        override = getattr(self, "delta_base", None) or os.environ.get("UNIFAIRSEQ_DELTA_BASE")
        if not (override or stored_path or info.get("base_name")):
            raise DeltaCheckpointError(
                "this is a delta checkpoint and no base model is known: pass the base checkpoint with "
                "--delta-base NAME_OR_PATH (fairseq-train), --model-overrides \"{'delta_base': 'PATH'}\" "
                "(fairseq-generate) or UNIFAIRSEQ_DELTA_BASE=PATH")
        try:
            found = find_base(override, info.get("base_name"), info.get("base_content"), stored_path)
        except bases.BaseNotFound as e:
            trained_on = stored_path or info.get("base_name")
            raise DeltaCheckpointError(f"this delta checkpoint was trained on the base {trained_on!r}, which "
                                       f"is not there: {e}") from None
        logger.info(f"unifairseq: base {found.path} found {found.how}")
        self.load_base(found.path)

    def apply_delta_file(self, folder: str) -> None:
        """Put a shared delta folder's tensors on the loaded base (deltafolder.py)."""
        apply_delta(self, folder)

    def _check_delta(self, tensors, stored_fp: Optional[str], stored_path: Optional[str], info: dict) -> None:
        """A .pt delta gets a folder's checks (fairseq/deltacheck.py): the base by the content fingerprint
        it records (else, older files, the plan fingerprint), the dictionaries it records (older files
        without a record: a warning), the tensors' names, shapes and dtypes."""
        where = f"the delta checkpoint (base {stored_path or 'unknown path'})"
        check_base(self, where, info.get("base_content"), info.get("base_name"), stored_fp)
        # files from before the record have no "dictionary" at all; an empty record is refused like a folder's
        check_dictionary(self, where, info.get("dictionary"), legacy_ok="dictionary" not in info)
        check_tensors(self, where, tensors, complete=False)
