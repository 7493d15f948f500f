"""unifairseq-search on the seq2seq tasks (issue 17): XSum (scripts/train_xsum.sh, ROUGE through
--eval-rouge on its selection subset valid1) and WMT16 en-ro (scripts/train_enro.sh, BLEU through the
--eval-bleu flags the search adds for --metric bleu). Fast: the record parser on valid1 records, the
metric / data / --epochs lines, the trial command's flags, the paper grid's counts on an encoder-decoder
against built models. Slow: real --tiny trials (8 updates each) on samples of the real data, each
trial's metric checked against its own train.log and its stored count against the trained model's."""
import csv
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from env import DATA, REPO, require_data, tool_env
from tiny import DIM, FFN_DIM, LAYERS, tiny_model
import unifairseq.fairseq.models  # noqa: F401  (registers the delta architectures tiny_model builds)
from unifairseq.core.methods import ModelShape
from unifairseq.search import space as sp
from unifairseq.search import trial as tr
from unifairseq.search.errors import SearchError


def _line(subset, rec):
    return f"2026-12-03 00:00:00 | INFO | {subset} | {json.dumps(rec)}\n"


def test_records_of_the_run_subset_valid1(tmp_path):
    """XSum validates on valid1: its records are read by that name, the plain `valid` reading (SST-2)
    stays as it was, and the subset comes from the run's own command."""
    log = tmp_path / "train.log"
    log.write_text(
        _line("train", {"epoch": 1, "train_loss": "9.1", "train_num_updates": "4"})
        + _line("valid1", {"epoch": 1, "valid1_loss": "12.3", "valid1_nll_loss": "12.2", "valid1_rouge2": "1.5",
                           "valid1_num_updates": "4"})
        + "2026-12-03 00:00:01 | INFO | fairseq.trainer | valid1 summary {not json\n"
        + _line("valid", {"epoch": 1, "valid_loss": "7.0", "valid_accuracy": "61.5", "valid_num_updates": "4"})
        + _line("valid1", {"epoch": 2, "valid1_loss": "11.9", "valid1_nll_loss": "11.8", "valid1_rouge2": "0.5",
                           "valid1_num_updates": "8"})
        + '2026-12-03 00:00:02 | INFO | valid1 | {"epoch": 3, "valid1_rou', encoding="utf-8")  # cut short
    v1 = tr.valid_records(str(log), "valid1")
    assert [r["valid1_num_updates"] for r in v1] == ["4", "8"]
    assert tr.best(v1, "rouge2", True, "valid1") == 1.5
    assert tr.best(v1, "loss", False, "valid1") == 11.9  # valid1_loss, not valid1_nll_loss
    assert tr.best(v1, "bleu", True, "valid1") is None
    assert tr.valid_records(str(log)) == [{"epoch": 1, "valid_loss": "7.0", "valid_accuracy": "61.5",
                                           "valid_num_updates": "4"}]
    assert tr.best(tr.valid_records(str(log)), "accuracy", True) == 61.5
    # the subset: the run's last --valid-subset, its first name; fairseq's default without one
    assert tr.valid_subset(str(tmp_path)) == "valid"  # no train_args.json
    args = tmp_path / "train_args.json"
    for argv, subset in ((["fairseq-train", "d", "--lr", "1"], "valid"),
                         (["fairseq-train", "d", "--valid-subset", "valid1", "--ignore-unused-valid-subsets"], "valid1"),
                         (["fairseq-train", "d", "--valid-subset", "valid1", "--valid-subset", "valid,test"], "valid"),
                         (["fairseq-train", "d", "--valid-subset=valid1,valid"], "valid1")):
        args.write_text(json.dumps(argv), encoding="utf-8")
        assert tr.valid_subset(str(tmp_path)) == subset, argv


