"""`--task delta_bank` through fairseq-generate / fairseq-interactive. Data side: which delta each example of a batch gets, through fairseq's own
batching (fairseq-interactive's make_batches, the task's batch iterator). The models are in
test_bank_cli.py / test_bank_train.py."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from fairseq.data import LanguagePairDataset
from fairseq_cli.interactive import make_batches

import unifairseq.fairseq

unifairseq.fairseq.register()
from unifairseq.fairseq.tasks.bank import (BankTaskError, DeltaBankConfig, DeltaBankTask, DeltaTaggedDataset,
                                           parse_bank_tasks, split_tag)

from bankdata import (BANK_TASK, GEN, binarize, build_bank_checkpoint, fields, generate, make_base, make_dict,
                      train_delta, write_raw)
from tiny import tiny_dict

NAMES = ["sum", "mt", "para"]


def make_task(default="mt", names=NAMES):
    d = tiny_dict()
    task = DeltaBankTask(DeltaBankConfig(default_delta=default), d, d)
    task.bank_names = list(names)  # what build_model reads from model.bank.names
    return task, d


def test_tags_and_task_specs():
    assert split_tag("<delta=sum>  w1 w2") == ("sum", "w1 w2")
    assert split_tag("w1 <delta=sum> w2") == (None, "w1 <delta=sum> w2")  # only a leading tag
    with pytest.raises(BankTaskError, match=r"^a line: malformed delta tag at '<delta=a b> w1'"):
        split_tag("<delta=a b> w1")  # not text that would become <unk> (tests/test_bank_inputs.py)
    assert parse_bank_tasks("sum:/d/x, mt:/d/y") == [("sum", "/d/x"), ("mt", "/d/y")]
    with pytest.raises(BankTaskError, match=r"'sum' is not NAME:DATA"):
        parse_bank_tasks("sum")
    with pytest.raises(BankTaskError, match="appears twice"):
        parse_bank_tasks("a:x,a:y")


def test_unknown_or_missing_name_lists_the_bank():
    task, _ = make_task(default=None)
    assert task.resolve(["para", "sum"]) == [2, 0]
    with pytest.raises(BankTaskError, match=r"^unknown delta 'sumx'; the bank has: sum, mt, para$"):
        task.resolve(["sumx"])
    with pytest.raises(BankTaskError, match=r"no --default-delta \(nor the model.s --bank-default\); the bank has: sum, mt, para"):
        task.resolve([None])


def _pairs(d, lengths, names):
    src = [torch.tensor([d.index(f"w{i + j}") for j in range(n - 1)] + [d.eos()]) for i, n in enumerate(lengths)]
    return LanguagePairDataset(src, [len(s) for s in src], d, tgt=src, tgt_sizes=[len(s) for s in src], tgt_dict=d)


def test_collated_delta_ids_follow_fairseq_sort_order():
    """LanguagePairDataset's collater sorts a batch by source length: the delta ids must move with the rows."""
    task, d = make_task()
    lengths = [3, 7, 5, 2, 6]
    names = ["sum", None, "para", "sum", "mt"]
    ds = DeltaTaggedDataset(_pairs(d, lengths, names), names, task.resolve)
    batch = ds.collater([ds[i] for i in range(5)])
    assert batch["id"].tolist() == [1, 4, 2, 0, 3]  # longest first
    want = {i: task.resolve([n])[0] for i, n in enumerate(names)}
    assert batch["net_input"]["delta_ids"].tolist() == [want[i] for i in batch["id"].tolist()]
    # each row is the example its id says
    for row, i in enumerate(batch["id"].tolist()):
        assert batch["net_input"]["src_lengths"][row] == lengths[i]


def test_concatenated_tasks_get_their_own_delta_ids():
    """A ConcatDataset's samples carry their index within their part as id: the delta must follow the
    global index (the multi-task training data of --bank-tasks)."""
    from fairseq.data import ConcatDataset

    task, d = make_task()
    a, b = _pairs(d, [3, 5, 4], None), _pairs(d, [6, 2], None)
    names = ["sum"] * 3 + ["para"] * 2
    ds = DeltaTaggedDataset(ConcatDataset([a, b]), names, task.resolve)
    batch = ds.collater([ds[i] for i in (4, 0, 3, 2)])
    assert batch["id"].tolist() == [3, 2, 0, 4]  # global indices, longest source first
    assert batch["net_input"]["delta_ids"].tolist() == [2, 0, 0, 2]
    assert batch["net_input"]["src_lengths"].tolist() == [6, 4, 3, 2]


