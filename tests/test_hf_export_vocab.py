"""unifairseq-export hf, vocabularies and the round trip: --hf-vocab (an imported HF folder comes back
exactly), --bpe-dir (GPT-2 BPE tokenizer files), and HF folder -> unifairseq-import-hf -> fairseq-train a
LoRA delta -> unifairseq-export hf -> transformers + peft. Nothing is downloaded."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from fairseq.checkpoint_utils import torch_persistent_save  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from hfhelp import CORPUS, SENTENCES, TOL, byte_bpe, hf_diff, perturb, perturb_all, save_fast_tokenizer  # noqa: E402
from tiny import DIM, FFN_DIM, HEAD, HEADS, LAYERS, tiny_roberta  # noqa: E402
from unifairseq.tools.export_cli import main as export_main  # noqa: E402


def _hf_bart(src):
    """A tiny random HF BART whose specials are not fairseq's 0..3 (so the vocabulary is really permuted)."""
    vocab = byte_bpe(src, specials=("<unk>", "<pad>", "<s>", "</s>", "<mask>"))
    cfg = transformers.BartConfig(vocab_size=vocab, d_model=DIM, encoder_layers=LAYERS, decoder_layers=LAYERS,
                                  encoder_attention_heads=HEADS, decoder_attention_heads=HEADS, encoder_ffn_dim=FFN_DIM,
                                  decoder_ffn_dim=FFN_DIM, max_position_embeddings=64, pad_token_id=1, bos_token_id=2,
                                  eos_token_id=3, decoder_start_token_id=3, forced_eos_token_id=3)
    torch.manual_seed(4)
    hf = perturb(transformers.BartForConditionalGeneration(cfg)).eval()
    hf.save_pretrained(str(src))
    return hf


@pytest.mark.slow
def test_round_trip_hf_import_train_lora_export_peft(tmp_path):
    """HF folder -> unifairseq-import-hf -> fairseq-train a LoRA delta (a few updates) -> unifairseq-export hf
    --peft --hf-vocab -> the original HF folder + the peft adapter (and the merged folder) give the fairseq
    delta model's logits."""
    import subprocess
    import sys

    from peft import PeftModel

    from env import BIN, REPO, tool_env
    from unifairseq.convert.hf_tokenize import HFTokenizer

    src, imp, data = tmp_path / "hf", tmp_path / "imported", tmp_path / "data"
    hf = _hf_bart(src)
    env = tool_env(OMP_NUM_THREADS="1")

    def run(*cmd):
        p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, cwd=REPO)
        assert p.returncode == 0, p.stderr[-3000:]
        return p

    log = run(sys.executable, "-m", "unifairseq.convert.hf_import", src, imp).stderr
    flags = log.split("fairseq-train flags: ")[1].split(" --restore-file")[0].split()
    assert flags[:2] == ["--arch", "bart_large"]
    tok = HFTokenizer(str(src), str(imp / "dict.txt"))
    raw = tmp_path / "raw"
    raw.mkdir()
    for side, lines in (("source", CORPUS), ("target", list(reversed(CORPUS)))):
        (raw / f"train.{side}").write_text("\n".join(tok.encode_lines(lines)) + "\n")
    run(BIN / "fairseq-preprocess", "-s", "source", "-t", "target", "--trainpref", raw / "train",
        "--validpref", raw / "train", "--srcdict", imp / "dict.txt", "--tgtdict", imp / "dict.txt",
        "--destdir", data, "--workers", "1")
    save = tmp_path / "ckpt"
    run(BIN / "fairseq-train", data, "--user-dir", REPO / "user_dir", "--task", "translation", "-s", "source",
        "-t", "target", "--arch", "lora_attn_bart_large", *flags[2:], "--attn-bn", "4", "--lora-dropout", "0",
        "--finetune-from-model", imp / "model.pt", "--optimizer", "adam", "--lr", "0.05", "--max-update", "4",
        "--batch-size", "4", "--required-batch-size-multiple", "1", "--save-dir", save, "--no-epoch-checkpoints",
        "--cpu", "--seed", "1", "--num-workers", "0", "--disable-validation", "--log-format", "simple")
    ckpt = save / "checkpoint_last.pt"
    out, merged = tmp_path / "peft", tmp_path / "merged"
    run(sys.executable, "-m", "unifairseq.tools.export_cli", "hf", ckpt, out, "--peft", "--hf-vocab", src)
    run(sys.executable, "-m", "unifairseq.tools.export_cli", "hf", ckpt, merged, "--hf-vocab", src)

    # the exported base is the original HF model, tensor for tensor, in the original vocabulary order
    back = load_file(str(out / "base" / "model.safetensors"))
    orig = hf.state_dict()
    assert all(torch.equal(back[k], orig[k]) for k in back if k in orig) and "model.shared.weight" in back
    assert (out / "base" / "tokenizer.json").is_file() and (merged / "tokenizer.json").is_file()

    from fairseq import checkpoint_utils

    [model], _, _ = checkpoint_utils.load_model_ensemble_and_task([str(ckpt)])
    model.eval()
    src_ids, tgt_ids = tok.encode_hf(CORPUS[:3]), tok.encode_hf(CORPUS[3:6], add_special_tokens=False)
    pad = hf.config.pad_token_id

    def batch(seqs, pad_id, first=None):
        seqs = [([first] if first is not None else []) + s for s in seqs]
        b = torch.full((len(seqs), max(map(len, seqs))), pad_id)
        for i, s in enumerate(seqs):
            b[i, :len(s)] = torch.tensor(s)
        return b

    hf_src, hf_prev = batch(src_ids, pad), batch(tgt_ids, pad, hf.config.eos_token_id)
    to_fs = torch.tensor([tok.vocab.hf_to_fairseq[i] for i in range(hf.config.vocab_size)])
    fs_src, fs_prev = to_fs[hf_src], to_fs[hf_prev]
    keep = hf_prev.ne(pad)
    with torch.no_grad():
        fs_logits = model(fs_src, fs_src.ne(1).sum(1), fs_prev)[0][..., to_fs]  # columns in HF order
        inputs = dict(input_ids=hf_src, attention_mask=hf_src.ne(pad), decoder_input_ids=hf_prev)
        base_logits = hf(**inputs).logits
        pm = PeftModel.from_pretrained(transformers.BartForConditionalGeneration.from_pretrained(str(src)),
                                       str(out / "adapter")).eval()
        d_peft = (pm(**inputs).logits - fs_logits)[keep].abs().max().item()
        hm = transformers.BartForConditionalGeneration.from_pretrained(str(merged)).eval()
        d_merged = (hm(**inputs).logits - fs_logits)[keep].abs().max().item()
    moved = (base_logits - fs_logits)[keep].abs().max().item()
    print(f"\nround trip: peft on the original HF folder vs fairseq {d_peft:.2e}, merged {d_merged:.2e}; "
          f"the trained LoRA moves the logits by {moved:.2e}")
    assert moved > 1e-2  # the delta is trained, not a no-op
    assert max(d_peft, d_merged) <= TOL