def test_metric_data_and_epochs_lines(tmp_path):
    with pytest.raises(SearchError, match=r"--metric bleu: the XSum runs do not produce it; choose one of "
                                          r"rouge2, rouge1, rougeL, loss$"):
        tr.check_metric("XSum", "bleu")
    with pytest.raises(SearchError, match="--metric rouge2: the en-ro runs do not produce it; choose one of bleu, loss$"):
        tr.check_metric("en-ro", "rouge2")
    for task in ("XSum", "en-ro"):
        tr.check_metric(task, "loss")
        tr.check_epochs(task, None)
    tr.check_epochs("SST-2", 3)
    with pytest.raises(SearchError, match=r"--epochs: scripts/train_enro.sh trains by updates.*-- --max-update N"):
        tr.check_epochs("en-ro", 3)
    # XSum: DATA/bin, or DATA itself as the script reads it; the missing split is named with its fix
    xsum = tmp_path / "xsum"
    (xsum / "bin").mkdir(parents=True)
    for f in ("dict.source.txt", "train.source-target.source.idx", "train.source-target.target.idx"):
        (xsum / "bin" / f).write_text("")
    with pytest.raises(SearchError) as e:
        tr.check_data("XSum", str(xsum))
    assert str(e.value) == (f"--data {xsum}: bin/valid.source-target.source.idx is missing (that split was not "
                            f"preprocessed); run scripts/preprocess_xsum.sh --raw RAW --out {xsum}")
    flat = tmp_path / "flat"
    flat.mkdir()
    for f in ("train", "valid"):
        for side in ("source", "target"):
            (flat / f"{f}.source-target.{side}.idx").write_text("")
    with pytest.raises(SearchError, match=r"flat: dict.source.txt is missing \(its dictionary was not preprocessed\); "
                                          r"run scripts/preprocess_xsum.sh"):
        tr.check_data("XSum", str(flat))
    enro = tmp_path / "enro"
    enro.mkdir()
    for f in ("dict.en_XX.txt", "train.en_XX-ro_RO.en_XX.idx", "train.en_XX-ro_RO.ro_RO.idx",
              "valid.en_XX-ro_RO.en_XX.idx"):
        (enro / f).write_text("")
    with pytest.raises(SearchError, match=r"valid.en_XX-ro_RO.ro_RO.idx is missing .*run scripts/preprocess_enro.sh"):
        tr.check_data("en-ro", str(enro))
    (enro / "valid.en_XX-ro_RO.ro_RO.idx").write_text("")
    tr.check_data("en-ro", str(enro))
    assert tr.data_bin("en-ro", str(enro)) == str(enro) and tr.data_bin("XSum", str(xsum)) == str(xsum / "bin")


@pytest.mark.parametrize("args,message", [
    (["--task", "XSum", "--data", "{tmp}", "--tiny", "--epochs", "2"],
     "--epochs: scripts/train_xsum.sh trains by updates and has no epochs"),
    (["--task", "en-ro", "--data", "{tmp}", "--tiny"], "train.en_XX-ro_RO.en_XX.idx is missing"),
])
def test_cli_lines(tmp_path, args, message):
    proc = subprocess.run([sys.executable, "-m", "unifairseq.search.cli", *[a.format(tmp=tmp_path) for a in args]],
                          capture_output=True, text=True, env=tool_env(), timeout=120)
    lines = [l for l in proc.stderr.splitlines() if l.startswith("unifairseq-search: error:")]
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_bleu_flags_only_for_the_bleu_metric():
    """--metric bleu: BLEU-based selection after the point's flags, before the user's (which come last)."""
    bleu = tr.command("en-ro", "/d", "/f", ["--attn-mode", "prefix"], None, True, None, 1, ["--lr", "1"], metric="bleu")
    tail = bleu[bleu.index("--") + 1:]
    assert tail == ["--attn-mode", "prefix", *tr.BLEU_FLAGS, "--lr", "1"]
    assert tail[tail.index("--eval-bleu-remove-bpe") + 1] == "sentencepiece"  # the data is sentencepiece pieces
    assert json.loads(tail[tail.index("--eval-bleu-args") + 1]) == {"beam": 5, "max_len_b": 200}  # eval_enro.sh's
    loss = tr.command("en-ro", "/d", "/f", ["--attn-mode", "prefix"], None, True, None, 1, [], metric="loss")
    assert "--eval-bleu" not in loss and loss[1].endswith("scripts/train_enro.sh") and loss[2] == "delta"
    xsum = tr.command("XSum", "/d", "/f", [], "/b.pt", False, None, 1, [], metric="rouge2")
    assert xsum[1].endswith("scripts/train_xsum.sh") and xsum[xsum.index("--base") + 1] == "/b.pt"
    assert xsum[-1] == "--"  # train_xsum.sh selects on ROUGE-2 itself