class Recorder:
    """Stands in for the sequence generator: records what inference_step hands it."""

    def __init__(self):
        self.seen = []

    def generate(self, models, sample, **kw):
        self.seen.append((sample["net_input"]["src_tokens"].clone(), sample["net_input"]["delta_ids"].tolist()))
        return [[] for _ in range(sample["net_input"]["src_tokens"].size(0))]


@pytest.mark.parametrize("buffer_size,batch_size", [(1, 1), (4, 2), (7, 3)])
def test_interactive_lines_keep_their_deltas(buffer_size, batch_size):
    """fairseq-interactive's own make_batches (lines read in buffers, sorted by length into batches) and
    its sample without delta_ids: every line is decoded with the delta its tag (or the default) names."""
    task, d = make_task(default="mt")
    lines = ["<delta=sum> w1 w2 w3", "w4", "<delta=para> w5 w6", "w7 w8 w9 w10 w11", "<delta=sum>w12",
             "<delta=mt> w13 w14", "<delta=para> w15 w16 w17 w18", "w19 w20"]
    want = {}
    for line in lines:
        name, text = split_tag(line)
        want[text.strip()] = task.resolve([name])[0]
    cfg = SimpleNamespace(generation=SimpleNamespace(constraints=None),
                          dataset=SimpleNamespace(max_tokens=None, batch_size=batch_size,
                                                  skip_invalid_size_inputs_valid_test=False))
    gen = Recorder()
    n = 0
    for start in range(0, len(lines), buffer_size):  # buffered_read
        for batch in make_batches(lines[start:start + buffer_size], cfg, task, (128, 128), lambda x: x):
            sample = {"net_input": {"src_tokens": batch.src_tokens, "src_lengths": batch.src_lengths}}
            task.inference_step(gen, [], sample)  # what interactive.main does, delta_ids absent
            n += batch.src_tokens.size(0)
    assert n == len(lines) and not task._pending
    got = {}
    for src, ids in gen.seen:
        for row, delta in zip(src, ids):
            text = d.string(row[row.ne(d.pad())][:-1])
            got[text] = delta
    assert got == want


def test_interactive_unknown_tag_fails_before_decoding():
    task, _ = make_task()
    with pytest.raises(BankTaskError, match=r"unknown delta 'nope'; the bank has: sum, mt, para"):
        task.get_interactive_tokens_and_lengths(["w1", "<delta=nope> w2"], lambda x: x)


def test_side_file_names_each_example(tmp_path):
    task, d = make_task(default="para")
    side = tmp_path / "test.delta"
    side.write_text("sum\n\nmt\n")
    task.cfg.delta_per_line = str(side)
    task.cfg.data = str(tmp_path)
    task.datasets["test"] = _pairs(d, [4, 2, 3], None)
    names = task._split_names("test")
    assert names == ["sum", None, "mt"]
    ds = DeltaTaggedDataset(task.datasets["test"], names, task.resolve)
    batch = ds.collater([ds[i] for i in range(3)])
    by_id = {0: 0, 1: 2, 2: 1}  # sum, the default (para), mt
    assert batch["net_input"]["delta_ids"].tolist() == [by_id[i] for i in batch["id"].tolist()]
    side.write_text("sum\nmt\n")
    with pytest.raises(BankTaskError, match=r"has 2 lines but split 'test' has 3 examples"):
        task._split_names("test")


# ------------------------------------------------------------------ end to end: fairseq's command lines
DELTAS = ("lora", "pfeiffer", "mam")


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    """Tiny data, a tiny base, three single deltas trained by fairseq-train (LoRA, Pfeiffer, MAM) and the
    bank checkpoint over the base that holds all three; each delta's own fairseq-generate output."""
    w = tmp_path_factory.mktemp("bank_cli")
    write_raw(w / "raw", 0, {"train": 64, "valid": 8, "test": 12})
    data = binarize(w / "raw", w / "bin", make_dict(w / "dict.txt"))
    base = make_base(data, w / "base.pt")
    files = {m: train_delta(data, base, m, w / m) for m in DELTAS}
    bank_pt = build_bank_checkpoint(data, base, files, w / "bank.pt")
    alone = {m: generate(data, files[m], "--batch-size", "4") for m in DELTAS}
    return SimpleNamespace(w=w, data=data, base=base, files=files, bank=bank_pt, alone=alone)


