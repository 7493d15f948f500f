"""unifairseq.bench.bank's logic (no timing): ratios within rounds, medians and spreads, targets."""
from __future__ import annotations

import pytest

from unifairseq.bench import bank as bb


def test_ratios_are_taken_within_each_round_and_targets_judged_on_the_median():
    o = bb.parse(["--methods", "lora_attn", "mam", "--ns", "1", "8", "--batch-size", "16"])
    keys = [("lora_attn", 1, "mixed"), ("lora_attn", 8, "mixed"), ("lora_attn", 8, "sequential"),
            ("mam", 1, "mixed"), ("mam", 8, "mixed")]
    # seconds per decode of the batch of 16; round 2 is twice as slow for every row (load drift)
    r1 = {keys[0]: 1.0, keys[1]: 1.25, keys[2]: 4.0, keys[3]: 2.0, keys[4]: 2.5}
    r2 = {k: 2 * v for k, v in r1.items()}
    r3 = {keys[0]: 1.0, keys[1]: 1.0, keys[2]: 5.0, keys[3]: 2.0, keys[4]: 4.0}
    table = {(r["method"], r["n"], r["row"]): r for r in bb.summarize(o, dict(rows=keys, rounds=[r1, r2, r3]))}
    lora8 = table[("lora_attn", 8, "mixed")]
    assert lora8["ratio"] == pytest.approx(0.8)  # rounds 1 and 2: 1/1.25; round 3: 1.0 -> median 0.8
    assert lora8["ratio_range"] == pytest.approx([0.8, 1.0])
    assert lora8["sent_per_s"] == pytest.approx(16 / 1.25)  # 16/1.25, 16/2.5, 16/1.0 -> median 12.8
    assert lora8["target"] == 0.85 and lora8["met"] is False
    mam8 = table[("mam", 8, "mixed")]
    assert mam8["ratio"] == pytest.approx(0.8) and mam8["target"] == 0.75 and mam8["met"] is True
    assert table[("lora_attn", 8, "sequential")]["ratio"] == pytest.approx(0.25)
    assert "target" not in table[("lora_attn", 1, "mixed")]
    md = bb.markdown(list(table.values()))
    assert "| lora_attn | 8 | mixed | 12.80 (6.40-16.00) | 0.800 (0.800-1.000) | >= 0.85: MISSED |" in md


def test_too_few_rounds_are_not_judged_and_bad_arguments_are_refused(capsys):
    o = bb.parse(["--methods", "mam", "--ns", "1", "8", "--batch-size", "8", "--rounds", "2"])
    keys = [("mam", 1, "mixed"), ("mam", 8, "mixed")]
    rows = bb.summarize(o, dict(rows=keys, rounds=[{keys[0]: 1.0, keys[1]: 2.0}] * 2))
    assert rows[1]["met"] is None
    with pytest.raises(SystemExit):
        bb.parse(["--ns", "2", "8"])
    assert "--ns must include 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bb.parse(["--ns", "1", "3", "--batch-size", "32"])
    assert "must be a multiple of every N" in capsys.readouterr().err