def test_gpt2_bpe_tokenizer_files(tmp_path):
    """--bpe-dir: a fairseq RoBERTa over a GPT-2-BPE dictionary (symbols = BPE ids, in fairseq's count order)
    gets vocab.json + merges.txt with which transformers' tokenizer gives fairseq's ids (GPT-2 BPE +
    dictionary), and the model gives fairseq's logits on them. The BPE files are a small byte-level BPE
    trained here in GPT-2's file format (encoder.json + vocab.bpe)."""
    from fairseq.data import Dictionary
    from fairseq.data.encoders.gpt2_bpe_utils import get_encoder
    from tokenizers import ByteLevelBPETokenizer

    bpe_dir = tmp_path / "gpt2"
    bpe_dir.mkdir()
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(CORPUS, vocab_size=280, min_frequency=1, show_progress=False)
    tok.save_model(str(bpe_dir))
    os.rename(bpe_dir / "vocab.json", bpe_dir / "encoder.json")
    os.rename(bpe_dir / "merges.txt", bpe_dir / "vocab.bpe")
    enc = get_encoder(str(bpe_dir / "encoder.json"), str(bpe_dir / "vocab.bpe"))
    d = Dictionary()
    for line in CORPUS + SENTENCES:
        for i in enc.encode(line):
            d.add_symbol(str(i))
    d.finalize()  # fairseq's order: by count, not by BPE id
    d.save(str(tmp_path / "dict.txt"))
    d = Dictionary.load(str(tmp_path / "dict.txt"))
    model, task, args = tiny_roberta("roberta_base", dictionary=d)
    del model.classification_heads[HEAD]
    perturb_all(model)
    ckpt = tmp_path / "model.pt"
    torch_persistent_save({"args": args, "model": model.state_dict(), "optimizer_history": [], "extra_state": {},
                           "last_optimizer_state": None}, str(ckpt))
    out = tmp_path / "hf"
    assert export_main(["hf", str(ckpt), str(out), "--bpe-dir", str(bpe_dir), "--dict", str(tmp_path / "dict.txt")]) == 0
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(out))
    fs_ids = [[d.bos()] + d.encode_line(" ".join(map(str, enc.encode(s))), add_if_not_exist=False).tolist()
              for s in SENTENCES]  # what fairseq's RoBERTa hub.encode gives: <s> BPE ids </s>
    assert hf_tok(SENTENCES)["input_ids"] == fs_ids
    assert d.unk() not in sum(fs_ids, [])
    batch = hf_tok(SENTENCES, padding=True, return_tensors="pt")
    hf = transformers.RobertaForMaskedLM.from_pretrained(str(out)).eval()
    keep = batch["attention_mask"].bool()
    with torch.no_grad():
        ref = model(batch["input_ids"])[0]
    assert hf_diff(hf, ref, dict(batch), keep) <= TOL


