"""The one shared table of method configurations every check runs through.

Each row: (id, arch, extra flags, identity_at_init). `identity_at_init` is True where the
math makes Δh = 0 at initialisation (LoRA-style init, zero P_v, BitFit before training).
Sizes are shrunk by flags so every model is tiny.
"""
SMALL = ["--attn-bn", "5", "--ffn-bn", "6", "--mid-dim", "16"]

METHODS = [
    ("mam", "mam_bart_base", SMALL, False),
    ("prefix", "prefix_bart_base", SMALL, False),
    ("prefix_nomlp", "prefix_bart_base", SMALL + ["--attn-mode", "prefix_nomlp"], False),
    ("gated_prefix", "gated_prefix_bart_base", SMALL, False),
    ("prefix_add_nogate", "gated_prefix_bart_base", SMALL + ["--attn-composition", "add"], False),
    ("lora_attn", "lora_attn_bart_base", SMALL, True),
    ("lora_ffn", "lora_ffn_bart_base", SMALL, True),
    ("pfeiffer", "pfeiffer_bart_base", SMALL, False),
    ("pfeiffer_ln_out", "pfeiffer_bart_base", SMALL + ["--ffn-adapter-layernorm-option", "out"], False),
    ("houlsby", "houlsby_bart_base", SMALL, False),
    ("pa_ffn", "pa_ffn_bart_base", SMALL, True),
    ("scaled_pa", "scaled_pa_bart_base", SMALL, True),
    ("scaled_pa_learnable", "scaled_pa_bart_base", SMALL + ["--ffn-adapter-scalar", "learnable_scalar",
                                                           "--ffn-adapter-layernorm-option", "in"], True),
    ("pa_attn", "pa_attn_bart_base", SMALL, True),
    ("sa_attn", "sa_attn_bart_base", SMALL, True),
    ("mhpa", "mhpa_bart_base", SMALL, True),
    ("prefix_mhpa_mlp", "prefix_bart_base", SMALL + ["--attn-option", "cross_attn_relu"], False),
    ("bitfit", "bitfit_bart_base", [], True),
    ("prompt", "prompt_bart_base", SMALL, False),
    ("prefix+lora_ffn", "delta_bart_base", SMALL + ["--attn-mode", "prefix", "--ffn-mode", "lora"], False),
    ("lora_attn+pfeiffer", "delta_bart_base", SMALL + ["--attn-mode", "lora", "--ffn-mode", "adapter",
                                                       "--ffn-option", "pfeiffer",
                                                       "--ffn-adapter-init-option", "bert"], False),
    ("ia3", "ia3_bart_base", [], True),
    ("ia3_attn", "delta_bart_base", ["--attn-mode", "ia3"], True),
    ("dora_attn", "dora_attn_bart_base", SMALL, True),
    ("dora_ffn", "delta_bart_base", SMALL + ["--ffn-mode", "dora"], True),
    ("dora_attn+ia3_ffn", "delta_bart_base", SMALL + ["--attn-mode", "dora", "--ffn-mode", "ia3"], True),
]

IDS = [m[0] for m in METHODS]


def mergeable(arch: str, flags) -> bool:
    """Does every method of this row merge into the base weights (the registry says)?"""
    from tiny import tiny_args
    from unifairseq.core.plan import DeltaPlan

    return not DeltaPlan.from_args(tiny_args(arch, flags)).mergeable()


def on_projections(arch: str, flags) -> bool:
    """Does the row put a delta on a projection (a DeltaLinear with a LinearDelta)?"""
    from tiny import tiny_args
    from unifairseq.core.methods import PROJECTION_SITES
    from unifairseq.core.plan import DeltaPlan

    return any(s.site in PROJECTION_SITES for s in DeltaPlan.from_args(tiny_args(arch, flags)).specs)


MERGEABLE = [m for m in METHODS if mergeable(m[1], m[2])]
PROJECTION_MERGES = [m for m in MERGEABLE if on_projections(m[1], m[2])]
