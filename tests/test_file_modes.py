"""Files unifairseq writes through a temporary file and a rename get the user's umask (issue 19 item 4):
0644 under umask 022, 0600 under 077 -- not safetensors' 0600 or mkdtemp's 0700 whatever the umask."""
import os
import stat

import pytest
import torch

from deltahelp import lora_config, lora_tensors

from unifairseq.core.deltafile import CONFIG_NAME, TENSORS_NAME, write_delta
from unifairseq.fairseq.checkpoint_io import atomic_save
from unifairseq.tools.export_hf import _Folder


@pytest.fixture(params=[0o022, 0o077], ids=["umask022", "umask077"])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_save_and_write_delta_follow_the_umask(tmp_path, umask):
    atomic_save({"model": {"w": torch.zeros(2)}}, str(tmp_path / "ckpt.pt"))
    write_delta(str(tmp_path / "delta"), lora_config(), lora_tensors())
    want = 0o666 & ~umask
    assert want == {0o022: 0o644, 0o077: 0o600}[umask]
    assert mode(tmp_path / "ckpt.pt") == want
    assert mode(tmp_path / "delta" / TENSORS_NAME) == want  # safetensors alone writes 0600
    assert mode(tmp_path / "delta" / CONFIG_NAME) == want
    assert sorted(os.listdir(tmp_path / "delta")) == sorted([CONFIG_NAME, TENSORS_NAME])  # no temp file left


def test_hf_export_folder_follows_the_umask(tmp_path, umask):
    from safetensors.torch import save_file

    out = tmp_path / "hf"
    with _Folder(str(out), force=False) as stage:
        assert mode(stage) == 0o700  # what mkdtemp makes, whatever the umask
        save_file({"w": torch.zeros(2)}, os.path.join(stage, "model.safetensors"))
        os.makedirs(os.path.join(stage, "adapter"))
        with open(os.path.join(stage, "adapter", "config.json"), "w") as f:
            f.write("{}")
    assert mode(out) == mode(out / "adapter") == 0o777 & ~umask
    assert mode(out / "model.safetensors") == mode(out / "adapter" / "config.json") == 0o666 & ~umask
