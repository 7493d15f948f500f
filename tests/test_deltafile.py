"""core/deltafile.py: the shareable delta folder round-trips exactly, and every damaged, truncated or
tampered file gives one DeltaFileError line naming the file (never a traceback, never a hang)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from unifairseq.core.config import DeltaConfig
from unifairseq.core.deltafile import (CONFIG_NAME, FORMAT_VERSION, TENSORS_NAME, DeltaFileError, read_delta,
                                       write_delta)

from env import REPO


def config():
    """A LoRA delta's record, as unifairseq-export writes it (every field real: the schema checks them)."""
    return dict(unifairseq_version="0.1.0", family="bart", arch="lora_attn_bart_base", parent_arch="bart_base",
                delta=DeltaConfig(attn_mode="lora", attn_bn=4).validate().to_dict(),
                model=dict(encoder_embed_dim=8, encoder_ffn_embed_dim=16, encoder_layers=1, encoder_attention_heads=2,
                           decoder_embed_dim=8, decoder_ffn_embed_dim=16, decoder_layers=1, decoder_attention_heads=2),
                base=dict(name="bart.base", fingerprint="v2:" + "a" * 64, plan_fingerprint="b" * 64, path_hint=None),
                dictionary={"source": "c" * 64, "target": "d" * 64}, heads={})


LORA = "encoder.layers.0.self_attn.{}_proj.delta_lora.W_{}.weight"


def tensors():
    """Every floating dtype a plan may be saved in."""
    g = torch.Generator().manual_seed(0)
    return {LORA.format("q", "down"): torch.randn(4, 8, generator=g),
            LORA.format("q", "up"): torch.randn(8, 4, generator=g).half(),
            LORA.format("v", "down"): torch.randn(4, 8, generator=g).bfloat16(),
            LORA.format("v", "up"): torch.randn(8, 4, generator=g).double()}


@pytest.fixture
def folder(tmp_path):
    out = tmp_path / "delta"
    write_delta(str(out), config(), tensors())
    return out


def one_line_error(folder, names):
    with pytest.raises(DeltaFileError) as e:
        read_delta(str(folder))
    msg = str(e.value)
    assert "\n" not in msg and any(str(folder / n) in msg for n in names), msg
    return msg


def test_round_trip_exact(folder):
    cfg, got = read_delta(str(folder))
    want = tensors()
    assert sorted(got) == sorted(want) == cfg["tensors"]["names"]
    for k, v in want.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v), k
    assert cfg["tensors"]["parameters"] == sum(v.numel() for v in want.values()) == 4 * 4 * 8
    assert cfg["format_version"] == FORMAT_VERSION and cfg["base"]["name"] == "bart.base"


def test_refuses_to_overwrite(folder):
    with pytest.raises(DeltaFileError, match="refusing to overwrite"):
        write_delta(str(folder), config(), tensors())
    write_delta(str(folder), config(), {LORA.format("q", "up"): torch.ones(8, 4)}, overwrite=True)
    assert list(read_delta(str(folder))[1]) == [LORA.format("q", "up")]


def header_len(folder) -> int:
    return int.from_bytes((folder / TENSORS_NAME).read_bytes()[:8], "little")


@pytest.mark.parametrize("where", ["0", "1", "7", "8", "header_end-1", "header_end", "mid_data", "size-1"])
def test_truncated_tensor_file(folder, where):
    path = folder / TENSORS_NAME
    raw = path.read_bytes()
    n, size = header_len(folder), len(raw)
    cut = {"0": 0, "1": 1, "7": 7, "8": 8, "header_end-1": 8 + n - 1, "header_end": 8 + n,
           "mid_data": (8 + n + size) // 2, "size-1": size - 1}[where]
    path.write_bytes(raw[:cut])
    msg = one_line_error(folder, [TENSORS_NAME])
    assert "truncated" in msg or "corrupt" in msg


def test_every_truncation_offset_is_refused(folder):
    path = folder / TENSORS_NAME
    raw = path.read_bytes()
    for cut in range(0, len(raw), 3):
        path.write_bytes(raw[:cut])
        one_line_error(folder, [TENSORS_NAME])


def test_flipped_header_bytes(folder):
    path = folder / TENSORS_NAME
    raw = path.read_bytes()
    n = header_len(folder)
    positions = list(range(0, 8)) + list(range(8, 8 + n, 5))
    for pos in positions:
        bad = bytearray(raw)
        bad[pos] ^= 0xFF
        path.write_bytes(bytes(bad))
        one_line_error(folder, [TENSORS_NAME])
    assert len(positions) > 40


def test_flipped_data_byte_fails_the_checksum(folder):
    path = folder / TENSORS_NAME
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0x01
    path.write_bytes(bytes(raw))
    assert "checksum mismatch" in one_line_error(folder, [TENSORS_NAME])


def test_tensor_names_must_match_the_json(folder):
    cfg = json.loads((folder / CONFIG_NAME).read_text())
    cfg["tensors"]["names"][0] = "encoder.layers.0.self_attn.k_proj.delta_lora.W_up.weight"
    (folder / CONFIG_NAME).write_text(json.dumps(cfg))
    assert "tensor names differ" in one_line_error(folder, [TENSORS_NAME])


@pytest.mark.parametrize("damage,expect", [
    (lambda s: s[: len(s) // 2], "not valid JSON"),
    (lambda s: s.replace(f'"format_version": {FORMAT_VERSION}', '"format_version": 3'), "format version 3"),
    (lambda s: s.replace('"unifairseq-delta"', '"something"'), "not a unifairseq delta"),
    (lambda s: "[1, 2]", "expected a JSON object"),
    (lambda s: s.replace('"heads"', '"hedas"'), "missing field(s) heads"),
    (lambda s: s.replace('"count"', '"cuont"'), "field 'tensors' lacks count"),
    (lambda s: s[:-2] + ', "extra": 1}', "unknown field(s) extra"),
    (lambda s: s.replace('"parameters": ', '"parameters": 1'), "parameters"),
])
def test_damaged_json(folder, damage, expect):
    path = folder / CONFIG_NAME
    path.write_text(damage(path.read_text()))
    assert expect in one_line_error(folder, [CONFIG_NAME, TENSORS_NAME])


def test_json_not_utf8_and_missing_files(folder, tmp_path):
    (folder / CONFIG_NAME).write_bytes(b"\xff\xfe{}")
    assert "not UTF-8" in one_line_error(folder, [CONFIG_NAME])
    (folder / CONFIG_NAME).unlink()
    assert "not a unifairseq delta" in one_line_error(folder, [CONFIG_NAME])
    with pytest.raises(DeltaFileError, match="no such delta folder"):
        read_delta(str(tmp_path / "nowhere"))


def test_fifo_instead_of_tensor_file_does_not_hang(folder):
    path = folder / TENSORS_NAME
    path.unlink()
    os.mkfifo(path)
    assert "missing" in one_line_error(folder, [TENSORS_NAME])


def test_cli_one_line_no_traceback(folder):
    """`unifairseq-base find DIR` reads the delta's JSON: a damaged one is one line on stderr, exit 2."""
    (folder / CONFIG_NAME).write_text('{"format": "unifairseq-delta", "format_version": 1')
    p = subprocess.run([sys.executable, "-m", "unifairseq.tools.base", "find", str(folder)], capture_output=True,
                       text=True, cwd=REPO, timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(folder / CONFIG_NAME) in lines[0] and "not valid JSON" in lines[0], p.stderr
