"""`unifairseq-export hf DELTA OUT --adapters`: a parallel FFN adapter (`pa_ffn`, `scaled_pa`) on a post-LN
BART as an AdapterHub `adapters` folder (adapter_config.json + pytorch_adapter.bin, the layout
`model.save_adapter` writes), beside OUT/base (the transformers base).

`adapters` (1.3.0, its newest release) requires transformers~=4.57.6 and so is not installed beside this
project's transformers 5.24: the folder is for a separate environment
(`pip install torch==2.13.0 transformers==4.57.6 adapters==1.3.0`), loaded with

    model = BartForConditionalGeneration.from_pretrained("OUT/base"); adapters.init(model)
    model.load_adapter("OUT/adapter", set_active=True)

Only this form is exported because only it is computed the same way on both sides (adapters' source,
`ParBnConfig`): the FFN input x through down -> ReLU -> up, times s, added to the FFN output before the
residual and the layer's post-LN -- unifairseq's parallel adapter, equal in eval (dropout sits elsewhere).
adapters' Pfeiffer/Houlsby (`SeqBnConfig`) apply the layer's LayerNorm before and after the adapter, its
prefix tuning keeps per-location prefix pools with its own reparametrization, and pre-LN mBART / RoBERTa
were not checked: those are refused.
"""
from __future__ import annotations

import json
import os
import re

import torch

from unifairseq.convert.fairseq_to_hf import HFExportError, save, to_hf

NAME = "unifairseq"
_KEY = re.compile(r"^((?:en|de)coder\.layers\.\d+)\.delta_ffn\.delta_adapter\.form\.(W_down|W_up)\.(weight|bias)$")
# adapters 1.3.0's ParBnConfig, as its save_adapter writes it, with reduction_factor and scaling set per delta
PAR_BN = {"adapter_residual_before_ln": False, "cross_adapter": False, "dropout": 0.0, "factorized_phm_W": True,
          "factorized_phm_rule": False, "hypercomplex_nonlinearity": "glorot-uniform", "init_weights": "mam_adapter",
          "init_weights_seed": None, "inv_adapter": None, "inv_adapter_reduction_factor": None, "is_parallel": True,
          "learn_phm": True, "leave_out": [], "ln_after": False, "ln_before": False, "mh_adapter": False,
          "non_linearity": "relu", "original_ln_after": True, "original_ln_before": False, "output_adapter": True,
          "phm_bias": True, "phm_c_init": "normal", "phm_dim": 4, "phm_init_range": 0.0001, "phm_layer": False,
          "phm_rank": 1, "residual_before_ln": True, "shared_W_phm": False, "shared_phm_rule": True,
          "stochastic_depth": 0.0, "use_gating": False}


def adapterhub_form(plan, family: str):
    """(the delta's one AdapterHub form, None) when it has one here (Method.adapterhub_form), else
    (None, why not)."""
    cfg = plan.cfg
    forms = [plan.method(s).adapterhub_form(s) for s in plan.specs]
    if len(forms) != 1 or forms[0] is None or forms[0]["config"] != "ParBn":
        return None, (f"--attn-mode {cfg.attn_mode} / --ffn-mode {cfg.ffn_mode} --ffn-option {cfg.ffn_option}: only a "
                      "parallel FFN adapter alone (pa_ffn, scaled_pa) computes what adapters' ParBnConfig computes")
    if forms[0]["refusal"]:
        return None, forms[0]["refusal"]
    if family != "bart":
        return None, f"{family}: only post-LN BART was checked against adapters"
    return forms[0], None


def export_adapters(state, base_state, plan, stage: str, kw, bpe_dir, base_args) -> object:
    delta_sd = state["model"]
    hf = to_hf(base_state["model"], base_args, **kw)
    form, why = adapterhub_form(plan, hf.family)
    if why:
        raise HFExportError(f"--adapters: {why}")
    d = hf.config.d_model
    r = form["r"]
    if d % r:
        raise HFExportError(f"--adapters: adapters sizes the bottleneck as d // reduction_factor; r={r} does not "
                            f"divide d={d}")
    tensors = {}
    for k, v in delta_sd.items():
        m = _KEY.match(k)
        if m:
            part = "adapter_down.0" if m.group(2) == "W_down" else "adapter_up"
            tensors[f"model.{m.group(1)}.output_adapters.adapters.{NAME}.{part}.{m.group(3)}"] = v.detach().clone()
    n_layers = hf.config.encoder_layers + hf.config.decoder_layers
    if len(tensors) != 4 * n_layers:
        raise HFExportError(f"--adapters: found {len(tensors)} adapter tensors, expected 4 per layer ({n_layers} layers)")
    base_dir, adapter_dir = os.path.join(stage, "base"), os.path.join(stage, "adapter")
    os.makedirs(base_dir)
    os.makedirs(adapter_dir)
    save(hf, base_dir, kw["dict_symbols"], bpe_dir)
    config = dict(PAR_BN, reduction_factor=d // r, scaling=float(form["scaling"]))
    meta = {"config": config, "hidden_size": d, "model_class": hf.class_name, "model_name": "",
            "model_type": hf.family, "name": NAME, "version": "adapters.1.3.0"}
    with open(os.path.join(adapter_dir, "adapter_config.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2)
    torch.save(tensors, os.path.join(adapter_dir, "pytorch_adapter.bin"))  # tensors only: loads weights_only
    hf.notes.append(f"adapters ParBn adapter '{NAME}' (reduction_factor {d // r}, scaling "
                    f"{config['scaling']:g}) on {n_layers} layers, for a transformers 4.57 + adapters 1.3.0 environment")
    return hf