def assert_each_line_as_alone(got, names, alone, key=lambda i: i):
    """Line i decoded in the mixed batch = line i decoded by its own delta alone (tokens, score); and the
    deltas disagree on some lines, so a bank that ignored delta_ids would fail."""
    differ = 0
    for i, name in enumerate(names):
        ref = alone[name][0][key(i)]
        assert got[i][1] == ref[1], (i, name, got[i], ref)
        assert abs(float(got[i][0]) - float(ref[0])) < 1e-5, (i, name, got[i], ref)
        differ += any(alone[m][0][key(i)][1] != ref[1] for m in DELTAS if m != name)
    assert differ >= len(names) // 2, f"only {differ} lines tell the deltas apart"


@pytest.mark.slow
def test_generate_with_per_line_deltas_equals_each_delta_alone(bank):
    names = [DELTAS[(i * 7) % 4] if (i * 7) % 4 < 3 else None for i in range(12)]  # None: the default
    (bank.data / "test.delta").write_text("".join((n or "") + "\n" for n in names))  # read by default
    try:
        hyps, _ = generate(bank.data, bank.bank, "--default-delta", "pfeiffer", "--batch-size", "5", task=BANK_TASK)
    finally:
        (bank.data / "test.delta").unlink()
    assert sorted(hyps) == list(range(12))
    assert_each_line_as_alone(hyps, [n or "pfeiffer" for n in names], bank.alone)
    side = bank.w / "other.delta"  # --delta-per-line, another assignment, another batch size
    names = [DELTAS[i % 3] for i in range(12)][::-1]
    side.write_text("".join(n + "\n" for n in names))
    hyps, _ = generate(bank.data, bank.bank, "--delta-per-line", side, "--batch-size", "12", task=BANK_TASK)
    assert_each_line_as_alone(hyps, names, bank.alone)


@pytest.mark.slow
@pytest.mark.parametrize("buffer_size,batch_size", [(1, 1), (5, 3)])
def test_interactive_with_tagged_lines_equals_each_delta_alone(bank, buffer_size, batch_size):
    from bankdata import BIN, REPO, run

    sources = bank.alone["lora"][1]
    ids = list(range(12))
    names = [None if i % 4 == 3 else DELTAS[(i * 5) % 3] for i in ids]  # None: no tag, --default-delta mam
    lines = "".join(("" if n is None else f"<delta={n}> ") + sources[i][0] + "\n" for i, n in zip(ids, names))
    out = run([BIN / "fairseq-interactive", bank.data, "--user-dir", REPO / "user_dir", *BANK_TASK, "--path",
               bank.bank, "--default-delta", "mam", *GEN, "--buffer-size", str(buffer_size), "--batch-size",
               str(batch_size)], input=lines).stdout
    got = fields("H-", out)
    assert sorted(got) == ids, out[-2000:]
    assert_each_line_as_alone(got, [n or "mam" for n in names], bank.alone)


@pytest.mark.slow
def test_unknown_delta_and_misaligned_side_file_are_one_line_errors(bank):
    import subprocess

    from bankdata import BIN, REPO, tool_env

    p = subprocess.run([str(c) for c in [BIN / "fairseq-interactive", bank.data, "--user-dir", REPO / "user_dir",
                                          *BANK_TASK, "--path", bank.bank, "--default-delta", "mam", *GEN]],
                       input="w1 w2\n<delta=nope> w3\n", capture_output=True, text=True, env=tool_env())
    assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr[-3000:]
    assert p.stderr.strip().splitlines()[-1] == "unifairseq: error: input line 2: unknown delta 'nope'; the bank has: lora, pfeiffer, mam"
    side = bank.w / "short.delta"
    side.write_text("lora\nmam\n")
    p = subprocess.run([str(c) for c in [BIN / "fairseq-generate", bank.data, "--user-dir", REPO / "user_dir",
                                          *BANK_TASK, "--path", bank.bank, "--delta-per-line", side, "--gen-subset",
                                          "test", *GEN]], capture_output=True, text=True, env=tool_env())
    assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr[-3000:]
    assert p.stderr.strip().splitlines()[-1].startswith("unifairseq: error: ")
    assert p.stderr.strip().splitlines()[-1].endswith(
        f"{side} has 2 lines but split 'test' has 12 examples; write one delta name (or an empty line) per example")


