"""Tiny Hugging Face models and tokenizers, and tiny fairseq models compared with their transformers
exports. Nothing is downloaded."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from ckpthelp import write_delta_checkpoint  # noqa: E402
from tiny import HEAD, tiny_model, tiny_roberta  # noqa: E402
import unifairseq.fairseq  # noqa: E402

unifairseq.fairseq.register()  # the delta architectures and the checkpoints' safe globals, as --user-dir does

SENTENCES = [
    "The cat sits outside on the warm stone wall.",
    "A man is playing the guitar while his friends sing along.",
    "Parameter-efficient transfer learning keeps most pretrained weights frozen.",
    "Hello!",
]
CORPUS = SENTENCES + [
    "the quick brown fox jumps over the lazy dog",
    "a small model is enough for a unit test",
    "translation from english to romanian",
]


def perturb(model, seed=0, std=0.05):
    """Move every parameter (LayerNorms, biases included) off its initialisation."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return model


def save_fast_tokenizer(tok, path, **special):
    from transformers import PreTrainedTokenizerFast

    PreTrainedTokenizerFast(tokenizer_object=tok, **special).save_pretrained(str(path))


def byte_bpe(path, specials=("<s>", "<pad>", "</s>", "<unk>", "<mask>")):
    """A byte-level BPE tokenizer trained on CORPUS, its special tokens at the ids their order gives; saved
    at `path`. Returns the vocabulary size."""
    from tokenizers import ByteLevelBPETokenizer
    from tokenizers.processors import RobertaProcessing

    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(CORPUS, vocab_size=300, min_frequency=1, show_progress=False,
                            special_tokens=list(specials))
    tok.post_processor = RobertaProcessing(("</s>", specials.index("</s>")), ("<s>", specials.index("<s>")))
    save_fast_tokenizer(tok._tokenizer, path, bos_token="<s>", eos_token="</s>", cls_token="<s>", sep_token="</s>",
                        pad_token="<pad>", unk_token="<unk>", mask_token="<mask>")
    return tok.get_vocab_size()


TOL = 1e-4  # fairseq model vs its transformers export, on the same input


def perturb_all(model, seed=0, std=0.05):
    """Every parameter off its initialisation (LayerNorms, biases, deltas, heads)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return model.eval()


def bart_inputs(d, bsz=3, src_len=8, tgt_len=6):
    """Right-padded source (HF BART numbers positions from the left whatever the padding), decoder input
    starting with </s> as fairseq's collater makes it."""
    g = torch.Generator().manual_seed(3)
    src = torch.randint(d.nspecial, len(d), (bsz, src_len), generator=g)
    src[:, -1] = d.eos()
    lengths = torch.full((bsz,), src_len)
    for b in range(1, bsz):
        src[b, src_len - b - 1] = d.eos()
        src[b, src_len - b:] = d.pad()
        lengths[b] = src_len - b
    prev = torch.randint(d.nspecial, len(d), (bsz, tgt_len), generator=g)
    prev[:, 0] = d.eos()
    return src, lengths, prev


def roberta_inputs(d, bsz=3, T=9):
    g = torch.Generator().manual_seed(2)
    t = torch.randint(d.nspecial, len(d) - 1, (bsz, T), generator=g)
    t[:, 0], t[:, -1] = d.bos(), d.eos()
    t[1, -3:] = d.pad()
    t[1, -4] = d.eos()
    return t


def fairseq_out(model, family, d, head=False):
    with torch.no_grad():
        if family == "roberta":
            t = roberta_inputs(d)
            out = model(t, features_only=head, classification_head_name=HEAD if head else None)[0]
            return out, dict(input_ids=t, attention_mask=t.ne(d.pad())), t.ne(d.pad())
        src, lens, prev = bart_inputs(d)
        out = model(src, lens, prev)[0]
        return out, dict(input_ids=src, attention_mask=src.ne(d.pad()), decoder_input_ids=prev), None


def hf_diff(hf_model, ref, inputs, keep):
    with torch.no_grad():
        out = hf_model(**inputs).logits
    assert out.shape == ref.shape
    return ((out - ref)[keep] if keep is not None and out.dim() == 3 else out - ref).abs().max().item()


def delta(arch, flags, family, tmp_path):
    if family == "roberta":
        model, task, args = tiny_roberta(arch, flags)
    else:
        model, task, args = tiny_model(arch, flags)
    perturb_all(model)
    ckpt, base = write_delta_checkpoint(model, args, tmp_path)
    return model.eval(), task, ckpt
