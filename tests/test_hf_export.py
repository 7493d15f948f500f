"""unifairseq-export hf: fairseq BART / mBART / RoBERTa (base, merged delta) -> transformers, and LoRA /
DoRA / (IA)³ deltas -> peft adapters. Every check runs the exported folder in transformers (and peft)
and compares with the fairseq model on the same input, to 1e-4. Nothing is downloaded."""
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")  # a test requirement (requirements.txt); skipped only without it

from fairseq.checkpoint_utils import torch_persistent_save  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from test_checkpoints import write_delta_checkpoint  # noqa: E402
from tiny import tiny_model, tiny_roberta  # noqa: E402
import unifairseq.fairseq  # noqa: E402
from unifairseq.tools.export import main as export_main  # noqa: E402
from unifairseq.tools.export_hf import HFExportError, export_hf  # noqa: E402

unifairseq.fairseq.register()
TOL = 1e-4
HEAD = "sentence_classification_head"
MBART = ["--encoder-normalize-before", "--decoder-normalize-before", "--layernorm-embedding"]


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


def hf_class(folder):
    import json

    with open(os.path.join(folder, "config.json")) as f:
        return getattr(transformers, json.load(f)["architectures"][0])


def plain(family, head=False):
    if family == "roberta":
        model, task, args = tiny_roberta("roberta_base")
        if not head:
            del model.classification_heads[HEAD]
        return perturb_all(model), task, args
    model, task, args = tiny_model("mbart_large" if family == "mbart" else "bart_base",
                                   MBART if family == "mbart" else [])
    return perturb_all(model), task, args


# ------------------------------------------------------------------ base models
@pytest.mark.parametrize("family,head", [("bart", False), ("mbart", False), ("roberta", True), ("roberta", False)])
def test_base_checkpoint_to_transformers(family, head, tmp_path):
    model, task, args = plain(family, head)
    ckpt = tmp_path / "model.pt"
    torch_persistent_save({"args": args, "model": model.state_dict(), "optimizer_history": [], "extra_state": {},
                           "last_optimizer_state": None}, str(ckpt))
    out = tmp_path / "hf"
    assert export_main(["hf", str(ckpt), str(out)]) == 0
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    cls = hf_class(str(out))
    want = {"bart": "BartForConditionalGeneration", "mbart": "MBartForConditionalGeneration",
            "roberta": "RobertaForSequenceClassification" if head else "RobertaForMaskedLM"}[family]
    assert cls.__name__ == want
    hf = cls.from_pretrained(str(out)).eval()
    ref, inputs, keep = fairseq_out(model, family, task.source_dictionary, head)
    diff = hf_diff(hf, ref, inputs, keep)
    print(f"\n{family}{' + head' if head else ''}: transformers vs fairseq max|diff| {diff:.2e}")
    assert diff <= TOL
    # never over an existing folder without --force; with it, replaced
    assert export_main(["hf", str(ckpt), str(out)]) == 2
    assert export_main(["hf", str(ckpt), str(out), "--force"]) == 0
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]
    # --force never removes a folder that holds an input, nor replaces a file
    with pytest.raises(HFExportError, match="holds the input"):
        export_hf(str(ckpt), str(tmp_path), force=True)
    (tmp_path / "file").write_text("keep")
    with pytest.raises(HFExportError, match="is not a folder"):
        export_hf(str(ckpt), str(tmp_path / "file"), force=True)
    assert ckpt.is_file() and (tmp_path / "file").read_text() == "keep"


