"""Delta-only checkpoints through fairseq's command lines: generate, export, resume, hub."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from unifairseq.fairseq.checkpoint_io import META_KEYS, load_checkpoint_file

from e2ehelp import _enro_data, demo, losses, run, train_argv  # noqa: F401  (fixtures: used by name)
from env import BIN, REPO

pytestmark = pytest.mark.slow


def generate(demo, path, out):
    p = run([BIN / "fairseq-generate", demo / "data-bin", "--user-dir", REPO / "user_dir", "--path", path,
             "--gen-subset", "test", "--beam", "4", "--max-len-b", "12", "--batch-size", "16",
             "--required-batch-size-multiple", "1", "--cpu"])
    Path(out).write_text(p.stdout)
    return sorted(l for l in p.stdout.splitlines() if l.startswith(("H-", "D-")))


def test_generate_from_delta_only_checkpoint_and_its_export(demo):
    ckpt = demo / "checkpoints" / "checkpoint_last.pt"
    state = load_checkpoint_file(str(ckpt))
    base = load_checkpoint_file(str(demo / "tiny_bart.pt"))
    assert not set(state["model"]) & set(base["model"]), "the delta checkpoint must hold no base tensor"
    assert set(META_KEYS) <= set(state["model"])
    hyps = generate(demo, ckpt, demo / "gen_delta.out")
    assert len([h for h in hyps if h.startswith("H-")]) == 16
    out = demo / "inference.pt"
    run([BIN / "unifairseq-export", "inference", ckpt, out])
    assert os.path.getsize(out) < os.path.getsize(ckpt) / 2  # no optimizer state, no prefix MLP
    assert generate(demo, out, demo / "gen_export.out") == hyps  # same tokens and scores


def test_resume_from_delta_checkpoint_matches_uninterrupted_run(demo, tmp_path):
    full = run(train_argv(demo, tmp_path / "full", 8))
    first = run(train_argv(demo, tmp_path / "resumed", 4))
    ckpt = tmp_path / "resumed" / "checkpoint_last.pt"
    state = load_checkpoint_file(str(ckpt))
    assert state["extra_state"]["train_iterator"]["iterations_in_epoch"] == 4  # stopped mid-epoch
    assert state["last_optimizer_state"]["state"], "optimizer state travels for resume"
    second = run(train_argv(demo, tmp_path / "resumed", 8))
    assert "base model loaded from" in second.stderr + second.stdout  # from the path the delta records
    a, b = losses(full.stderr + full.stdout), {**losses(first.stderr + first.stdout),
                                               **losses(second.stderr + second.stdout)}
    assert sorted(a) == sorted(b) == list(range(1, 9)), (a, b)
    for u in range(5, 9):
        assert a[u] == b[u], f"update {u}: uninterrupted {a[u]} vs resumed {b[u]}"


def test_hub_from_pretrained_on_delta_checkpoint(demo):
    from unifairseq.fairseq.models.bart import DeltaBARTModel

    hub = DeltaBARTModel.from_pretrained(str(demo / "checkpoints"), checkpoint_file="checkpoint_last.pt",
                                         data_name_or_path=str(demo / "data-bin"), bpe=None)
    hub.eval()
    d = hub.task.source_dictionary
    src = d.encode_line("the parliament", add_if_not_exist=False).long()
    out = hub.generate([src], beam=2, max_len_b=6)
    assert out and out[0][0]["tokens"].numel() > 0
    # the hub model carries the trained deltas on the tiny base
    state = load_checkpoint_file(str(demo / "checkpoints" / "checkpoint_last.pt"))["model"]
    own = hub.model.full_state_dict()
    for k, v in state.items():
        if k not in META_KEYS:
            assert torch.equal(own[k], v), k
    base = load_checkpoint_file(str(demo / "tiny_bart.pt"))["model"]
    for k, v in base.items():
        assert torch.equal(own[k], v), k
    # .sample()/.translate() go through the hub's tokenizer: with no BPE the input is the
    # whitespace-tokenized text this demo was trained on
    hub.bpe = _Identity()
    sentence = " ".join(d[i] for i in range(d.nspecial, d.nspecial + 5))  # words of the dictionary
    text = hub.sample([sentence], beam=2, max_len_b=6)
    assert isinstance(text[0], str) and text == hub.translate([sentence], beam=2, max_len_b=6)


class _Identity:
    def encode(self, x):
        return x

    def decode(self, x):
        return x


def test_fairseq_interactive_with_the_exported_delta(demo):
    """fairseq-interactive --user-dir user_dir --path <exported delta>: lines typed in give the
    hypotheses and scores fairseq-generate gives the same sentences."""
    ckpt = demo / "checkpoints" / "checkpoint_last.pt"
    out = demo / "inference_interactive.pt"
    if not out.exists():
        run([BIN / "unifairseq-export", "inference", ckpt, out])
    gen = run([BIN / "fairseq-generate", demo / "data-bin", "--user-dir", REPO / "user_dir", "--path", out,
               "--gen-subset", "test", "--beam", "4", "--max-len-b", "12", "--batch-size", "1",
               "--required-batch-size-multiple", "1", "--cpu"]).stdout
    fields = lambda prefix, text: {int(l.split("\t")[0][2:]): l.split("\t")[1:] for l in text.splitlines()
                                   if l.startswith(prefix)}
    sources, hyps = fields("S-", gen), fields("H-", gen)
    ids = sorted(sources)[:6]
    inter = run([BIN / "fairseq-interactive", demo / "data-bin", "--user-dir", REPO / "user_dir", "--path", out,
                 "--beam", "4", "--max-len-b", "12", "--batch-size", "1", "--buffer-size", "1", "--cpu"],
                input="".join(sources[i][0] + "\n" for i in ids)).stdout
    got = fields("H-", inter)
    assert sorted(got) == list(range(len(ids))), inter[-2000:]
    for j, i in enumerate(ids):
        assert got[j][1] == hyps[i][1], (sources[i], got[j], hyps[i])  # the same tokens
        assert abs(float(got[j][0]) - float(hyps[i][0])) < 1e-4  # and score
