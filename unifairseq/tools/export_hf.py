"""unifairseq-export hf: a fairseq checkpoint -> Hugging Face transformers (and peft) folders.

    unifairseq-export hf CKPT OUT                a plain fairseq BART / mBART / RoBERTa checkpoint, or a
                                                 mergeable delta (LoRA, DoRA, (IA)³, BitFit) merged first
                                                 (`unifairseq-export merge`): OUT = config.json + model.safetensors
    unifairseq-export hf DELTA OUT --base-only   the base the delta was trained on
    unifairseq-export hf DELTA OUT --peft        OUT/base (transformers folder of the base) + OUT/adapter (peft:
                                                 adapter_config.json + adapter_model.safetensors) for LoRA, DoRA or
                                                 (IA)³ deltas; a trained classification head is a modules_to_save
    unifairseq-export hf DELTA OUT --adapters    a parallel FFN adapter (pa_ffn, scaled_pa) on BART in AdapterHub
                                                 adapters' format, for a transformers 4.57 + adapters 1.3.0
                                                 environment (tools/export_adapters.py)

Tokenizer files: `--hf-vocab DIR` (the HF folder the base was imported from with unifairseq-import-hf)
restores that folder's vocabulary order and copies its tokenizer files; `--bpe-dir DIR` (fairseq's GPT-2
BPE encoder.json + vocab.bpe) writes vocab.json + merges.txt for bart/roberta models with GPT-2 BPE
dictionaries; without either the HF ids are the fairseq dictionary ids and a tokenizer that produces
them must be supplied by the user. Both need the fairseq dictionary (`--dict`, default: dict.txt beside
the base checkpoint). OUT is written to a temporary folder and renamed; an existing OUT is replaced
only with --force.

Prefix tuning, adapters, MAM and prompt tuning have no transformers/peft form: they are refused with
the alternatives (docs/huggingface.md: why the AdapterHub `adapters` library is not installed here).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Optional

from unifairseq.core.fileperm import as_umask
from unifairseq.convert.fairseq_to_hf import (HFExportError, hf_module, import_transformers, save, to_hf,
                                              upgrade_legacy)
from unifairseq.fairseq.checkpoint_io import DeltaCheckpointError
from unifairseq.fairseq.ckpt_args import model_args
from unifairseq.fairseq.plain_args import namespace_args
from unifairseq.tools.export import HEAD_PREFIX, LoadedDelta, linear_deltas, merged_state, refuse_unmergeable
from unifairseq.tools.export_adapters import export_adapters

ADAPTERS_VERDICT = ("the AdapterHub `adapters` library, which has them, cannot be installed beside this project's "
                    "transformers 5.24 (adapters 1.3.0, its newest release, requires transformers~=4.57.6); for "
                    "fairseq, `unifairseq-export inference CKPT OUT.pt` writes the small delta file")


def _dict_symbols(dict_path: Optional[str], base_path: Optional[str]):
    from fairseq.data import Dictionary

    if dict_path is None and base_path is not None:
        guess = os.path.join(os.path.dirname(os.path.abspath(base_path)), "dict.txt")
        dict_path = guess if os.path.isfile(guess) else None
    if dict_path is None:
        return None
    if not os.path.isfile(dict_path):
        raise HFExportError(f"--dict {dict_path}: no such file")
    return Dictionary.load(dict_path).symbols


class _Folder:
    """A staging folder beside OUT, renamed onto OUT at the end (the old OUT removed only with force, and
    never when it holds one of the inputs)."""

    def __init__(self, out: str, force: bool, inputs=()):
        self.out = os.path.abspath(out)
        if os.path.exists(self.out) and not os.path.isdir(self.out):
            raise HFExportError(f"{out} exists and is not a folder; OUT is a folder (config.json, model.safetensors)")
        if os.path.exists(self.out) and not force:
            raise HFExportError(f"refusing to overwrite {out}; pass --force to replace it")
        for path in inputs:
            if path and os.path.commonpath([self.out, os.path.abspath(path)]) == self.out:
                raise HFExportError(f"the output folder {out} holds the input {path}; write the export elsewhere")
        os.makedirs(os.path.dirname(self.out), exist_ok=True)
        self.force = force

    def __enter__(self):
        self.stage = tempfile.mkdtemp(prefix=os.path.basename(self.out) + ".tmp-", dir=os.path.dirname(self.out))
        return self.stage

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.stage, ignore_errors=True)
            return False
        as_umask(self.stage)  # mkdtemp made it 0700 and safetensors its files 0600
        old = None
        if os.path.exists(self.out):
            old = self.stage + ".old"
            os.rename(self.out, old)
        os.rename(self.stage, self.out)
        if old:
            shutil.rmtree(old, ignore_errors=True)
        return False


def _plain_args(state, fallback=None):
    """The model args; a base file without any (as some test bases) takes the delta's, which describe the
    same network."""
    try:
        return model_args(state)
    except DeltaCheckpointError:
        if fallback is None:
            raise
        return model_args(fallback)


def export_hf(ckpt, out: str, base: Optional[str] = None, base_only: bool = False, peft: bool = False,
              head: Optional[str] = None, hf_vocab: Optional[str] = None, dict_path: Optional[str] = None,
              bpe_dir: Optional[str] = None, peft_base_name: Optional[str] = None, force: bool = False,
              adapters: bool = False) -> dict:
    """`ckpt`: a LoadedDelta (read with the base's args), or a path: a plain fairseq checkpoint, a delta
    `.pt` or a delta folder (never unpickled)."""
    if sum((base_only, peft, adapters)) > 1:
        raise HFExportError("--base-only, --peft and --adapters are alternatives; give one")
    import_transformers()  # before any work: the one-line message when it is not installed
    delta = ckpt if isinstance(ckpt, LoadedDelta) else LoadedDelta.read(ckpt, base, with_base_args=True)
    ckpt, state, is_delta = delta.path, delta.state, delta.is_delta
    if (base_only or peft or adapters) and not is_delta:
        raise HFExportError(f"{ckpt!r} is a plain fairseq checkpoint (no delta); --base-only/--peft/--adapters need "
                            "a delta checkpoint; drop them to convert this model as it is")
    base_path = ckpt
    if is_delta:
        base_path = delta.base_path  # a name resolves to its file (dict.txt beside it)
        base_state = delta.base_state
    kw = dict(hf_vocab_dir=hf_vocab, dict_symbols=_dict_symbols(dict_path, base_path))
    with _Folder(out, force, (ckpt, base_path, dict_path, hf_vocab, bpe_dir)) as stage:
        if not is_delta:
            hf = to_hf(state["model"], _plain_args(state), head=head, **kw)
            save(hf, stage, kw["dict_symbols"], bpe_dir)
        elif base_only:
            hf = to_hf(base_state["model"], _plain_args(base_state, state), **kw)
            save(hf, stage, kw["dict_symbols"], bpe_dir)
        elif adapters:
            hf = export_adapters(state, base_state, delta.plan, stage, kw, bpe_dir, _plain_args(base_state, state))
        elif peft:
            hf = _export_peft(delta, stage, os.path.abspath(out), head, kw, bpe_dir, peft_base_name)
        else:
            try:
                refuse_unmergeable(delta.plan)
            except DeltaCheckpointError as e:
                raise HFExportError(f"no transformers folder for this delta. {e}. For Hugging Face: LoRA, DoRA and "
                                    f"(IA)³ deltas export merged or as peft adapters (--peft); prefixes, adapters, "
                                    f"MAM and prompts have no transformers/peft form, and {ADAPTERS_VERDICT}; a "
                                    "parallel FFN adapter (pa_ffn, scaled_pa) alone exports for it with --adapters"
                                    ) from None
            # the one merge (tools/export.py), heads travel with it; in memory, with the args as a reader of
            # the merged file sees them (plain_args.py)
            merged = namespace_args(merged_state(delta)[0])
            hf = to_hf(merged["model"], _plain_args(merged), head=head, **kw)
            save(hf, stage, kw["dict_symbols"], bpe_dir)
        with open(os.path.join(stage, "unifairseq_export.json"), "w", encoding="utf-8") as f:
            json.dump({"source": os.path.abspath(ckpt), "notes": hf.notes}, f, indent=2)
    return dict(out=out, family=hf.family, class_name=hf.class_name, notes=hf.notes)


def peft_method(plan):
    """The plan's one method, when peft has its form at every site of it (Method.peft_form), with the
    PeftType name; else HFExportError naming what has no form, or the two forms one folder would need."""
    names = sorted({m.name for m in plan.methods})
    forms = {m.name: {m.peft_form(s) for s in plan.specs if s.method == m.name} for m in plan.methods}
    other = [n for n in names if None in forms[n]]
    if other or len(names) != 1 or len(forms[names[0]]) != 1:
        why = (f"{', '.join(other)} {'has' if len(other) == 1 else 'have'} no peft form" if other else
               f"{' + '.join(names)} would need two peft adapter types in one folder")
        raise HFExportError(f"--peft: {why}; peft takes LoRA, DoRA (LoRA use_dora) or (IA)³ deltas alone. Export "
                            f"the merged model instead (drop --peft) for LoRA/DoRA/(IA)³/BitFit; prefixes, adapters, "
                            f"MAM and prompts have no transformers/peft form, and {ADAPTERS_VERDICT}")
    method = plan.methods[0]
    return method, forms[method.name].pop()


def _export_peft(delta, stage, final_out, head, kw, bpe_dir, peft_base_name):
    from safetensors.torch import save_file

    state, base_state, plan = delta.state, delta.base_state, delta.plan
    method, peft_type = peft_method(plan)
    delta_sd, base_sd = state["model"], upgrade_legacy(base_state["model"])
    heads = delta.heads
    if head is None and len(heads) > 1:
        raise HFExportError(f"the delta has {len(heads)} classification heads ({', '.join(heads)}); name one with --head")
    head = head or (heads[0] if heads else None)
    hf = to_hf(base_sd, _plain_args(base_state, state), **kw)  # the base folder; hf.class_name: the adapter's model
    tensors, modules = {}, {}
    for host, module in linear_deltas(plan, delta_sd, base_sd):
        name = hf_module(hf.family, host)
        modules[name] = module
        p = f"base_model.model.{name}."
        for k, v in method.peft_tensors(module).items():
            tensors[p + k] = v
    targets = list(modules)
    modules_to_save, adapter_cls = None, hf.class_name
    if head is not None:
        if hf.family == "roberta":
            adapter_cls, module = "RobertaForSequenceClassification", "classifier"
        else:
            adapter_cls = hf.class_name.replace("ForConditionalGeneration", "ForSequenceClassification")
            module = "classification_head"
        modules_to_save = [module]
        hp = f"{HEAD_PREFIX}{head}."
        for k, v in delta_sd.items():
            if k.startswith(hp):
                tensors[f"base_model.model.{module}.{k[len(hp):]}"] = v
        hf.config.num_labels = delta_sd[hp + "out_proj.weight"].shape[0]  # *ForSequenceClassification's head shape
    base_dir = os.path.join(stage, "base")
    os.makedirs(base_dir)
    save(hf, base_dir, kw["dict_symbols"], bpe_dir)
    cfg = {"peft_type": peft_type, "base_model_name_or_path": peft_base_name or os.path.join(final_out, "base"),
           "task_type": "SEQ_CLS" if head else ("SEQ_2_SEQ_LM" if hf.family != "roberta" else None),
           "target_modules": targets, "modules_to_save": modules_to_save, "inference_mode": True,
           "fan_in_fan_out": False,
           "auto_mapping": {"base_model_class": adapter_cls,
                            "parent_library": f"transformers.models.{hf.family}.modeling_{hf.family}"}}
    cfg.update(method.peft_config(plan.cfg, modules))
    adapter_dir = os.path.join(stage, "adapter")
    os.makedirs(adapter_dir)
    save_file({k: v.detach().float().contiguous() for k, v in tensors.items()},
              os.path.join(adapter_dir, "adapter_model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(adapter_dir, "adapter_config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2)
    hf.notes.append(f"peft {peft_type} adapter on {len(targets)} modules ({method.name}) for {adapter_cls}")
    return hf


def run(a, src=None) -> None:
    """`src`: the input as the command line read it (a LoadedDelta), default a.ckpt."""
    for k, v in export_hf(a.ckpt if src is None else src, a.out, a.base, a.base_only, a.peft, a.head, a.hf_vocab, a.dict_path, a.bpe_dir,
                          a.peft_base_name, a.force, a.adapters).items():
        if k == "notes":
            for n in v:
                print(f"unifairseq-export hf: {n}")
    print(f"unifairseq-export hf: wrote {a.out}")