def test_bart_classification_head(tmp_path):
    """fairseq BART + classification_heads.NAME -> BartForSequenceClassification: both read the decoder state
    at the last </s>, with the source shifted right (</s> first) as the decoder input."""
    model, task, args = tiny_model("bart_base")
    model.register_classification_head("mnli", num_classes=3)
    perturb_all(model)
    ckpt = tmp_path / "model.pt"
    torch_persistent_save({"args": args, "model": model.state_dict(), "optimizer_history": [], "extra_state": {},
                           "last_optimizer_state": None}, str(ckpt))
    out = tmp_path / "hf"
    assert export_main(["hf", str(ckpt), str(out)]) == 0
    hf = hf_class(str(out)).from_pretrained(str(out)).eval()
    assert type(hf).__name__ == "BartForSequenceClassification" and hf.config.num_labels == 3
    d = task.source_dictionary
    src = torch.randint(d.nspecial, len(d), (3, 7), generator=torch.Generator().manual_seed(5))
    src[:, -1] = d.eos()
    prev = torch.cat([src[:, -1:], src[:, :-1]], dim=1)  # fairseq's sentence_prediction decoder input
    with torch.no_grad():
        ref = model(src, torch.full((3,), 7), prev, features_only=True, classification_head_name="mnli")[0]
        got = hf(input_ids=src).logits
    print(f"\nBART + head: max|diff| {(got - ref).abs().max().item():.2e}")
    assert got.shape == ref.shape and (got - ref).abs().max() <= TOL


# ------------------------------------------------------------------ deltas
DELTAS = [("lora_attn_bart_base", ["--attn-bn", "4"], "bart"),
          ("dora_attn_bart_base", ["--attn-bn", "4"], "bart"),
          ("ia3_mbart_large", [], "mbart"),
          ("lora_ffn_roberta_base", ["--ffn-bn", "8"], "roberta"),
          ("lora_attn_roberta_base", ["--attn-bn", "4"], "roberta"),
          ("ia3_roberta_base", [], "roberta"),
          # attention and FFN LoRA of different ranks: one alpha, per-module r (peft's rank_pattern)
          ("delta_bart_base", ["--attn-mode", "lora", "--ffn-mode", "lora", "--attn-bn", "4", "--ffn-bn", "8",
                               "--lora-alpha", "12"], "bart")]


def delta(arch, flags, family, tmp_path):
    if family == "roberta":
        model, task, args = tiny_roberta(arch, flags)
    else:
        model, task, args = tiny_model(arch, flags)
    perturb_all(model)
    ckpt, base = write_delta_checkpoint(model, args, tmp_path)
    return model.eval(), task, ckpt


@pytest.mark.parametrize("arch,flags,family", DELTAS, ids=[d[0] if d[0] != "delta_bart_base" else "lora_attn4+ffn8"
                                                         for d in DELTAS])
def test_delta_merged_and_peft(arch, flags, family, tmp_path):
    from peft import PeftModel, get_peft_model_state_dict

    model, task, ckpt = delta(arch, flags, family, tmp_path)
    head = family == "roberta"
    ref, inputs, keep = fairseq_out(model, family, task.source_dictionary, head)

    merged = tmp_path / "merged"
    assert export_main(["hf", str(ckpt), str(merged)]) == 0
    hf_merged = hf_class(str(merged)).from_pretrained(str(merged)).eval()
    d_merged = hf_diff(hf_merged, ref, inputs, keep)

    out = tmp_path / "peft"
    assert export_main(["hf", str(ckpt), str(out), "--peft"]) == 0
    assert {p.name for p in (out / "adapter").iterdir()} == {"adapter_config.json", "adapter_model.safetensors"}
    cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(out / "base")
    if cfg["peft_type"] == "LORA":  # unifairseq's s = alpha / r is peft's lora_alpha / r: the same alpha
        scales = {m.scaling for m in model.modules() if type(m).__name__ in ("LoRA", "DoRA")}
        assert {cfg["lora_alpha"] / r for r in [cfg["r"], *cfg["rank_pattern"].values()]} == scales
    base_cls = type(hf_merged)  # the task class (with the head for RoBERTa)
    base_model = base_cls.from_pretrained(str(out / "base"))
    pm = PeftModel.from_pretrained(base_model, str(out / "adapter")).eval()
    d_peft = hf_diff(pm, ref, inputs, keep)
    # the file holds exactly what peft itself saves for this config (names and shapes)
    ours = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    theirs = get_peft_model_state_dict(pm)
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}
    for k in ours:
        assert torch.equal(ours[k], theirs[k].float()), k
    # peft's merge equals our merged export
    if arch == "ia3_roberta_base":
        # peft 0.21.2's IA3 merge_and_unload fails on the modules_to_save wrapper of the head (AttributeError:
        # 'RobertaClassificationHead' object has no attribute 'weight'); merge_adapter merges the same in place
        pm.merge_adapter()
        unloaded = pm.get_base_model()
    else:
        unloaded = pm.merge_and_unload().eval()
    d_unload = hf_diff(unloaded, ref, inputs, keep)
    mw = dict(hf_merged.state_dict())
    w_diff = max((v - mw[k]).abs().max().item() for k, v in unloaded.state_dict().items() if k in mw)
    print(f"\n{arch}: merged {d_merged:.2e}, peft {d_peft:.2e}, peft merge_and_unload {d_unload:.2e} "
          f"(weights vs our merge {w_diff:.2e})")
    assert max(d_merged, d_peft, d_unload) <= TOL
    assert w_diff <= 1e-5