def test_hf_vocab_restores_the_imported_folder(tmp_path, capsys):
    """unifairseq-import-hf then export hf --hf-vocab: the very tensors of the original HF folder (rows back
    in its order, its tokenizer files); a dictionary that is not the importer's is refused."""
    from unifairseq.convert import hf_import

    src, imp = tmp_path / "hf", tmp_path / "imported"
    hf = _hf_bart(src)
    hf_import.convert(str(src), str(imp))
    out = tmp_path / "back"
    assert export_main(["hf", str(imp / "model.pt"), str(out), "--hf-vocab", str(src)]) == 0
    back, orig = load_file(str(out / "model.safetensors")), hf.state_dict()
    assert set(back) <= set(orig) and "model.shared.weight" in back
    assert all(torch.equal(back[k], orig[k]) for k in back)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (out / name).read_bytes() == (src / name).read_bytes()
    again = transformers.AutoConfig.from_pretrained(str(out))
    assert (again.pad_token_id, again.bos_token_id, again.eos_token_id) == (1, 2, 3)
    # another dictionary: refused, nothing written
    lines = (imp / "dict.txt").read_text().splitlines()
    (tmp_path / "other.txt").write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n")
    assert export_main(["hf", str(imp / "model.pt"), str(tmp_path / "x"), "--hf-vocab", str(src),
                        "--dict", str(tmp_path / "other.txt")]) == 2
    err = capsys.readouterr().err
    assert "is not the one unifairseq-import-hf made" in err and "first difference at index 4" in err, err
    assert not (tmp_path / "x").exists()


def test_hf_vocab_mbart_language_codes(tmp_path):
    """mBART: the importer names the language codes [xx_YY] (fairseq's --langs symbols); --hf-vocab puts
    those rows back at the HF ids of xx_YY, so the exported folder is the original one."""
    from tokenizers import SentencePieceUnigramTokenizer

    from unifairseq.convert import hf_import

    src, imp = tmp_path / "hf", tmp_path / "imported"
    tok = SentencePieceUnigramTokenizer()
    tok.train_from_iterator(CORPUS, vocab_size=120, show_progress=False, unk_token="<unk>",
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>"])
    tok.add_special_tokens(["en_XX", "ro_RO", "<mask>"])
    save_fast_tokenizer(tok._tokenizer, src, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                        unk_token="<unk>", mask_token="<mask>")
    cfg = transformers.MBartConfig(vocab_size=tok.get_vocab_size(), d_model=DIM, encoder_layers=1, decoder_layers=1,
                                   encoder_attention_heads=HEADS, decoder_attention_heads=HEADS, encoder_ffn_dim=FFN_DIM,
                                   decoder_ffn_dim=FFN_DIM, max_position_embeddings=64, scale_embedding=True)
    torch.manual_seed(5)
    hf = perturb(transformers.MBartForConditionalGeneration(cfg)).eval()
    hf.save_pretrained(str(src))
    hf_import.convert(str(src), str(imp))
    assert "[en_XX]" in (imp / "dict.txt").read_text().split()
    out = tmp_path / "back"
    assert export_main(["hf", str(imp / "model.pt"), str(out), "--hf-vocab", str(src)]) == 0
    back, orig = load_file(str(out / "model.safetensors")), hf.state_dict()
    assert "model.encoder.layer_norm.weight" in back and "model.shared.weight" in back
    assert all(torch.equal(back[k], orig[k]) for k in back)
    assert transformers.AutoConfig.from_pretrained(str(out)).scale_embedding is True
