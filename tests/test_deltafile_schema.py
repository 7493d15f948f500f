"""A delta folder cannot lie: every field of delta_config.json is checked (type, range, finiteness, known
options, no missing or duplicate keys, bounded size and depth), the digest binds the JSON to the tensor
header, the tensors are exactly the plan's and floating point, and nothing in the file switches a check
off. Each case is one DeltaFileError line naming the file and the field; never a traceback or a hang."""
from __future__ import annotations

import json
import math
import struct

import pytest
import torch
from safetensors.torch import save_file

from unifairseq.core import bases
from unifairseq.core.config import DeltaConfig
from unifairseq.core.deltafile import CONFIG_NAME, TENSORS_NAME, DeltaFileError, read_config, read_delta, write_delta
from unifairseq.core.deltaschema import config_digest
from deltahelp import D, header_raw, lora_config, lora_tensors, write_signed

@pytest.fixture
def folder(tmp_path):
    out = tmp_path / "delta"
    write_delta(str(out), lora_config(), lora_tensors())
    return out


# what an editor who knows the format does: the JSON rewritten with a consistent digest
resign = write_signed


def edit(folder, change, sign=True) -> None:
    cfg = json.loads((folder / CONFIG_NAME).read_text())
    change(cfg)
    resign(folder, cfg) if sign else (folder / CONFIG_NAME).write_text(json.dumps(cfg))


def refused(folder, *expect, file=CONFIG_NAME) -> str:
    with pytest.raises(DeltaFileError) as e:
        read_delta(str(folder))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(folder / file) + ": "), msg
    for x in expect:
        assert x in msg, msg
    return msg


def test_written_folder_reads_back_with_its_digest(folder):
    cfg, tensors = read_delta(str(folder))
    assert cfg["format_version"] == 2 and cfg["digest"] == config_digest(cfg, header_raw(folder))
    assert sorted(tensors) == sorted(lora_tensors())


# ------------------------------------------------------------------ the tester's cases
@pytest.mark.parametrize("text,expect", [
    ("NaN", "holds the non-number NaN"), ("Infinity", "holds the non-number Infinity"),
    ("-Infinity", "holds the non-number -Infinity")])
def test_non_finite_alpha(folder, text, expect):
    raw = (folder / CONFIG_NAME).read_text().replace('"lora_alpha": 32.0', f'"lora_alpha": {text}')
    assert text in raw
    (folder / CONFIG_NAME).write_text(raw)
    refused(folder, expect)


@pytest.mark.parametrize("alpha", [-32.0, 0.0, 1e309 * 0])
def test_alpha_must_be_positive(folder, alpha):
    if math.isnan(alpha):
        return  # NaN cannot be written as JSON (test_non_finite_alpha)
    edit(folder, lambda c: c["delta"].update(lora_alpha=alpha))
    refused(folder, "field delta.lora_alpha:", "alpha")


def test_alpha_as_a_string_or_bool(folder):
    edit(folder, lambda c: c["delta"].update(lora_alpha="32"))
    refused(folder, "field delta.lora_alpha is '32', not a finite number")
    edit(folder, lambda c: c["delta"].update(attn_bn=True))
    refused(folder, "field delta.attn_bn is True, not a int")


def test_pfeiffer_without_ffn_option_is_not_a_parallel_adapter(tmp_path):
    cfg = dict(lora_config(), arch="pfeiffer_bart_base",
               delta=DeltaConfig(ffn_mode="adapter", ffn_option="sequential", ffn_bn=4).validate().to_dict())
    t = {"encoder.layers.0.delta_ffn.delta_adapter.form.down.weight": torch.ones(4, D),
         "encoder.layers.0.delta_ffn.delta_adapter.form.up.weight": torch.ones(D, 4)}
    out = tmp_path / "pfeiffer"
    write_delta(str(out), cfg, t)
    edit(out, lambda c: c["delta"].pop("ffn_option"))
    refused(out, "field 'delta' lacks ffn_option")
    edit(out, lambda c: c["delta"].update(ffn_option=None))
    refused(out, "field delta.ffn_option is None, which builds 'parallel'")


@pytest.mark.parametrize("change,expect", [
    (lambda c: c["base"].update(fingerprint=""), "field base.fingerprint is '', not a content fingerprint"),
    (lambda c: c["base"].update(fingerprint=None), "field base.fingerprint is None"),
    (lambda c: c["base"].update(fingerprint="v2:zz"), "field base.fingerprint is 'v2:zz'"),
    (lambda c: c["base"].update(plan_fingerprint=""), "field base.plan_fingerprint is ''"),
    (lambda c: c.update(dictionary={}), "field 'dictionary' lacks source, target"),
    (lambda c: c["dictionary"].update(target=""), "field dictionary.target is ''"),
    (lambda c: c["dictionary"].pop("target"), "field 'dictionary' lacks target"),
])
def test_no_check_switched_off_from_the_file(folder, change, expect):
    edit(folder, change)
    refused(folder, expect)


