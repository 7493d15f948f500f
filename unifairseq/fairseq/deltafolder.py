"""Shared delta folders (core/deltafile.py) on a base that fairseq loaded itself. Below the models and the
checkpoint mixin (checkpoint.py), which call it; it imports neither.

fairseq-generate and fairseq-interactive torch.load their --path, so what fairseq loads is the base, and
the delta folder comes through the model overrides, which reach the model args for old (`args`) and new
(`cfg`) checkpoints alike (the folder's model.pt, a `.pt` delta, is the other way in: `--path DIR/model.pt`,
its base found inside the model); spelled out:

    --path BASE/model.pt --model-overrides "{'arch': 'mam_bart_large', '_name': 'mam_bart_large',
                                              'delta_file': 'DELTA_DIR'}"

(`_name` because fairseq builds a cfg-style checkpoint's model by cfg.model._name, an args-style one by
args.arch.) The builder then takes the plan from the folder's JSON (`adopt_delta_args`: the JSON wins over
the base's args), and once fairseq has loaded the base state dict, `apply_delta` checks the base's content
fingerprint, the task's dictionaries and the model shape against the JSON and copies the tensors in.
"""
from __future__ import annotations

import copy
import hashlib
import logging
import os
from argparse import Namespace

import torch

from unifairseq.core import deltafile
from unifairseq.core.config import DeltaConfig
from unifairseq.core.deltaschema import DELTA_FIELDS
from unifairseq.core.modules import is_delta_name
from unifairseq.fairseq.checkpoint_io import find_base
from unifairseq.fairseq.deltacheck import (check_arch, check_base, check_dictionary, check_shape, check_tensors,
                                           family_of, refuse)
from unifairseq.fairseq.deltaread import read_folder_delta

logger = logging.getLogger("unifairseq.fairseq.models")


def dictionary_fingerprint(d) -> str:
    """sha256 of a fairseq Dictionary's symbols in order (what the embedding rows mean)."""
    return hashlib.sha256("\n".join(d.symbols).encode("utf-8")).hexdigest()


def task_dictionaries(task, encoder_decoder: bool) -> dict:
    """The dictionaries a model reads: BART's source and target; RoBERTa's source only (a
    sentence_prediction task's target dictionary is its label set, not the model's vocabulary)."""
    if task is None or getattr(task, "source_dictionary", None) is None:
        return {}
    out = {"source": dictionary_fingerprint(task.source_dictionary)}
    if encoder_decoder and getattr(task, "target_dictionary", None) is not None:
        out["target"] = dictionary_fingerprint(task.target_dictionary)
    return out


def _set(args, key, value) -> None:
    try:
        setattr(args, key, value)
    except Exception:  # an omegaconf node in struct mode
        from omegaconf import open_dict

        with open_dict(args):
            setattr(args, key, value)


def adopt_delta_args(args):
    """With `delta_file` in the args, the folder's JSON says the plan: its delta fields replace the
    base's (and preset defaults). Returns the JSON config, or None without a delta file."""
    folder = getattr(args, "delta_file", None)
    if not folder:
        return None
    config = deltafile.read_config(folder)
    check_arch(os.path.join(folder, deltafile.CONFIG_NAME), config)
    for key in DELTA_FIELDS:
        _set(args, key, config["delta"][key])
    return config


def register_heads(model, config) -> None:
    """RoBERTa: the delta's classification heads exist before fairseq loads the base (which has none)."""
    for name, h in (config or {}).get("heads", {}).items():
        model.register_classification_head(name, num_classes=h["num_classes"], inner_dim=h["inner_dim"])


