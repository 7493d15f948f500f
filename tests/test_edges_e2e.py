"""Edges a new user hits, end to end on tiny models (issue 19 item 7): a base of another size than the
--arch is one line naming both sizes; a merged checkpoint loads in plain fairseq under torch's default
weights-only load with nothing allow-listed, and decodes what the delta decodes."""
import subprocess
import sys

import pytest
import torch

from bankdata import BIN, DIMS, REPO, binarize, make_base, make_dict, run, train_delta, write_raw
from env import tool_env
from plainhelp import plain_env

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


GEN = ["--source-lang", "src", "--target-lang", "tgt", "--gen-subset", "test", "--beam", "2", "--batch-size", "8",
       "--required-batch-size-multiple", "1", "--max-len-a", "0", "--max-len-b", "12", "--cpu", "--print-alignment"]
# plain torch and plain fairseq in a fresh interpreter: no plugin, no --user-dir, nothing allow-listed
PLAIN = r"""
import argparse, sys, torch
path, data = sys.argv[1:3]
torch_own = list(torch.serialization.get_safe_globals())  # what torch itself registers (its own classes)
assert argparse.Namespace not in torch_own and not any("fairseq" in repr(g) for g in torch_own), torch_own
torch.load(path)  # torch's default: weights-only under torch >= 2.6
torch.load(path, weights_only=True)
from fairseq import checkpoint_utils
models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([path], arg_overrides={"data": data})
assert not any(m.startswith("unifairseq") for m in sys.modules), "plain fairseq only"
assert list(torch.serialization.get_safe_globals()) == torch_own
print(type(models[0]).__module__, type(models[0]).__name__)
"""


def decodes(text):
    """fairseq-generate's output -> per sentence (tokens, positional scores), for mergecheck.compare_decodes."""
    lines = {tuple(l.split("\t", 1)[0].split("-")): l.split("\t") for l in text.splitlines() if l[:2] in ("H-", "P-")}
    ids = sorted({int(i) for _, i in lines})
    return [dict(tokens=lines["H", str(i)][2].split(), positional_scores=[float(x) for x in lines["P", str(i)][1].split()])
            for i in ids]


def test_merged_checkpoint_loads_and_decodes_in_plain_fairseq_with_nothing_allow_listed(tiny, tmp_path):
    from unifairseq.bench.mergecheck import compare_decodes

    data, base, _ = tiny
    delta = train_delta(data, base, "lora", tmp_path / "ck")  # fairseq-train's file: the args in cfg.model
    merged = tmp_path / "merged.pt"
    run([BIN / "unifairseq-export", "merge", delta, merged])
    plain = plain_env()
    proc = subprocess.run([sys.executable, "-c", PLAIN, str(merged), str(data)], capture_output=True, text=True,
                          cwd=tmp_path, env=plain, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-2:] == ["fairseq.models.bart.model", "BARTModel"], proc.stdout
    # plain fairseq-generate --path merged.pt, no --user-dir, against the delta decoded through --user-dir
    gen = subprocess.run([str(BIN / "fairseq-generate"), str(data), "--path", str(merged), *GEN],
                         capture_output=True, text=True, cwd=tmp_path, env=plain, timeout=300)
    assert gen.returncode == 0, gen.stderr[-3000:]
    assert "unifairseq" not in gen.stderr
    unmerged = run([BIN / "fairseq-generate", data, "--user-dir", REPO / "user_dir", "--path", delta, *GEN])
    got, ref = decodes(gen.stdout), decodes(unmerged.stdout)
    assert len(ref) == 6
    verdict = compare_decodes(ref, got)
    assert verdict["ok"] and verdict["same_tokens"] == 6, verdict