@pytest.mark.parametrize("change,expect", [
    (lambda c: c.update(arch="lora_attn_roberta_base"), "'arch' 'lora_attn_roberta_base' / 'parent_arch' "
                                                         "'bart_base' are not of the family 'bart'"),
    (lambda c: c.update(family="gpt"), "field 'family' is 'gpt'"),
    (lambda c: c.update(parent_arch="roberta_base"), "are not of the family 'bart'"),
])
def test_arch_of_another_family(folder, change, expect):
    edit(folder, change)
    refused(folder, expect)


@pytest.mark.parametrize("bn", [10 ** 6, 2 ** 40, 10 ** 18])
def test_huge_attn_bn_is_one_line_before_any_allocation(folder, bn):
    edit(folder, lambda c: c["delta"].update(attn_bn=bn))
    refused(folder, f"field delta.attn_bn is {bn:,}: with model width {D} that needs more than the 128 parameters")
    with pytest.raises(DeltaFileError, match="field delta.attn_bn"):
        read_config(str(folder))  # what the model builder reads before it builds anything


def test_enormous_integer_and_deep_nesting(folder):
    raw = (folder / CONFIG_NAME).read_text()
    (folder / CONFIG_NAME).write_text(raw.replace('"attn_bn": 4', '"attn_bn": ' + "9" * 5000))
    refused(folder, "not valid JSON")
    for deep in ("[" * 1000 + "]" * 1000, '{"a":' * 1000 + "1" + "}" * 1000, "[" * 100000):
        (folder / CONFIG_NAME).write_text(raw.replace('"heads": {}', '"heads": ' + deep))
        refused(folder, "nests deeper than 16 levels")


def test_brackets_inside_strings_do_not_count_as_nesting(folder):
    edit(folder, lambda c: c["base"].update(name="[[[[[[[[[[[[[[[[[[[[{{{{{{{{{{{{{{{{{{\\\"[[["))
    assert read_delta(str(folder))[0]["base"]["name"].startswith("[[[")


def test_deeply_nested_tensor_header(folder):
    path = folder / TENSORS_NAME
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = raw[8:8 + n]
    deep = b'{"__metadata__":' + b"[" * 1000 + b"]" * 1000 + b"," + header[1:]
    path.write_bytes(struct.pack("<Q", len(deep)) + deep + raw[8 + n:])
    refused(folder, "header JSON nests deeper", file=TENSORS_NAME)


def test_duplicate_keys(folder):
    raw = (folder / CONFIG_NAME).read_text()
    (folder / CONFIG_NAME).write_text(raw.replace('"lora_alpha": 32.0', '"lora_alpha": 32.0, "lora_alpha": -1'))
    refused(folder, "duplicate key 'lora_alpha'")


def relabel(folder, old: bytes, new: bytes) -> None:
    """Rewrite the header's dtype and recompute the tensor checksum, as the tester did."""
    import hashlib

    path = folder / TENSORS_NAME
    raw = path.read_bytes()
    assert raw.count(old) == 4
    path.write_bytes(raw.replace(old, new))
    cfg = json.loads((folder / CONFIG_NAME).read_text())
    cfg["tensors"]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return cfg


def test_dtype_relabelled_with_the_checksum_recomputed(folder):
    cfg = relabel(folder, b'"F32"', b'"I32"')
    (folder / CONFIG_NAME).write_text(json.dumps(cfg))
    refused(folder, "digest mismatch")  # the digest covers the header
    resign(folder, cfg)  # and with the digest recomputed too: not a dtype a plan builds
    refused(folder, "has dtype I32; the tensors a plan trains are floating point", file=TENSORS_NAME)


def test_float_relabel_of_the_same_width_is_caught_by_the_digest(folder):
    cfg = relabel(folder, b'"F32"', b'"I32"')  # same width; BF16<->F16 alike
    (folder / CONFIG_NAME).write_text(json.dumps(cfg))
    refused(folder, "digest mismatch: this JSON or the header of", str(folder / TENSORS_NAME))


def smuggle(folder, extra) -> None:
    """A folder whose JSON and header are consistent (names, checksum, digest) but hold `extra` too."""
    import hashlib

    t = dict(lora_tensors(), **extra)
    save_file(t, str(folder / TENSORS_NAME))
    cfg = json.loads((folder / CONFIG_NAME).read_text())
    cfg["tensors"].update(count=len(t), parameters=sum(v.numel() for v in t.values()), names=sorted(t),
                          sha256=hashlib.sha256((folder / TENSORS_NAME).read_bytes()).hexdigest())
    resign(folder, cfg)


