"""Edges a new user hits, end to end on tiny models (issue 19 item 7): a base of another size than the
--arch is one line naming both sizes; a merged checkpoint holds nothing plain torch refuses but the
argparse.Namespace that fairseq 0.12's own BART files hold too."""
import subprocess
import sys

import pytest
import torch

from bankdata import BIN, DIMS, REPO, binarize, make_base, make_dict, run, train_delta, write_raw
from env import tool_env

pytestmark = pytest.mark.slow

# the other tiny size: twice bankdata's width, two layers per stack instead of one
WIDE = ["--encoder-layers", "2", "--decoder-layers", "2", "--encoder-embed-dim", "64", "--decoder-embed-dim", "64",
        "--encoder-ffn-embed-dim", "128", "--decoder-ffn-embed-dim", "128", "--encoder-attention-heads", "4",
        "--decoder-attention-heads", "4"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("edges")
    dict_txt = make_dict(root / "dict.txt")
    write_raw(root / "raw", seed=3, lines={"train": 24, "valid": 8, "test": 6})
    data = binarize(root / "raw", root / "bin", dict_txt)
    return data, make_base(data, root / "base.pt"), root


def train(data, base, save, dims, arch="lora_attn_bart_large"):
    return subprocess.run(
        [str(BIN / "fairseq-train"), str(data), "--user-dir", str(REPO / "user_dir"), "--task", "translation",
         "--source-lang", "src", "--target-lang", "tgt", "--arch", arch, "--attn-bn", "4", *dims,
         "--finetune-from-model", str(base), "--criterion", "cross_entropy", "--optimizer", "adam", "--lr", "0.01",
         "--max-update", "1", "--batch-size", "8", "--save-dir", str(save), "--cpu", "--num-workers", "0",
         "--no-progress-bar", "--disable-validation"],
        capture_output=True, text=True, cwd=REPO, env=tool_env(), timeout=600)


def test_a_base_of_another_size_is_one_line_naming_both_sizes(tiny, tmp_path):
    data, base, _ = tiny  # embed_dim 32, one layer per stack
    proc = train(data, base, tmp_path / "ck", WIDE)
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = (f"unifairseq: error: the base {str(base)!r} has embed_dim 32, layers 1; --arch lora_attn_bart_large "
            "builds 64, 2: give the base's sizes: --encoder-embed-dim 32 --decoder-embed-dim 32 --encoder-layers 1 "
            "--decoder-layers 1 (and its FFN and attention-head sizes)")
    assert proc.stderr.strip().splitlines()[-1] == line, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "size mismatch" not in proc.stderr
    assert not (tmp_path / "ck" / "checkpoint_last.pt").exists()


def test_merged_checkpoint_holds_only_primitives_tensors_and_fairseqs_namespace(tiny, tmp_path):
    data, base, _ = tiny
    delta = train_delta(data, base, "lora", tmp_path / "ck")
    merged = tmp_path / "merged.pt"
    run([BIN / "unifairseq-export", "merge", delta, merged])
    # what plain torch's default weights_only load refuses in each (a fresh interpreter: nothing allow-listed):
    # the merged file asks for nothing beyond the base file's one global -- no fairseq or unifairseq class
    code = ("import sys, torch; print([torch.serialization.get_unsafe_globals_in_checkpoint(p) for p in sys.argv[1:]]);"
            "assert not any(m.startswith(('fairseq', 'unifairseq')) for m in sys.modules)")
    proc = run([sys.executable, "-c", code, base, merged, delta])
    globals_of = dict(zip(("base", "merged", "delta"), eval(proc.stdout)))
    assert globals_of == {"base": ["argparse.Namespace"], "merged": ["argparse.Namespace"],
                          "delta": ["argparse.Namespace"]}, proc.stdout  # fairseq-train's own file: the same
