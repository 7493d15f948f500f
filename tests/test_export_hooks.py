"""tools/export.py as a library: the peft form comes from the method (Method.peft_form / peft_tensors /
peft_config), so a method registered here, a LoRA under another name, exports to peft with no edit to
tools/export_hf.py, byte for byte as LoRA does; and one export command reads its checkpoint once
(tools/export.LoadedDelta)."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("transformers")

from fairseq.checkpoint_utils import torch_persistent_save  # noqa: E402

from hfhelp import delta  # noqa: E402
import unifairseq.fairseq  # noqa: E402
from unifairseq.core.methods import METHODS  # noqa: E402
from unifairseq.core.methods.lora import LoRA, LoRAMethod  # noqa: E402
from unifairseq.fairseq.checkpoint_io import load_checkpoint_file  # noqa: E402
from unifairseq.fairseq.ckpt_args import set_model_arg  # noqa: E402
from unifairseq.tools import export  # noqa: E402
from unifairseq.tools.export_cli import main as export_main  # noqa: E402

unifairseq.fairseq.register()


class TwinModule(LoRA):
    module_name = "delta_lora_twin"


class LoRATwin(LoRAMethod):
    """LoRA under another name and module name: its peft hooks are LoRA's, inherited."""
    name = "lora_twin"
    attn_modes = ("lora_twin",)
    ffn_modes = ("lora_twin",)
    module_cls = TwinModule
    module_name = TwinModule.module_name
    presets = {}


class NoPeftTwin(LoRATwin):
    """The same module, declaring no peft form."""

    def peft_form(self, spec):
        return None


def as_twin(ckpt, out):
    """The LoRA checkpoint `ckpt` as the twin method's: its modules renamed, its --attn-mode the twin's."""
    state = load_checkpoint_file(str(ckpt))
    state["model"] = {k.replace(".delta_lora.", ".delta_lora_twin."): v for k, v in state["model"].items()}
    set_model_arg(state, "attn_mode", "lora_twin")
    torch_persistent_save(state, str(out))
    return out


def test_a_registered_method_with_a_peft_hook_exports_without_edits(tmp_path, monkeypatch, capsys):
    _, _, ckpt = delta("lora_attn_bart_base", ["--attn-bn", "4"], "bart", tmp_path)
    same = ["--peft", "--peft-base-name", "base"]  # else each adapter_config.json names its own folder
    assert export_main(["hf", str(ckpt), str(tmp_path / "lora"), *same]) == 0
    monkeypatch.setitem(METHODS, "lora_twin", LoRATwin())
    twin = as_twin(ckpt, tmp_path / "twin.pt")
    assert {type(m).__name__ for m in export.delta_plan(load_checkpoint_file(str(twin))).methods} == {"LoRATwin"}
    assert export_main(["hf", str(twin), str(tmp_path / "twin"), *same]) == 0
    for rel in ("adapter/adapter_config.json", "adapter/adapter_model.safetensors", "base/model.safetensors",
                "base/config.json"):
        a, b = (tmp_path / "lora" / rel).read_bytes(), (tmp_path / "twin" / rel).read_bytes()
        assert a == b, rel
    capsys.readouterr()
    # the hook decides: the same module declaring no peft form is refused in one line that names it
    monkeypatch.setitem(METHODS, "lora_twin", NoPeftTwin())
    assert export_main(["hf", str(twin), str(tmp_path / "none"), "--peft"]) == 2
    err = capsys.readouterr().err.strip()
    assert "lora_twin has no peft form" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "none").exists()


def test_each_export_command_reads_the_checkpoint_once(tmp_path, monkeypatch):
    """The delta checkpoint and its base are read once per command (before LoadedDelta, `export hf` read the
    delta three times, its base twice and a merged.pt it wrote; `merge` and `hf --peft` the delta twice):
    counted at torch.load, through which every checkpoint is read."""
    _, _, ckpt = delta("lora_attn_bart_base", ["--attn-bn", "4"], "bart", tmp_path)
    reads = []
    real = torch.load

    def counting(f, *a, **kw):
        reads.append(os.path.realpath(f) if isinstance(f, (str, os.PathLike)) else None)
        return real(f, *a, **kw)

    monkeypatch.setattr(torch, "load", counting)
    delta_pt, base_pt = os.path.realpath(ckpt), os.path.realpath(tmp_path / "base.pt")
    for cmd in (["hf", str(ckpt), str(tmp_path / "merged")], ["hf", str(ckpt), str(tmp_path / "peft"), "--peft"],
                ["merge", str(ckpt), str(tmp_path / "merged.pt")], ["inference", str(ckpt), str(tmp_path / "inf.pt")]):
        reads.clear()
        assert export_main(cmd) == 0, cmd
        assert reads.count(delta_pt) == 1, (cmd, reads)
        if cmd[0] != "inference":
            assert reads.count(base_pt) == 1, (cmd, reads)
    reads.clear()
    assert export_main(["unmerge", str(tmp_path / "merged.pt"), str(ckpt), str(tmp_path / "back.pt")]) == 0
    assert reads.count(delta_pt) == 1 and reads.count(os.path.realpath(tmp_path / "merged.pt")) == 1, reads


def test_a_loaded_delta_is_what_each_exporter_takes(tmp_path):
    """One LoadedDelta serves several exporters; its base is read on first use and kept."""
    _, _, ckpt = delta("lora_attn_bart_base", ["--attn-bn", "4"], "bart", tmp_path)
    loaded = export.LoadedDelta.read(str(ckpt))
    assert loaded.is_delta and loaded.heads == [] and [m.name for m in loaded.plan.methods] == ["lora"]
    export.export_merge(loaded, str(tmp_path / "a.pt"))
    base = loaded.base_state
    export.export_merge(loaded, str(tmp_path / "b.pt"))
    assert loaded.base_state is base
    export.export_merge(str(ckpt), str(tmp_path / "c.pt"))  # a path is loaded as before
    a, b, c = (load_checkpoint_file(str(tmp_path / f"{n}.pt"))["model"] for n in "abc")
    assert a.keys() == b.keys() == c.keys() and all(torch.equal(a[k], b[k]) and torch.equal(a[k], c[k]) for k in a)
