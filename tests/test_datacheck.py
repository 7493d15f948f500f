"""Bad data gets one clear message (unifairseq.data.check): missing, malformed, empty, misaligned and
too-long splits, through the Python API, the CLI the scripts call, and fairseq-train with our task."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fairseq.data import Dictionary

from datahelp import write_split

from unifairseq.data import check as datacheck
from unifairseq.data.check import DataError

REPO = Path(__file__).resolve().parents[1]


def make_translation(data: Path, src_lens=(5, 7, 3), tgt_lens=(4, 6, 2), splits=("train", "valid")):
    for split in splits:
        write_split(data / f"{split}.source-target.source", src_lens)
        write_split(data / f"{split}.source-target.target", tgt_lens)
    d = Dictionary()
    for i in range(20):
        d.add_symbol(f"w{i}")
    for lang in ("source", "target"):
        d.save(str(data / f"dict.{lang}.txt"))


def test_index_format_constants_match_fairseq():
    from fairseq.data.indexed_dataset import MMapIndexedDataset, _code_to_dtype

    assert datacheck.MMAP_MAGIC == MMapIndexedDataset.Index._HDR_MAGIC
    assert datacheck._ITEMSIZE == {c: np.dtype(t).itemsize for c, t in _code_to_dtype.items()}


def test_good_translation_data_passes(tmp_path):
    make_translation(tmp_path)
    assert datacheck.check_translation(str(tmp_path), "source", "target", ["train", "valid"], (8, 8)) == \
        {"train": 3, "valid": 3}


def test_missing_split_names_file_and_fix(tmp_path):
    make_translation(tmp_path, splits=("train",))
    with pytest.raises(DataError, match=r"valid\.source-target\.source\.idx .*not found: run fairseq-preprocess"):
        datacheck.check_translation(str(tmp_path), "source", "target", ["train", "valid"])
    with pytest.raises(DataError, match="does not exist"):
        datacheck.check_translation(str(tmp_path / "nope"), "source", "target", ["train"])


def test_malformed_index_and_bin(tmp_path):
    make_translation(tmp_path)
    idx = tmp_path / "train.source-target.source.idx"
    good = idx.read_bytes()
    idx.write_bytes(b"this is text, not an index\n")
    with pytest.raises(DataError, match="is not a fairseq index"):
        datacheck.check_translation(str(tmp_path), "source", "target", ["train"])
    idx.write_bytes(good[:20])
    with pytest.raises(DataError, match="is truncated"):
        datacheck.check_translation(str(tmp_path), "source", "target", ["train"])
    idx.write_bytes(good[:-10])
    with pytest.raises(DataError, match="announces 3 examples"):
        datacheck.check_translation(str(tmp_path), "source", "target", ["train"])
    idx.write_bytes(good)
    bin_ = tmp_path / "train.source-target.source.bin"
    bin_.write_bytes(bin_.read_bytes()[:-2])
    with pytest.raises(DataError, match=r"has 28 bytes but its index .* describes 30"):
        datacheck.check_translation(str(tmp_path), "source", "target", ["train"])


def test_empty_and_misaligned(tmp_path):
    make_translation(tmp_path, src_lens=(), tgt_lens=())
    with pytest.raises(DataError, match=r"empty dataset \(0 examples\)"):
        datacheck.check_translation(str(tmp_path), "source", "target", ["train"])
    make_translation(tmp_path, src_lens=(3, 4), tgt_lens=(3,))
    with pytest.raises(DataError, match="2 source examples but 1 target examples"):
        datacheck.check_translation(str(tmp_path), "source", "target", ["train"])


def test_too_long_names_count_limit_and_fix(tmp_path):
    make_translation(tmp_path, src_lens=(5, 12, 3, 40), tgt_lens=(4, 6, 2, 3))
    with pytest.raises(DataError, match=r"2 of 4 examples are longer than the model's 10 source positions "
                                        r"\(longest 40 tokens, first example ids 1, 3\).*--truncate-source"):
        datacheck.check_translation(str(tmp_path), "source", "target", ["train"], (10, 10))
    # truncation makes long sources fine; the target is still checked
    assert datacheck.check_translation(str(tmp_path), "source", "target", ["train"], (10, 10), True) == {"train": 4}
    with pytest.raises(DataError, match="target positions"):
        datacheck.check_translation(str(tmp_path), "source", "target", ["train"], (10, 5), True)
    # mBART appends a language token to each source: a 10-token source no longer fits 10 positions
    make_translation(tmp_path, src_lens=(10,), tgt_lens=(3,))
    assert datacheck.check_translation(str(tmp_path), "source", "target", ["train"], (10, 10)) == {"train": 1}
    with pytest.raises(DataError, match="longest 11 tokens"):
        datacheck.check_translation(str(tmp_path), "source", "target", ["train"], (10, 10), src_extra=1)


def test_sentence_prediction_layout(tmp_path):
    write_split(tmp_path / "input0" / "train", (5, 8, 509))
    write_split(tmp_path / "label" / "train", (1, 1, 1))
    assert datacheck.check_sentence_prediction(str(tmp_path), ["train"], 512) == {"train": 3}
    write_split(tmp_path / "input1" / "train", (2, 2, 2))  # pairs: <s> a </s> b -> 509 + 1 + 2 + 1 > 512
    with pytest.raises(DataError, match=r"1 of 3 examples .*512 .*--shorten-method truncate"):
        datacheck.check_sentence_prediction(str(tmp_path), ["train"], 512)
    write_split(tmp_path / "label" / "train", (1, 1))
    with pytest.raises(DataError, match="3 input0 examples but 2 label rows"):
        datacheck.check_sentence_prediction(str(tmp_path), ["train"])


def test_cli_exit_status_and_message(tmp_path):
    make_translation(tmp_path, src_lens=(), tgt_lens=())
    cmd = [sys.executable, "-m", "unifairseq.data.check", str(tmp_path), "--layout", "translation",
           "--langs", "source", "target", "--splits", "train"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and "empty dataset" in proc.stderr and "Traceback" not in proc.stderr
    make_translation(tmp_path)
    proc = subprocess.run(cmd + ["--max-positions", "16"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0 and proc.stdout.strip() == "train=3", proc.stderr


def _fairseq_train(data: Path, *flags: str) -> subprocess.CompletedProcess:
    train = Path(sys.executable).parent / "fairseq-train"
    return subprocess.run(
        [str(train) if train.is_file() else "fairseq-train", str(data), "--user-dir", str(REPO / "user_dir"),
         "--task", "translation_rouge", "--source-lang", "source", "--target-lang", "target",
         "--arch", "lora_attn_bart_base", "--cpu", "--max-update", "1", "--batch-size", "2",
         "--save-dir", str(data / "ck"), "--no-save", *flags],
        capture_output=True, text=True, cwd=REPO, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))


def test_fairseq_train_with_our_task_reports_empty_data(tmp_path):
    """fairseq alone crashes in np.memmap ('cannot mmap an empty file'); --task translation_rouge
    stops first with the DataError naming the split, in one line."""
    make_translation(tmp_path, splits=("train",))
    make_translation(tmp_path, src_lens=(), tgt_lens=(), splits=("valid",))
    proc = _fairseq_train(tmp_path)
    assert proc.returncode != 0
    # one line in unifairseq's error style (the hook register() installs), not a traceback
    assert f"unifairseq: error: {tmp_path}/valid.source-target.source is an empty dataset (0 examples)" in proc.stderr, \
        proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]


def test_fairseq_train_with_our_task_names_too_long_examples(tmp_path):
    """Over-long examples: our task logs which and how many, with the fix; fairseq then refuses the
    validation split with its own message naming --skip-invalid-size-inputs-valid-test."""
    make_translation(tmp_path, src_lens=(5, 9, 3), tgt_lens=(4, 4, 2))
    proc = _fairseq_train(tmp_path, "--max-source-positions", "8", "--optimizer", "adam", "--lr", "1e-3")
    assert proc.returncode != 0
    log = proc.stdout + proc.stderr
    assert "valid.source-target.source: 1 of 3 examples are longer than the model's 8 source positions " \
           "(longest 9 tokens, first example ids 1)" in log and "--truncate-source" in log, log[-3000:]
    # fairseq drops the over-long example from training and trains on the other two (before batches
    # lost no sentence, the last batch of two was dropped too and the epoch was empty), then refuses it
    # in validation
    assert "1 samples have invalid sizes and will be skipped, max_positions=(8, 1024), first few sample ids=[1]" in log
    assert "Size of sample #1 is invalid" in log and "--skip-invalid-size-inputs-valid-test" in log, log[-3000:]


def test_fairseq_train_reports_a_bad_method_flag_in_one_line(tmp_path):
    """A unifairseq user error raised inside fairseq-train (here: a delta architecture with nothing to
    train) is printed by register()'s hook as one line naming the fix, exit status 1, no traceback."""
    make_translation(tmp_path)
    proc = _fairseq_train(tmp_path, "--arch", "delta_bart_base")
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("unifairseq: error: ")]
    assert proc.returncode == 1 and len(errors) == 1, proc.stderr[-3000:]
    assert "nothing to train" in errors[0] and "--attn-mode" in errors[0], errors
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
