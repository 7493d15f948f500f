"""Tiny BART and RoBERTa models built through fairseq's own argument parsing, their inputs, and the
sizes every tiny model of the tests has."""
from __future__ import annotations

import torch
from fairseq.data import Dictionary

from unifairseq.tools.count import build_translation_model, parse_model_args
from unifairseq.tools.tiny_base import model_flags

# The sizes of every tiny model in the tests, declared here only: the committed fixtures
# (tests/fixtures) and the bitwise expectations were made with them, so they never change.
LAYERS, DIM, FFN_DIM, HEADS = 2, 32, 64, 4


def dims(layers: int = LAYERS) -> list:
    """fairseq-train's size flags of a tiny BART (both stacks); `layers` is the one size a test may shrink."""
    return model_flags(layers, DIM, FFN_DIM, HEADS)


def roberta_dims(layers: int = LAYERS) -> list:
    """The same sizes for a RoBERTa (one stack)."""
    return ["--encoder-layers", str(layers), "--encoder-embed-dim", str(DIM), "--encoder-ffn-embed-dim", str(FFN_DIM),
            "--encoder-attention-heads", str(HEADS)]


def base_dims(layers: int = LAYERS) -> list:
    """The same sizes as unifairseq-tiny-base / unifairseq-make-tiny-bart take them."""
    return ["--layers", str(layers), "--dim", str(DIM), "--ffn-dim", str(FFN_DIM), "--heads", str(HEADS)]


TINY = [*dims(), "--max-source-positions", "128", "--max-target-positions", "128"]
HEAD = "sentence_classification_head"  # the classification head every tiny RoBERTa has


def tiny_dict(n_words: int = 40) -> Dictionary:
    d = Dictionary()
    for i in range(n_words):
        d.add_symbol(f"w{i}")
    d.pad_to_multiple_(8)
    return d


def tiny_args(arch: str, flags=(), dims=TINY):
    return parse_model_args(arch, [*dims, *flags])


def tiny_model(arch: str, flags=(), dictionary: Dictionary = None, seed: int = 0):
    torch.manual_seed(seed)
    return build_translation_model(arch, [*TINY, *flags], dictionary or tiny_dict())


def random_batch(d: Dictionary, bsz: int = 3, src_len: int = 7, tgt_len: int = 5, seed: int = 1):
    """Left-padded source, right-shifted target as fairseq's collater makes them."""
    g = torch.Generator().manual_seed(seed)
    lo = d.nspecial
    src = torch.randint(lo, len(d), (bsz, src_len), generator=g)
    src[:, -1] = d.eos()
    lengths = torch.full((bsz,), src_len)
    for b in range(1, bsz):  # different lengths -> left padding
        src[b, :b] = d.pad()
        lengths[b] = src_len - b
    tgt = torch.randint(lo, len(d), (bsz, tgt_len), generator=g)
    prev = torch.cat([torch.full((bsz, 1), d.eos()), tgt[:, :-1]], dim=1)
    return src, lengths, prev, tgt


def tiny_roberta(arch: str, flags=(), dictionary: Dictionary = None, seed: int = 0, num_classes: int = 2):
    """A tiny RoBERTa for sentence_prediction, built as fairseq-train builds it, with its head."""
    from fairseq import options
    from fairseq.models import build_model
    from fairseq.tasks.sentence_prediction import SentencePredictionTask

    torch.manual_seed(seed)
    d = dictionary or tiny_dict()
    d.add_symbol("<mask>")
    labels = Dictionary()
    for i in range(num_classes):
        labels.add_symbol(str(i))
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [
        "unused-data-dir", "--task", "sentence_prediction", "--arch", arch, "--num-classes", str(num_classes),
        *roberta_dims(), "--max-positions", "64", *flags])
    task = SentencePredictionTask(args, d, labels)
    model = build_model(args, task)
    model.register_classification_head(HEAD, num_classes=num_classes)
    return model, task, args


def perturb_deltas(model, seed=0, std=0.05):
    """Move every delta parameter off its initialisation, so checks cannot pass because Δh = 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * std)


def full_logits(model, src, lens, prev):
    out, _ = model(src, lens, prev)
    return out


def roberta_logits(model, tokens):
    return model(tokens, features_only=True, classification_head_name=HEAD)[0]


def roberta_tokens(d, bsz=3, T=9):
    g = torch.Generator().manual_seed(2)
    t = torch.randint(d.nspecial, len(d) - 1, (bsz, T), generator=g)
    t[:, 0], t[:, -1] = d.bos(), d.eos()
    t[1, -3:] = d.pad()  # right padding as sentence_prediction pads
    return t
