"""RoBERTa (sentence_prediction) and mBART (pre-LN) through the same method table."""
import pytest
import torch

from methods import IDS, METHODS
from tiny import perturb_deltas, random_batch, roberta_logits, roberta_tokens, tiny_model, tiny_roberta
from unifairseq.core.accounting import ModelShape, formula_count, is_trainable_name, stored_delta_weights
from unifairseq.core.modules import Bottleneck, is_delta_name

ROBERTA = [(n, a.replace("_bart_base", "_roberta_base"), f, i) for n, a, f, i in METHODS]
MBART = [(n, a.replace("_bart_base", "_mbart_large"), f, i) for n, a, f, i in METHODS]


@pytest.mark.parametrize("name,arch,flags,identity", ROBERTA, ids=IDS)
def test_roberta_identity_counts_and_trained_head(name, arch, flags, identity):
    model, task, args = tiny_roberta(arch, flags)
    model.eval()
    plain, _, _ = tiny_roberta("roberta_base", seed=5)
    plain.load_state_dict({k: v for k, v in model.full_state_dict().items() if not is_delta_name(k)}, strict=True)
    plain.eval()
    tokens = roberta_tokens(task.source_dictionary)
    with torch.no_grad():
        diff = (roberta_logits(model, tokens) - roberta_logits(plain, tokens)).abs().max()
    assert (diff < 2e-6) if identity else (diff > 1e-6), diff
    # the head is trained and saved; the encoder base is frozen
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {n for n in trainable if n.startswith("classification_heads.")} == {
        n for n, _ in model.named_parameters() if n.startswith("classification_heads.")}
    assert all(is_trainable_name(n, model.delta_plan) for n in trainable)
    saved = set(model.state_dict())
    assert {n for n in saved if n.startswith("classification_heads.")}, "the head must travel with the delta"
    # formula count on the single-stack shape
    shape = ModelShape.encoder_only(32, 64, 2, model.delta_shape.bias_params)
    assert stored_delta_weights(model, model.delta) == formula_count(model.delta, shape)


def test_roberta_mam_glue_defaults():
    model, _, args = tiny_roberta("mam_roberta_base")
    d = model.delta
    assert (d.attn_bn, d.ffn_bn, d.ffn_adapter_scalar, d.attn_mode, d.ffn_option) == (16, 16, 2.0, "prefix", "parallel")
    model, _, _ = tiny_roberta("mam_roberta_base", ["--attn-bn", "8"])
    assert model.delta.attn_bn == 8


@pytest.mark.parametrize("name,arch,flags,identity", MBART, ids=IDS)
def test_mbart_incremental_equals_full(name, arch, flags, identity):
    model, task, args = tiny_model(arch, flags)
    assert args.encoder_normalize_before and args.decoder_normalize_before  # pre-LN
    perturb_deltas(model)
    model.eval()
    src, lens, prev, _ = random_batch(task.source_dictionary)
    with torch.no_grad():
        full = model.get_normalized_probs((model(src, lens, prev)[0], None), log_probs=True)
        enc = model.encoder(src, src_lengths=lens)
        state, steps = {}, []
        for t in range(prev.size(1)):
            out, _ = model.decoder(prev[:, : t + 1], encoder_out=enc, incremental_state=state)
            steps.append(model.get_normalized_probs((out, None), log_probs=True)[:, -1])
    assert torch.allclose(torch.stack(steps, 1), full, atol=1e-5)


@pytest.mark.parametrize("family,reads", [("mbart_large", "residual"), ("bart_base", "ffn_input")])
def test_parallel_ffn_adapter_input_pre_and_post_ln(family, reads):
    """pre-LN: the parallel adapter reads the residual stream (final_layer_norm's input, as the
    paper's code); post-LN: the FFN input (fc1's input, the residual after the attention LN)."""
    model, task, _ = tiny_model(f"scaled_pa_{family}", ["--ffn-bn", "6"])
    layer = model.encoder.layers[0]
    seen = {}
    layer.final_layer_norm.register_forward_pre_hook(lambda m, a: seen.setdefault("ln_in", a[0].clone()))
    layer.fc1.register_forward_pre_hook(lambda m, a: seen.setdefault("fc1_in", a[0].clone()))
    ad = [m for m in layer.delta_ffn.modules() if isinstance(m, Bottleneck)][0]
    ad.W_down.register_forward_pre_hook(lambda m, a: seen.setdefault("adapter_in", a[0].clone()))
    src, lens, prev, _ = random_batch(task.source_dictionary)
    model.eval()
    with torch.no_grad():
        model(src, lens, prev)
    if reads == "residual":
        assert torch.equal(seen["adapter_in"], seen["ln_in"])
        assert not torch.allclose(seen["adapter_in"], seen["fc1_in"])
    else:
        assert torch.equal(seen["adapter_in"], seen["fc1_in"])


def test_roberta_delta_arch_with_nothing_to_train_is_refused():
    from unifairseq.core.config import DeltaConfigError

    with pytest.raises(DeltaConfigError, match="delta_roberta_base: nothing to train.*roberta_large"):
        tiny_roberta("delta_roberta_base")


def test_roberta_prompt_tuning_fits_the_position_table():
    """sentence_prediction's inputs of --max-positions tokens plus l prompt vectors would overflow the
    learned position table: the model declares l fewer positions (what fairseq filters and
    --shorten-method truncate cut to), and a longer input is refused with the fix, not an IndexError."""
    model, task, args = tiny_roberta("prompt_roberta_base", ["--attn-bn", "5"])
    assert args.max_positions == 64 and model.max_positions() == 59
    d = task.source_dictionary
    model.eval()
    with torch.no_grad():
        roberta_logits(model, roberta_tokens(d, T=59))  # the longest input that fits: runs
        with pytest.raises(ValueError, match=r"60 tokens plus the 5 prompt vectors needs 65 positions.*"
                                             r"at most 59 tokens.*--shorten-method truncate"):
            roberta_logits(model, roberta_tokens(d, T=60))
