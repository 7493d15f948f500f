"""What the project writes for plain fairseq -- merged and unmerged checkpoints -- loads in plain fairseq under
torch's weights-only load with nothing allow-listed, in a fresh interpreter without the plugin, and gives the
delta model's outputs (issue 19 item 7): a RoBERTa delta trained through fairseq's Trainer (the args in
cfg.model), the same delta as a shared folder merged onto a base that stores `args` as an argparse.Namespace
(released fairseq files' style), and unmerge's output; an older merged file that holds a Namespace still
unmerges in unifairseq."""
import argparse

import pytest
import torch
from fairseq.checkpoint_utils import torch_persistent_save

from ckpthelp import trained_roberta_lora
from plainhelp import run_plain_roberta
from tiny import HEAD, roberta_logits, roberta_tokens
from unifairseq.fairseq.checkpoint_io import load_checkpoint_file
from unifairseq.fairseq.plain_args import namespace_args, unloadable_objects
from unifairseq.fairseq.safe_globals import register_safe_globals
from unifairseq.tools.export import export_inference, export_merge, export_unmerge

pytestmark = pytest.mark.slow

ATOL = 1e-5


@pytest.fixture(scope="module")
def roberta(tmp_path_factory):
    """A LoRA RoBERTa with its head, on a tiny base saved as released bases are (`args`: a Namespace), and its
    checkpoint as fairseq's Trainer writes it (the args in cfg.model)."""
    import unifairseq.fairseq

    unifairseq.fairseq.register()  # the delta architectures, as --user-dir does (in this process only)
    root = tmp_path_factory.mktemp("plain")
    model, task, plain, base, delta, data = trained_roberta_lora(root)
    tokens = roberta_tokens(task.source_dictionary)
    model.eval(), plain.eval()
    with torch.no_grad():
        ref = dict(head=roberta_logits(model, tokens), base=plain(tokens, features_only=True)[0])
    return dict(root=root, data=data, base=base, delta=delta, tokens=tokens, ref=ref)


def test_merged_roberta_loads_in_plain_fairseq(roberta, tmp_path):
    merged = tmp_path / "merged.pt"
    assert export_merge(str(roberta["delta"]), str(merged))["arch"] == "roberta_base"
    assert unloadable_objects(torch.load(merged, weights_only=True)) == []
    what, got = run_plain_roberta(merged, roberta["data"], roberta["tokens"], tmp_path, head=HEAD)
    assert what == ["fairseq.models.roberta.model", "RobertaModel", "sentence_prediction"]
    diff = (got - roberta["ref"]["head"]).abs().max().item()
    assert diff < ATOL, diff
    assert roberta["ref"]["head"].abs().max() > 10 * ATOL  # the comparison has something to compare


def test_folder_merged_onto_an_args_form_base_loads_in_plain_fairseq(roberta, tmp_path):
    register_safe_globals()  # to look at the base as it is stored
    assert type(torch.load(roberta["base"], weights_only=True)["args"]) is argparse.Namespace
    folder = tmp_path / "shared"
    export_inference(str(roberta["delta"]), str(folder))
    merged = tmp_path / "merged.pt"
    assert export_merge(str(folder), str(merged))["arch"] == "roberta_base"  # the base's args, the delta's arch
    # the base's task (masked_lm) over the base's dictionary; the trained head travels in the file
    what, got = run_plain_roberta(merged, roberta["data"] / "input0", roberta["tokens"], tmp_path, head=HEAD)
    assert what == ["fairseq.models.roberta.model", "RobertaModel", "masked_lm"]
    diff = (got - roberta["ref"]["head"]).abs().max().item()
    assert diff < ATOL, diff


def test_unmerged_base_loads_in_plain_fairseq_and_old_merged_files_still_unmerge(roberta, tmp_path):
    merged, back = tmp_path / "merged.pt", tmp_path / "back.pt"
    export_merge(str(roberta["delta"]), str(merged))
    export_unmerge(str(merged), str(roberta["delta"]), str(back))
    assert unloadable_objects(torch.load(back, weights_only=True)) == []
    what, got = run_plain_roberta(back, roberta["data"], roberta["tokens"], tmp_path)
    assert what[:2] == ["fairseq.models.roberta.model", "RobertaModel"]
    diff = (got - roberta["ref"]["base"]).abs().max().item()
    assert diff < ATOL, diff  # LoRA taken back out: the base's hidden states again
    # a merged file written before the args were stored as primitives holds an argparse.Namespace
    state = namespace_args(torch.load(merged, weights_only=True))
    assert type(state["args"]) is argparse.Namespace
    old = tmp_path / "old_merged.pt"
    torch_persistent_save(state, str(old))
    assert unloadable_objects(torch.load(old, weights_only=True)) == ["state['args']: argparse.Namespace"]
    assert type(load_checkpoint_file(str(old))["args"]) is argparse.Namespace
    back2 = tmp_path / "back2.pt"
    export_unmerge(str(old), str(roberta["delta"]), str(back2))
    a, b = (torch.load(p, weights_only=True) for p in (back, back2))
    assert unloadable_objects(b) == [] and vars(a["args"]) == vars(b["args"])
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
