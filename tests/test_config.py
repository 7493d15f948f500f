"""One config object, validated once; bad combinations fail at start-up naming the flag and the fix."""
import pytest

from tiny import tiny_model
from unifairseq.core.accounting import ModelShape, formula_count, stored_delta_weights
from unifairseq.core.config import DeltaConfig, DeltaConfigError
from unifairseq.core.presets import PRESETS
from unifairseq.tools.count import build_translation_model

BART_LARGE = ModelShape.encoder_decoder(1024, 4096, 12, 12)


@pytest.mark.parametrize("kwargs,flag,fix", [
    (dict(attn_mode="prefixx"), "--attn-mode", "choose one of"),
    (dict(attn_mode="adapter", attn_option="parallel", attn_composition="gate_add"), "--attn-composition",
     "--attn-option cross_attn"),
    (dict(attn_mode="prefix", attn_bn=0), "--attn-bn", "positive"),
    (dict(ffn_mode="adapter", ffn_bn=-3), "--ffn-bn", "positive"),
    (dict(attn_mode="lora", lora_alpha=0), "--lora-alpha", "switches LoRA off"),
    (dict(ffn_mode="lora", lora_alpha=0), "--lora-alpha", "positive alpha"),
    (dict(attn_mode="lora", lora_alpha=-32.0), "--lora-alpha", "-32.0 is not a positive finite number"),
    (dict(attn_mode="dora", lora_alpha=float("inf")), "--lora-alpha", "inf is not a positive finite number"),
    (dict(attn_mode="lora", lora_alpha=float("nan")), "--lora-alpha", "nan is not a positive finite number"),
    (dict(ffn_mode="adapter", ffn_adapter_scalar="inf"), "--ffn-adapter-scalar", "is not a finite number"),
    (dict(ffn_mode="adapter", ffn_adapter_scalar="big"), "--ffn-adapter-scalar", "learnable_scalar"),
    (dict(ffn_mode="adapter", ffn_adapter_scalar=0), "--ffn-adapter-scalar", "positive"),
    (dict(attn_mode="adapter", ffn_mode="adapter", ffn_option="houlsby"), "--ffn-option", "houlsby"),
    (dict(attn_mode="prefix", attn_option="parallel"), "--attn-option", "concat"),
    (dict(ffn_mode="none", ffn_option="parallel"), "--ffn-option", "drop it"),
    (dict(attn_mode="prefix", mid_dim=0), "--mid-dim", "prefix_nomlp"),
    (dict(attn_mode="lora", lora_dropout=1.5), "--lora-dropout", "[0, 1)"),
])
def test_invalid_configs_name_flag_and_fix(kwargs, flag, fix):
    with pytest.raises(DeltaConfigError) as e:
        DeltaConfig(**kwargs).validate()
    assert flag in str(e.value) and fix in str(e.value)


def test_invalid_flags_fail_at_model_build():
    with pytest.raises(DeltaConfigError, match="--lora-alpha"):
        tiny_model("lora_attn_bart_base", ["--lora-alpha", "0"])
    with pytest.raises(DeltaConfigError, match="--attn-composition"):
        tiny_model("pa_attn_bart_base", ["--attn-composition", "gate_add"])


def test_presets_are_defaults_that_flags_override():
    model, _, args = tiny_model("mam_bart_base", ["--attn-bn", "7", "--ffn-adapter-scalar", "2"])
    delta = model.encoder.delta
    assert delta.attn_bn == 7 and delta.ffn_adapter_scalar == 2.0  # overridden
    assert delta.ffn_bn == 512 and delta.mid_dim == 800 and delta.attn_option == "concat"  # from the preset
    assert model.encoder.delta_prefix.length == 7


def test_paper_formula_counts():
    mam = DeltaConfig(**PRESETS["mam"]).validate()
    assert formula_count(mam, BART_LARGE) == 27_377_664  # paper: 6.7% of BART-large
    prefix200 = DeltaConfig(**PRESETS["prefix"]).validate()
    assert formula_count(prefix200, BART_LARGE) == 14_745_600
    glue_mam = DeltaConfig(**{**PRESETS["mam"], "attn_bn": 16, "ffn_bn": 16, "ffn_adapter_scalar": 2}).validate()
    assert formula_count(glue_mam, ModelShape.encoder_only(768, 3072, 12)) == 589_824  # RoBERTa-base
    lora_ffn = DeltaConfig(ffn_mode="lora", ffn_bn=102).validate()
    assert formula_count(lora_ffn, BART_LARGE) == 10 * 102 * 1024 * 24


def test_mam_bart_large_built_model_counts():
    """The real bart_large-shaped model: formula weights read off its modules = 27,377,664."""
    model, _, _ = build_translation_model("mam_bart_large")
    rep = model.delta_report
    assert rep["base"] == 406_290_432  # BART-large with its 50,264-symbol dictionary
    assert stored_delta_weights(model, model.encoder.delta) == rep["formula"] == 27_377_664
    # trainable adds the prefix MLP (3 x 20.5M) and the adapter biases, which the paper does not count
    mlp = 3 * (30 * 1024 + 1024 * 800 + 800 + 800 * 2 * 12 * 1024 + 2 * 12 * 1024)
    adapter_bias = 24 * (512 + 1024)
    assert rep["trainable"] == 27_377_664 - 3 * 2 * 30 * 1024 * 12 + mlp + adapter_bias