def test_paper_grid_and_registry_counts_on_an_encoder_decoder_equal_the_built_models():
    """The paper grid on a BART's shape: prefix and LoRA act on every attention (encoder, decoder, cross),
    adapters on both stacks' FFNs; the plan's count is what a built delta_bart_large reports."""
    shape = ModelShape.encoder_decoder(DIM, FFN_DIM, LAYERS, LAYERS)
    points = sp.paper_grid(shape, 200_000, ["1%", "5%"])
    assert {p.group for p in points} == {"insertion", "representation", "composition", "mam"}
    seen = set()
    for p in points:
        f = p.flags
        kind = (f.get("attn_mode"), f.get("ffn_mode"))
        if kind in seen:
            continue
        seen.add(kind)
        model, _, _ = tiny_model("delta_bart_large", p.argv())
        assert model.delta_report["formula"] == p.stored, p.label
        if kind == ("prefix", None):
            assert p.stored == 2 * f["attn_bn"] * DIM * 3 * LAYERS  # P_k, P_v at 3 attentions per layer pair
    assert {("prefix", None), (None, "adapter"), ("prefix", "adapter")} <= seen
    # the registry space on the same shape, under a budget: each side's largest size fits it (the other
    # side at its smallest), and counts as its built model does
    entries = sp.registry_space(shape, 2_000)
    assert {e.design.method for e in entries} >= {"prefix", "adapter", "lora"}
    for e in entries[::max(1, len(entries) // 6)]:
        for side, (_, hi) in e.ranges.items():
            sizes = {s: (hi if s == side else lo) for s, (lo, _) in e.ranges.items()}
            p = sp.make_point(e.design, sizes, shape)
            assert p.stored <= 2_000, p.label
            model, _, _ = tiny_model("delta_bart_large", p.argv())
            assert model.delta_report["formula"] == p.stored, p.label


# ===================================================================== end to end
def search(out, task, *args, timeout=900):
    proc = subprocess.run([sys.executable, "-m", "unifairseq.search.cli", "--task", task, "--tiny", "--out", str(out),
                           *map(str, args)], cwd=REPO, env=tool_env(), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"unifairseq-search failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def lines(path, start, stop):
    with open(path, encoding="utf-8") as f:
        return [l for i, l in enumerate(f) if start <= i < stop]


def preprocess(script, raw, out):
    proc = subprocess.run(["bash", str(REPO / "scripts" / f"{script}.sh"), "--raw", str(raw), "--out", str(out),
                           "--tiny"], cwd=REPO, env=tool_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def xsum_data(tmp_path_factory):
    """Real XSum test documents as a tiny train / validation set (preprocess_xsum.sh --tiny: its valid1
    is the model-selection subset)."""
    require_data("xsum/test.source", "xsum/test.target")
    w = tmp_path_factory.mktemp("xsum")
    (w / "raw").mkdir()
    for side in ("source", "target"):
        (w / "raw" / f"train.{side}").write_text("".join(lines(DATA / "xsum" / f"test.{side}", 0, 64)), encoding="utf-8")
        (w / "raw" / f"val.{side}").write_text("".join(lines(DATA / "xsum" / f"test.{side}", 64, 80)), encoding="utf-8")
    return preprocess("preprocess_xsum", w / "raw", w / "data")


@pytest.fixture(scope="module")
def enro_data(tmp_path_factory):
    """Real WMT16 dev sentences as a tiny train / validation set (preprocess_enro.sh --tiny trains its
    sentencepiece model on them)."""
    require_data("wmt16_en_ro/dev.en", "wmt16_en_ro/dev.ro")
    w = tmp_path_factory.mktemp("enro")
    (w / "raw").mkdir()
    for lang in ("en", "ro"):
        (w / "raw" / f"train.{lang}").write_text("".join(lines(DATA / "wmt16_en_ro" / f"dev.{lang}", 0, 200)),
                                                 encoding="utf-8")
        (w / "raw" / f"dev.{lang}").write_text("".join(lines(DATA / "wmt16_en_ro" / f"dev.{lang}", 200, 216)),
                                               encoding="utf-8")
    return preprocess("preprocess_enro", w / "raw", w / "data")


# a prefix (every attention) and a scaled parallel adapter (every FFN): the two stored-count formulas
GRID = ("points:\n  - attn_mode: prefix\n    attn_bn: 4\n"
        "  - ffn_mode: adapter\n    ffn_option: parallel\n    ffn_adapter_scalar: 4.0\n    ffn_bn: 8\n")
# the user's flags: a larger step (the tiny runs then decode more than one token) and two validations
EXTRA = ["--lr", "3e-2", "--validate-interval-updates", "4"]


def trials(out):
    with open(out / "trials.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def log_records(folder, subset):
    """The trial's validation records, read here from its train.log on their own."""
    text = (folder / "train.log").read_text(encoding="utf-8")
    return [json.loads(l.split(f"| {subset} | ", 1)[1]) for l in text.splitlines() if f"| {subset} | {{" in l]


def check_trial(out, r, subset, key, pick):
    """One trial's row against its own run: the metric is the best KEY record of its log, the stored
    count the paper formula count its built model logged, the base count its frozen base."""
    folder = out / "trials" / f"{int(r['number']):04d}"
    recs = log_records(folder, subset)
    assert [int(x[f"{subset}_num_updates"]) for x in recs] == [4, 8]  # the user's flags reached fairseq
    assert float(r["metric"]) == pick(float(x[f"{subset}_{key}"]) for x in recs)
    text = (folder / "train.log").read_text(encoding="utf-8")
    m = re.search(r"of the ([\d,]+) frozen base parameters\); paper formula count ([\d,]+)", text)
    assert int(r["stored_params"]) == int(m.group(2).replace(",", ""))
    base = int(m.group(1).replace(",", ""))
    assert json.loads((out / "best.json").read_text())["base_params"] == base
    assert float(r["stored_pct"]) == pytest.approx(100 * int(r["stored_params"]) / base, abs=1e-4)
    argv = json.loads((folder / "train_args.json").read_text())
    assert r["command"] == shlex.join(argv) and argv[-len(EXTRA):] == EXTRA  # the user's flags last
    # the search's one tiny base, linked in (the script made none of its own)
    assert os.path.samefile(folder / "tiny_base.pt", out / "tiny_base.pt")
    assert os.path.samefile(argv[argv.index("--finetune-from-model") + 1], folder / "tiny_base.pt")
    return argv


@pytest.mark.slow
def test_xsum_grid_search_reads_rouge2_of_valid1(xsum_data, tmp_path):
    out = tmp_path / "s"
    (tmp_path / "space.yaml").write_text(GRID, encoding="utf-8")
    proc = search(out, "XSum", "--data", xsum_data, "--space", tmp_path / "space.yaml", "--", *EXTRA)
    rows = trials(out)
    assert [r["state"] for r in rows] == ["COMPLETE", "COMPLETE"], rows
    # 2 x 4 x 64 at 6 attentions (2 encoder, 2 decoder, 2 cross); 2 x 8 x 64 at 4 FFNs
    assert [int(r["stored_params"]) for r in rows] == [3072, 4096]
    for r in rows:
        argv = check_trial(out, r, "valid1", "rouge2", max)
        assert argv[argv.index("--task") + 1] == "translation_rouge" and "--eval-rouge" in argv
        assert argv[argv.index("--valid-subset") + 1] == "valid1" and argv[argv.index("--arch") + 1] == "delta_bart_large"
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    best = json.loads((out / "best.json").read_text())
    assert best["metric"] == "rouge2" and best["maximize"] is True and best["front"]
    assert "valid rouge2" in proc.stdout


@pytest.mark.slow
def test_enro_grid_search_on_bleu_and_on_loss(enro_data, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(GRID, encoding="utf-8")
    out = tmp_path / "bleu"
    search(out, "en-ro", "--data", enro_data, "--space", space, "--", *EXTRA)  # --metric bleu: the default
    rows = trials(out)
    assert [r["state"] for r in rows] == ["COMPLETE", "COMPLETE"], rows
    for r in rows:
        argv = check_trial(out, r, "valid", "bleu", max)
        assert argv[argv.index("--task") + 1] == "translation_mbart" and argv[argv.index("--arch") + 1] == "delta_mbart_large"
        i = argv.index("--eval-bleu")
        assert argv[i:i + len(tr.BLEU_FLAGS)] == list(tr.BLEU_FLAGS)
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    best = json.loads((out / "best.json").read_text())
    assert best["metric"] == "bleu" and best["front"]
    # the BLEU a trial records is the BLEU a user gets by hand: eval_enro.sh on the validation split, on
    # the trial's last checkpoint (a BLEU-selected run's checkpoint loads weights-only), equals its last record
    top = max(rows, key=lambda r: float(r["metric"]))
    folder = out / "trials" / f"{int(top['number']):04d}"
    proc = subprocess.run(["bash", str(REPO / "scripts" / "eval_enro.sh"), str(folder / "checkpoint_last.pt"), "--data",
                           str(enro_data), "--subset", "valid", "--tiny", "--out", str(tmp_path / "eval")], cwd=REPO,
                          env=tool_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    scores = json.loads((tmp_path / "eval" / "scores.json").read_text())
    assert scores["n"] == 16 and scores["decoding"] == {"beam": 5, "max_len_b": 200, "lenpen": 1.0}
    last = log_records(folder, "valid")[-1]
    assert scores["bleu"] == pytest.approx(float(last["valid_bleu"]), abs=0.006)  # fairseq logs 2 decimals
    # --metric loss: the script's own selection (validation loss), no BLEU decoding
    out = tmp_path / "loss"
    space.write_text("points:\n  - attn_mode: prefix\n    attn_bn: 4\n", encoding="utf-8")
    search(out, "en-ro", "--data", enro_data, "--space", space, "--metric", "loss", "--", *EXTRA)
    (r,) = trials(out)
    assert r["state"] == "COMPLETE"
    argv = check_trial(out, r, "valid", "loss", min)
    assert "--eval-bleu" not in argv and "--best-checkpoint-metric" not in argv
    assert json.loads((out / "best.json").read_text())["maximize"] is False
