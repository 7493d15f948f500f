"""unifairseq.bench.bank's logic (no timing): ratios within rounds, medians and spreads, targets."""
from __future__ import annotations

import pytest

from unifairseq.bench import bank as bb


def test_ratios_are_taken_within_each_round_and_targets_judged_on_the_median():
    o = bb.parse(["--methods", "lora_attn", "mam", "--ns", "1", "8", "--batch-size", "16", "--rounds", "5"])
    keys = [("lora_attn", 1, "mixed"), ("lora_attn", 8, "mixed"), ("lora_attn", 8, "sequential"),
            ("mam", 1, "mixed"), ("mam", 8, "mixed"), ("lora_attn", 32, "mixed")]
    # seconds per decode of the batch of 16; round 2 is twice as slow for every row (load drift)
    r1 = {keys[0]: 1.0, keys[1]: 1.25, keys[2]: 4.0, keys[3]: 2.0, keys[4]: 2.5, keys[5]: 1.1}
    r2 = {k: 2 * v for k, v in r1.items()}
    r3 = {keys[0]: 1.0, keys[1]: 1.0, keys[2]: 5.0, keys[3]: 2.0, keys[4]: 4.0, keys[5]: 1.0}
    table = {(r["method"], r["n"], r["row"]): r for r in bb.summarize(o, dict(rows=keys, rounds=[r1, r2, r3]))}
    lora8 = table[("lora_attn", 8, "mixed")]
    assert lora8["ratio"] == pytest.approx(0.8)  # rounds 1 and 2: 1/1.25; round 3: 1.0 -> median 0.8
    assert lora8["ratio_range"] == pytest.approx([0.8, 1.0])
    assert lora8["sent_per_s"] == pytest.approx(16 / 1.25)  # 16/1.25, 16/2.5, 16/1.0 -> median 12.8
    assert lora8["target"] == 0.95 and lora8["met"] is False
    mam8 = table[("mam", 8, "mixed")]
    assert mam8["ratio"] == pytest.approx(0.8) and mam8["target"] == 0.90 and mam8["met"] is False
    lora32 = table[("lora_attn", 32, "mixed")]  # 1/1.1 in rounds 1 and 2, 1.0 in round 3: median 0.909 >= 0.85
    assert lora32["ratio"] == pytest.approx(1 / 1.1) and lora32["target"] == 0.85 and lora32["met"] is True
    assert table[("lora_attn", 8, "sequential")]["ratio"] == pytest.approx(0.25)
    assert "target" not in table[("lora_attn", 1, "mixed")]
    md = bb.markdown(list(table.values()))
    assert "| lora_attn | 8 | mixed | 12.80 (6.40-16.00) | 0.800 (0.800-1.000) | >= 0.95: MISSED |" in md


def test_too_few_rounds_are_not_judged_and_bad_arguments_are_refused(capsys):
    o = bb.parse(["--methods", "mam", "--ns", "1", "8", "--batch-size", "8", "--rounds", "4"])
    keys = [("mam", 1, "mixed"), ("mam", 8, "mixed")]
    rows = bb.summarize(o, dict(rows=keys, rounds=[{keys[0]: 1.0, keys[1]: 2.0}] * 2))
    assert rows[1]["met"] is None
    with pytest.raises(SystemExit):
        bb.parse(["--ns", "2", "8"])
    assert "--ns must include 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bb.parse(["--ns", "1", "3", "--batch-size", "32"])
    assert "must be a multiple of every N" in capsys.readouterr().err


def _tiny_peft_row(n=2, batch=8):
    import torch

    from unifairseq.bench import peft_row
    from unifairseq.tools.count import dummy_dictionary

    o = bb.parse(["--tiny", "--methods", "lora_attn", "--ns", "1", str(n), "--batch-size", str(batch)])
    return peft_row.build_row(n, o, dummy_dictionary(bb.TINY_VOCAB), torch.device("cpu"), bb.TINY_SHAPES)


def test_peft_check_passes_on_the_mixed_batch_and_fails_against_another_adapter():
    """peft's mixed-adapter decode equals each adapter alone; the same check given the decode of the
    neighbouring adapter (sentence i decoded alone on adapter i+1 mod N) fails: the adapters really differ."""
    row = _tiny_peft_row()
    mixed = row.run(8)
    assert len({tuple(h["tokens"]) for h in mixed}) > 1  # the sentences decode differently
    assert all(len(h["tokens"]) == 13 for h in mixed)  # --gen-len + 1: as many decoder steps as fairseq's
    good = bb.check([row], {row.key: mixed})
    assert [(c["row"], c["ok"], c["same_tokens"]) for c in good] == [("peft", True, 8)]
    shifted = [row.names[(i + 1) % 2] for i in range(8)]
    other = row.alone(shifted)
    bad = bb.check([row], {row.key: other})
    assert bad[0]["ok"] is False and bad[0]["same_tokens"] < 8
    assert "differs from the adapter alone" in bad[0]["failures"][0]


def test_no_peft_and_methods_without_lora_leave_the_peft_row_out():
    assert bb.peft_wanted(bb.parse(["--tiny", "--methods", "lora_attn", "mam", "--ns", "1"])) is True
    assert bb.peft_wanted(bb.parse(["--tiny", "--methods", "lora_attn", "--ns", "1", "--no-peft"])) is False
    assert bb.peft_wanted(bb.parse(["--tiny", "--methods", "mam", "--ns", "1"])) is False


@pytest.mark.slow
def test_tiny_run_times_the_peft_row_beside_ours_and_checks_it(tmp_path):
    """`unifairseq-bench-bank --tiny`: the peft row at every N, its ratio against our N = 1 batch of the
    same round, its check passed, exit status 0."""
    import json
    import subprocess
    import sys

    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "unifairseq.bench.bank", "--tiny", "--rounds", "2",
                           "--methods", "lora_attn", "--ns", "1", "2", "--batch-size", "4", "--threads", "1",
                           "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    res = json.loads(out.read_text())
    peft = {r["n"]: r for r in res["table"] if r["row"] == "peft"}
    assert sorted(peft) == [1, 2] and all(r["method"] == "lora_attn" and r["sent_per_s"] > 0 for r in peft.values())
    for n in (1, 2):
        ratios = [4 / rnd[f"lora_attn/{n}/peft"] / (4 / rnd["lora_attn/1/mixed"]) for rnd in res["rounds"]]
        assert peft[n]["ratio_range"] == pytest.approx([min(ratios), max(ratios)])
    checks = [c for c in res["checks"] if c["row"] == "peft"]
    assert [(c["n"], c["ok"], c["same_tokens"]) for c in checks] == [(1, True, 4), (2, True, 4)]
    assert "| lora_attn | 2 | peft |" in proc.stdout and "checks: 5/5" in proc.stdout