def test_base_only_is_the_frozen_base(tmp_path):
    model, task, ckpt = delta("lora_attn_bart_base", ["--attn-bn", "4"], "bart", tmp_path)
    out = tmp_path / "base"
    assert export_main(["hf", str(ckpt), str(out), "--base-only"]) == 0
    hf = transformers.BartForConditionalGeneration.from_pretrained(str(out)).eval()
    twin, _, _ = tiny_model("bart_base")
    from unifairseq.fairseq.checkpoint import load_checkpoint_file

    twin.load_state_dict(load_checkpoint_file(str(tmp_path / "base.pt"))["model"], strict=True)
    ref, inputs, keep = fairseq_out(twin.eval(), "bart", task.source_dictionary)
    assert hf_diff(hf, ref, inputs, keep) <= TOL


def test_unmergeable_and_non_peft_deltas_are_refused_with_the_alternatives(tmp_path, capsys):
    _, _, ckpt = delta("mam_bart_base", ["--attn-bn", "4", "--ffn-bn", "4", "--mid-dim", "8"], "bart", tmp_path)
    for extra in ([], ["--peft"]):
        assert export_main(["hf", str(ckpt), str(tmp_path / "x"), *extra]) == 2
        err = capsys.readouterr().err
        assert "adapters 1.3.0" in err and "transformers~=4.57.6" in err, err
        assert not (tmp_path / "x").exists()
    assert "no transformers folder for this delta" in export_err(tmp_path, ckpt, [], capsys)
    sub = tmp_path / "bitfit"
    sub.mkdir()
    _, _, ckpt = delta("bitfit_bart_base", [], "bart", sub)
    assert "bitfit has no peft form" in export_err(sub, ckpt, ["--peft"], capsys)
    with pytest.raises(HFExportError, match="plain fairseq checkpoint"):
        export_hf(str(sub / "base.pt"), str(sub / "y"), peft=True)


def export_err(tmp_path, ckpt, extra, capsys):
    assert export_main(["hf", str(ckpt), str(tmp_path / "x"), *extra]) == 2
    return capsys.readouterr().err


# ------------------------------------------------------------------ the round trip
def _hf_bart(src):
    """A tiny random HF BART whose specials are not fairseq's 0..3 (so the vocabulary is really permuted)."""
    from tokenizers import ByteLevelBPETokenizer
    from tokenizers.processors import RobertaProcessing

    from test_hf_import import CORPUS, perturb, save_fast_tokenizer

    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(CORPUS, vocab_size=300, min_frequency=1, show_progress=False,
                            special_tokens=["<unk>", "<pad>", "<s>", "</s>", "<mask>"])
    tok.post_processor = RobertaProcessing(("</s>", 3), ("<s>", 2))
    save_fast_tokenizer(tok._tokenizer, src, bos_token="<s>", eos_token="</s>", cls_token="<s>", sep_token="</s>",
                        pad_token="<pad>", unk_token="<unk>", mask_token="<mask>")
    cfg = transformers.BartConfig(vocab_size=tok.get_vocab_size(), d_model=32, encoder_layers=2, decoder_layers=2,
                                  encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                                  decoder_ffn_dim=64, max_position_embeddings=64, pad_token_id=1, bos_token_id=2,
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
    from test_hf_import import CORPUS
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
    run(sys.executable, "-m", "unifairseq.tools.export", "hf", ckpt, out, "--peft", "--hf-vocab", src)
    run(sys.executable, "-m", "unifairseq.tools.export", "hf", ckpt, merged, "--hf-vocab", src)

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

    from test_hf_import import CORPUS, SENTENCES

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