def test_delta_spec_rebuilds_each_config_exactly():
    """A bank checkpoint names its deltas as presets + overrides: the spec must rebuild the same config."""
    from unifairseq.core.config import DeltaConfig
    from unifairseq.fairseq.bank import preset_config
    from unifairseq.tools.bank_build import delta_spec

    cases = {"lora_attn:attn_bn=4": dict(attn_mode="lora", attn_bn=4, lora_alpha=32.0, lora_dropout=0.1),
             "mam:attn_bn=4:ffn_bn=8:mid_dim=16": None,
             "pfeiffer:ffn_bn=8": None}
    for spec, values in cases.items():
        cfg = preset_config(spec) if values is None else DeltaConfig(**values).validate()
        assert delta_spec(cfg) == spec
        assert preset_config(delta_spec(cfg)).to_dict() == cfg.to_dict()
    odd = DeltaConfig(attn_mode="lora", attn_bn=3, lora_alpha=5.0, ffn_mode="adapter", ffn_option="sequential",
                      ffn_bn=7, ffn_adapter_scalar="learnable_scalar").validate()
    assert preset_config(delta_spec(odd)).to_dict() == odd.to_dict()


def test_inference_data_without_names_or_default_leaves_the_ids_to_the_caller():
    """The bank hub puts delta_ids into the batches itself: with no names and no --default-delta the task's
    inference dataset adds none (and does not fail), so the hub's ids and the bank's default apply."""
    task, d = make_task(default=None)
    src = [torch.tensor([d.index("w1"), d.eos()])]
    ds = task.build_dataset_for_inference(src, [2])
    assert "delta_ids" not in ds.collater([ds[0]])["net_input"]
    ds = task.build_dataset_for_inference(src, [2], delta_names=["para"])
    assert ds.collater([ds[0]])["net_input"]["delta_ids"].tolist() == [2]


def test_export_merge_of_a_bank_takes_one_named_delta(bank):
    """`unifairseq-export merge BANK.pt` is refused in one line naming the bank's deltas; `--delta lora`
    merges that delta alone: the same weights as merging its own single-delta file."""
    import subprocess

    from env import BIN, REPO, tool_env
    from unifairseq.fairseq.checkpoint_io import load_checkpoint_file

    def export(*args):
        return subprocess.run([str(BIN / "unifairseq-export"), "merge", *map(str, args)],
                              capture_output=True, text=True, cwd=REPO, env=tool_env())

    refused = export(bank.bank, bank.w / "no.pt")
    assert refused.returncode == 2 and not (bank.w / "no.pt").exists()
    lines = [ln for ln in refused.stderr.strip().splitlines() if not ln.startswith("INFO")]  # fairseq's import notice
    assert len(lines) == 1 and "a delta bank of 3 deltas (lora, pfeiffer, mam)" in lines[0] and "--delta NAME" in lines[0]
    unknown = export(bank.bank, bank.w / "no.pt", "--delta", "nope")
    assert unknown.returncode == 2 and "holds lora, pfeiffer, mam" in unknown.stderr
    picked = export(bank.bank, bank.w / "from_bank.pt", "--delta", "lora", "--data", bank.data)
    assert picked.returncode == 0, picked.stderr[-2000:]
    alone = export(bank.files["lora"], bank.w / "alone.pt")
    assert alone.returncode == 0, alone.stderr[-2000:]
    got, ref = (load_checkpoint_file(str(bank.w / f))["model"] for f in ("from_bank.pt", "alone.pt"))
    assert got.keys() == ref.keys()
    for k in ref:
        assert torch.equal(got[k], ref[k]), k
    merged_q = [k for k in ref if k.endswith("self_attn.q_proj.weight")]
    base = load_checkpoint_file(str(bank.base))["model"]
    assert merged_q and not torch.equal(ref[merged_q[0]], base[merged_q[0]])  # the LoRA delta is in there


@pytest.mark.slow
def test_single_delta_checkpoint_decodes_mixed_with_added_deltas(bank):
    """One model for one or many deltas: fairseq-generate --task delta_bank on the LoRA delta's own
    checkpoint, the Pfeiffer and MAM delta files added on the command line (no bank checkpoint, no
    conversion): every line equals that line decoded by its own delta alone; lines naming none get the
    checkpoint's own delta."""
    names = [DELTAS[(i * 5) % 4] if (i * 5) % 4 < 3 else None for i in range(12)]
    side = bank.w / "own.delta"
    side.write_text("".join((n or "") + "\n" for n in names))
    added = f"pfeiffer={bank.files['pfeiffer']},mam={bank.files['mam']}"
    hyps, _ = generate(bank.data, bank.files["lora"], "--add-deltas", added, "--own-delta", "lora",
                       "--delta-per-line", side, "--batch-size", "5", task=BANK_TASK)
    assert sorted(hyps) == list(range(12))
    assert_each_line_as_alone(hyps, [n or "lora" for n in names], bank.alone)
