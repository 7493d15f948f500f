"""Acceptance: environment A trains tiny deltas through fairseq-train (the base given as
`other/checkpoint_last.pt`, recognised by its content) and exports them; environment B (another
folder, the base copied under another name, HOME and the cache in a temp dir) finds the base through
UNIFAIRSEQ_BASES by fingerprint and decodes with fairseq-generate, fairseq-interactive and the hub,
nothing unpickled for the delta: the same hypotheses and scores as A's `.pt` export."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from env import DATA, REPO, require_data, tool_env
from tiny import base_dims, dims

pytestmark = pytest.mark.slow
PY = sys.executable
DIMS = [*dims(), "--share-all-embeddings"]
METHOD_FLAGS = {"mam_bart_base": ["--attn-bn", "4", "--ffn-bn", "8", "--mid-dim", "16"],
                "lora_attn_bart_base": ["--attn-bn", "4"]}
GEN = ["--gen-subset", "test", "--beam", "3", "--max-len-b", "8", "--batch-size", "1",
       "--required-batch-size-multiple", "1", "--cpu", "--num-workers", "0"]


def run(cmd, env=None, **kw):
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=REPO, timeout=300,
                       env=env or tool_env(PYTHONPATH=str(REPO)), **kw)
    assert p.returncode == 0, f"{cmd[:3]} failed:\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
    return p


@pytest.fixture(scope="module")
def env_a(tmp_path_factory):
    """A: 48/8/8 sentence pairs, a tiny base saved as other/checkpoint_last.pt, two deltas trained."""
    require_data("wmt16_en_ro/dev.en", "wmt16_en_ro/dev.ro")
    a = tmp_path_factory.mktemp("A")
    raw = a / "raw"
    raw.mkdir()
    en, ro = ((DATA / f"wmt16_en_ro/dev.{lang}").read_text(encoding="utf-8").splitlines() for lang in ("en", "ro"))
    pairs = [(s.lower().split()[:16], t.lower().split()[:16]) for s, t in zip(en, ro)]
    pairs = [p for p in pairs if p[0] and p[1]][:64]
    for split, part in (("train", pairs[:48]), ("valid", pairs[48:56]), ("test", pairs[56:64])):
        for i, lang in enumerate(("en", "ro")):
            (raw / f"{split}.{lang}").write_text("".join(" ".join(p[i]) + "\n" for p in part), encoding="utf-8")
    run([PY, "-m", "fairseq_cli.preprocess", "--source-lang", "en", "--target-lang", "ro", "--trainpref", raw / "train",
         "--validpref", raw / "valid", "--testpref", raw / "test", "--destdir", a / "data-bin", "--joined-dictionary",
         "--workers", "1"])
    base = a / "other" / "checkpoint_last.pt"  # the name fairseq gives a resume checkpoint
    run([PY, "-m", "unifairseq.tools.make_tiny_bart", a / "data-bin", base, *base_dims(), "--seed", "0"])
    out = {}
    for arch, flags in METHOD_FLAGS.items():
        save = a / f"ckpt_{arch}"
        run([PY, "-m", "fairseq_cli.train", a / "data-bin", "--user-dir", REPO / "user_dir", "--task", "translation",
             "--source-lang", "en", "--target-lang", "ro", "--arch", arch, *DIMS, *flags, "--restore-file", base,
             "--reset-optimizer", "--reset-dataloader", "--reset-meters", "--reset-lr-scheduler",
             "--optimizer", "adam", "--lr", "0.01", "--max-update", "4", "--batch-size", "8", "--dropout", "0.0",
             "--no-epoch-checkpoints", "--save-dir", save, "--cpu", "--num-workers", "0", "--seed", "1",
             "--no-progress-bar", "--required-batch-size-multiple", "1"])
        ckpt = save / "checkpoint_last.pt"
        run([PY, "-m", "unifairseq.tools.export_cli", "inference", ckpt, a / f"{arch}.pt"])
        printed = run([PY, "-m", "unifairseq.tools.export_cli", "inference", ckpt, a / f"shared_{arch}"]).stdout
        out[arch] = (a / f"{arch}.pt", a / f"shared_{arch}", printed)
    return a, base, out


def hyps(text):
    return {int(l.split("\t")[0][2:]): l.split("\t")[1:] for l in text.splitlines() if l.startswith("H-")}


def watched(b, folder, module, *args, **kw):
    log = b / f"loads_{Path(module).name}.txt"
    log.unlink(missing_ok=True)
    env = tool_env(PYTHONPATH=str(REPO), NOUNPICKLE_DIR=str(folder), NOUNPICKLE_LOG=str(log), HOME=str(b / "home"),
                   UNIFAIRSEQ_BASES=str(b / "bases"), XDG_CACHE_HOME=str(b / "home" / ".cache"))
    env.pop("UNIFAIRSEQ_CACHE", None)
    p = run([PY, REPO / "tests" / "nounpickle_run.py", module, *args], env=env, **kw)
    return p, log.read_text().split()


def hub_script(load_args: str, data, lines) -> str:
    """A script that loads a hub interface and prints its hypotheses (tokens and scores) as JSON."""
    return (
        "import json\nfrom unifairseq.fairseq.models.bart import DeltaBARTModel\n"
        f"hub = DeltaBARTModel.from_pretrained({load_args}, data_name_or_path={str(data)!r}, bpe=None, "
        "source_lang='en', target_lang='ro')\n"
        "hub.eval(); d = hub.task.source_dictionary\n"
        f"toks = [d.encode_line(l, add_if_not_exist=False).long() for l in {json.dumps(lines)}]\n"
        "out = hub.generate(toks, beam=3, max_len_b=8)\n"
        "print(json.dumps([[d.string(o[0]['tokens']), round(float(o[0]['score']), 5)] for o in out]))\n")


_HUB_REF = {}


def hub_ref(a, pt, lines):
    """The hub's hypotheses on A's .pt delta (the old format, loaded by fairseq's hub as before)."""
    if pt not in _HUB_REF:
        (a / "hub_ref.py").write_text(hub_script(f"{str(a)!r}, checkpoint_file={pt.name!r}", a / "data-bin", lines))
        _HUB_REF[pt] = json.loads(run([PY, a / "hub_ref.py"]).stdout.strip().splitlines()[-1])
    return _HUB_REF[pt]


@pytest.mark.parametrize("arch", list(METHOD_FLAGS))
def test_second_environment_decodes_the_shared_delta(env_a, arch, tmp_path):
    a, base, out = env_a
    pt, shared, printed = out[arch]
    cfg = json.loads((shared / "delta_config.json").read_text())
    assert cfg["base"]["name"] == "other" and cfg["base"]["path_hint"] == str(base), "the base was recognised"
    assert "fairseq-generate" in printed and f"--path {shared / 'model.pt'}" in printed and "$(" not in printed
    ref = run([PY, "-m", "fairseq_cli.generate", a / "data-bin", "--user-dir", REPO / "user_dir", "--path", pt,
               *GEN]).stdout
    # B: a copy of the delta and of the data, the base under another folder name, nothing at A's paths
    b = tmp_path / "B"
    shutil.copytree(shared, b / "delta")
    shutil.copytree(a / "data-bin", b / "data-bin")
    (b / "bases" / "renamed").mkdir(parents=True)
    shutil.copy2(base, b / "bases" / "renamed" / "model.pt")
    src = {int(l.split("\t")[0][2:]): l.split("\t")[1] for l in ref.splitlines() if l.startswith("S-")}
    ids = sorted(src)[:4]
    hub_ref(a, pt, [src[i] for i in ids])  # A's hub on its .pt delta, while the base is at its path
    os.rename(base, str(base) + ".away")  # the recorded path is gone
    try:
        p, loads = watched(b, b / "delta", "unifairseq.tools.base", "find", b / "delta")
        found = p.stdout.strip()
        assert found == str(b / "bases" / "renamed" / "model.pt") and "by fingerprint" in p.stderr
        assert loads[0] == str(b / "delta" / "model.pt"), "find checked the entry file (weights-only) first"
        over = str({"arch": arch, "_name": arch, "delta_file": str(b / "delta")})
        p, loads = watched(b, b / "delta", "fairseq_cli.generate", b / "data-bin", "--user-dir", REPO / "user_dir",
                           "--path", found, "--model-overrides", over, *GEN)
        assert loads == [found], "fairseq unpickled the base only"
        got, want = hyps(p.stdout), hyps(ref)
        assert len(want) == 8 and got == want, "the same hypotheses and scores as A's .pt delta"
        # the printed command: the folder's entry file as --path, its base found inside the model (no
        # command substitution); fairseq reads model.pt itself (a .pt delta), the model reads the base
        entry = str(b / "delta" / "model.pt")
        p, loads = watched(b, b / "elsewhere", "fairseq_cli.generate", b / "data-bin", "--user-dir",
                           REPO / "user_dir", "--path", entry, *GEN)
        assert loads == [entry, found] and hyps(p.stdout) == want, "--path DIR/model.pt: the same hypotheses"
        p, loads = watched(b, b / "delta", "fairseq_cli.interactive", b / "data-bin", "--user-dir", REPO / "user_dir",
                           "--path", found, "--model-overrides", over, "--source-lang", "en", "--target-lang", "ro",
                           "--beam", "3", "--max-len-b", "8", "--batch-size", "1", "--buffer-size", "1", "--cpu",
                           input="".join(src[i] + "\n" for i in ids))
        inter = hyps(p.stdout)
        assert loads == [found] and sorted(inter) == list(range(4)), p.stdout[-1500:]
        for j, i in enumerate(ids):
            assert inter[j][1] == want[i][1] and abs(float(inter[j][0]) - float(want[i][0])) < 1e-4
        lines = [src[i] for i in ids]
        (b / "hub.py").write_text(hub_script(f"None, delta={str(b / 'delta')!r}", b / "data-bin", lines))
        p, loads = watched(b, b / "delta", str(b / "hub.py"))
        assert loads == [found], "the hub unpickled the base only"
        assert json.loads(p.stdout.strip().splitlines()[-1]) == hub_ref(a, pt, [src[i] for i in ids])
        # the base moved again and named once with `unifairseq-base add` (the cache in B's home): the
        # entry file finds it by the recorded name, with the same hypotheses as the folder by overrides
        os.rename(b / "bases" / "renamed", b / "moved")
        watched(b, b / "delta", "unifairseq.tools.base", "add", b / "moved", "--name", "other")
        named = str(b / "home" / ".cache" / "unifairseq" / "bases" / "other" / "model.pt")
        p, loads = watched(b, b / "elsewhere", "fairseq_cli.generate", b / "data-bin", "--user-dir",
                           REPO / "user_dir", "--path", entry, *GEN)
        assert hyps(p.stdout) == want and loads[0] == entry
        assert os.path.realpath(loads[1]) == str(b / "moved" / "model.pt"), loads
        p, _ = watched(b, b / "delta", "fairseq_cli.generate", b / "data-bin", "--user-dir", REPO / "user_dir",
                       "--path", named, "--model-overrides", over, *GEN)
        assert hyps(p.stdout) == want, "the folder by --model-overrides on the named base: the same"
    finally:
        os.rename(str(base) + ".away", base)


def test_damaged_delta_through_fairseq_generate_is_one_line(env_a, tmp_path):
    a, base, out = env_a
    _, shared, _ = out["lora_attn_bart_base"]
    bad = tmp_path / "bad"
    shutil.copytree(shared, bad)
    st = bad / "delta_model.safetensors"
    st.write_bytes(st.read_bytes()[:-7])
    over = str({"arch": "lora_attn_bart_base", "_name": "lora_attn_bart_base", "delta_file": str(bad)})
    p = subprocess.run([PY, "-m", "fairseq_cli.generate", a / "data-bin", "--user-dir", REPO / "user_dir", "--path",
                        base, "--model-overrides", over, *GEN], capture_output=True, text=True, cwd=REPO, timeout=300,
                       env=tool_env(PYTHONPATH=str(REPO)))
    assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr[-2000:]
    err = [l for l in p.stderr.splitlines() if l.startswith("unifairseq: error:")]
    assert len(err) == 1 and str(st) in err[0] and re.search("truncated|corrupt", err[0]), p.stderr[-2000:]