def test_lora_folder_cannot_carry_a_base_weight(folder, tmp_path):
    extra = {"encoder.embed_tokens.weight": torch.zeros(40, D)}
    smuggle(folder, extra)
    refused(folder, "field tensors.names: encoder.embed_tokens.weight is not a tensor the plan "
                    "(attn=lora/none/add(bn=4)) trains")
    with pytest.raises(DeltaFileError, match="encoder.embed_tokens.weight is not a tensor the plan"):
        write_delta(str(tmp_path / "w"), lora_config(), dict(lora_tensors(), **extra))  # nor written


def test_head_tensors_need_their_head(folder):
    smuggle(folder, {"classification_heads.x.dense.weight": torch.zeros(D, D)})
    refused(folder, "classification_heads.x.dense.weight belongs to no head listed in 'heads'")


def test_any_json_edit_without_the_digest_is_detected(folder):
    edit(folder, lambda c: c["delta"].update(lora_dropout=0.2), sign=False)
    refused(folder, "digest mismatch")
    edit(folder, lambda c: c["base"].update(name="bart.large"), sign=False)
    refused(folder, "digest mismatch")


def test_every_single_bit_flip_of_the_json_is_refused(folder):
    path = folder / CONFIG_NAME
    raw = path.read_bytes()
    for pos in range(len(raw)):
        bad = bytearray(raw)
        bad[pos] ^= 0x01
        path.write_bytes(bytes(bad))
        with pytest.raises(DeltaFileError) as e:
            read_delta(str(folder))
        assert "\n" not in str(e.value) and str(folder) in str(e.value)
    assert len(raw) > 1000


def leaves(obj, path=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from leaves(v, path + (k,))
    else:
        yield path


def at(cfg, path):
    for k in path[:-1]:
        cfg = cfg[k]
    return cfg


def test_fuzz_every_field_removed_added_or_retyped(folder):
    """Every key at every level is required (removing any is refused), no unknown key is allowed at any
    level, and every leaf set to a value of another type or out of range is refused -- all with the
    digest recomputed, so the schema alone must catch it."""
    original = json.loads((folder / CONFIG_NAME).read_text())
    objects = [()] + [p for p in {q[:i] for q in leaves(original) for i in range(1, len(q))}]
    outcomes = {"refused": 0}
    fields = [p for p in leaves(original) if p != ("digest",)]  # the digest: resign() recomputes it
    for path in fields + [p + ("__extra__",) for p in objects]:
        if path[-1] == "__extra__":
            mutations = [("add", 1)]
        else:
            mutations = [("del", None)] + [("set", v) for v in (None, "", -1, 0, 2 ** 70, 1.5, True, [], {}, "x")]
        for op, value in mutations:
            cfg = json.loads(json.dumps(original))
            holder = at(cfg, path) if path[:-1] else cfg
            if op == "del":
                del holder[path[-1]]
            elif op == "add":
                (at(cfg, path) if len(path) > 1 else cfg)["__extra__"] = value
            else:
                if holder[path[-1]] == value and type(holder[path[-1]]) is type(value):
                    continue
                holder[path[-1]] = value
            resign(folder, cfg)
            try:
                read_delta(str(folder))
            except DeltaFileError as e:
                assert "\n" not in str(e) and str(folder) in str(e), str(e)
                outcomes["refused"] += 1
                continue
            # accepted: only a change that is still a valid record of this delta
            accepted = (path, op, value)
            assert path in {("base", "name"), ("base", "path_hint"), ("unifairseq_version",),
                            ("delta", "lora_dropout"), ("delta", "prefix_dropout"), ("delta", "lora_alpha"),
                            ("delta", "ffn_bn"), ("delta", "mid_dim"), ("delta", "ffn_adapter_scalar"),
                            ("delta", "attn_bn")}, accepted
    assert outcomes["refused"] > 300


def test_version_1_folders_keep_loading_with_every_other_check(folder):
    """A folder written before the digest (format version 1): read with the schema, the names and the
    checksum; its recorded v1 (sampled) base fingerprint is a valid one."""
    edit(folder, lambda c: (c.pop("digest"), c.update(format_version=1),
                            c["base"].update(fingerprint="e" * 64)), sign=False)
    cfg, _ = read_delta(str(folder))
    assert cfg["format_version"] == 1 and bases.fingerprint_version(cfg["base"]["fingerprint"]) == "v1"
    edit(folder, lambda c: c["delta"].update(lora_alpha=-1.0), sign=False)
    refused(folder, "field delta.lora_alpha")
    edit(folder, lambda c: (c["delta"].update(lora_alpha=32.0), c.update(digest="sha256:" + "0" * 64)), sign=False)
    refused(folder, "unknown field(s) digest for format version 1")
    edit(folder, lambda c: (c.pop("digest"), c.update(dictionary={})), sign=False)
    assert read_delta(str(folder))[0]["dictionary"] == {}  # refused where it is applied (test_share_trust)