def apply_delta(model, folder: str) -> None:
    """The folder's tensors on the base now in `model`, after checking it is the delta's base."""
    folder = os.path.abspath(folder)
    config, tensors = read_folder_delta(folder)
    base = config["base"]
    check_arch(folder, config)
    arch = getattr(getattr(model, "args", None), "arch", None)
    if family_of(arch) not in (None, config["family"]):
        refuse(model, f"{folder}: a {config['family']} delta ({config['arch']}) cannot go on this {family_of(arch)} "
                      f"model ({arch}); load it onto a {config['family']} base")
    check_base(model, folder, base["fingerprint"], base["name"])
    check_dictionary(model, folder, config["dictionary"])
    check_shape(model, folder, config["model"])
    check_tensors(model, folder, tensors)
    own = model.full_state_dict()
    saved = model.__dict__.setdefault("_base_in_place", {})
    with torch.no_grad():
        for k, v in tensors.items():
            if not k.startswith("classification_heads.") and not is_delta_name(k) and k not in saved:
                saved[k] = own[k].clone()  # a base tensor trained in place (BitFit): kept for a switch
            own[k].copy_(v)  # in place: the parameters, and the prefix caches keyed on their versions
    model.delta_file = folder
    model.base_name = base["name"] or model.base_name
    logger.info(f"unifairseq: delta {folder} applied ({config['tensors']['parameters']:,} parameters, "
                f"{config['arch']}) on base {base['name']!r}")


# ------------------------------------------------------------------ hub
def hub_arguments(model_name_or_path, checkpoint_file, data_name_or_path, delta, kwargs):
    """from_pretrained(base, delta=DIR): the base by name or path (None: the delta's own record), the
    delta folder as model overrides."""
    kwargs = dict(kwargs)
    config = deltafile.read_config(delta) if delta else None
    given = os.path.join(model_name_or_path, checkpoint_file) if model_name_or_path else None
    if given is None or not os.path.isfile(given):
        rec = config["base"] if config else {}
        # by name or path first, unverified: the base file is then read once, by fairseq, and apply_delta
        # checks its content; else by content (moved or renamed)
        found = find_base(model_name_or_path, rec.get("name"), rec.get("fingerprint"), rec.get("path_hint"),
                          verify=False, option="from_pretrained('BASE_FOLDER', ...)")
        logger.info(f"unifairseq: base {found.path} found {found.how}")
        model_name_or_path, checkpoint_file = os.path.dirname(found.path), os.path.basename(found.path)
    if config:
        kwargs.update(arch=config["arch"], _name=config["arch"], delta_file=os.path.abspath(delta))
    return model_name_or_path, checkpoint_file, data_name_or_path, kwargs


def load_delta(hub, folder: str):
    """Switch a loaded hub interface to another delta folder without re-reading the base file. Same
    plan: the tensors are copied in. Another plan: the model is rebuilt around the same in-memory base
    weights (what a previous delta trained in place is restored first). Returns the hub's model."""
    config = deltafile.read_config(folder)
    old = hub.model
    _restore_base(old)
    want = DeltaConfig.from_args(Namespace(**config["delta"])).to_dict()
    heads = set(getattr(old, "classification_heads", {}) or {})
    if want == old.delta_plan.cfg.to_dict() and set(config["heads"]) == heads:
        old.apply_delta_file(folder)
        return old
    args = copy.deepcopy(old.args)
    for key in DELTA_FIELDS:
        setattr(args, key, None)
    args.arch = args._name = config["arch"]
    args.delta_file, args.delta_base = os.path.abspath(folder), None
    new = hub.task.build_model(args)
    src, dst = old.full_state_dict(), new.full_state_dict()
    base_keys = [k for k in src if not is_delta_name(k) and not k.startswith("classification_heads.")]
    gone = [k for k in base_keys if k not in dst]
    if gone:
        refuse(new, f"{folder}: cannot rebuild around the loaded base: {gone[0]} has no place in {config['arch']}")
    with torch.no_grad():
        for k in base_keys:
            dst[k].copy_(src[k])
    new.base_path, new.base_name, new.base_content = old.base_path, old.base_name, old.base_content
    new.base_contents = old.base_contents
    new.apply_delta_file(folder)
    if getattr(old, "_is_generation_fast", False):  # the hub prepared its model (beamable cross-attention)
        new.prepare_for_inference_(hub.cfg)
    p = next(old.parameters())
    new.to(device=p.device, dtype=p.dtype)
    new.train(old.training)  # not chained: a fairseq module's train() may return None
    hub.models[0] = new
    hub.model = new
    return new


def _restore_base(model) -> None:
    saved = model.__dict__.get("_base_in_place") or {}
    own = model.full_state_dict()
    with torch.no_grad():
        for k, v in saved.items():
            own[k].copy_(v)
    saved.clear()
