"""Files kdkit writes through a private temporary file get the permissions a plain create would (the umask's)."""

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from kdkit.checkpoint import atomic_write_text, save_checkpoint
from kdkit.data.cache import save_cached
from kdkit.file_modes import new_dir_mode, new_file_mode, process_umask, temp_file_beside


@pytest.fixture(params=[0o022, 0o027, 0o077])
def umask(request):
    before = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(before)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_the_modes_follow_the_umask(umask):
    assert process_umask() == umask
    assert new_file_mode() == 0o666 & ~umask and new_dir_mode() == 0o777 & ~umask
    assert process_umask() == umask  # reading it left it as it was


def test_checkpoint_and_text_files_are_as_readable_as_a_plain_create(umask, tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    st = save_checkpoint(tmp_path / "ckpt" / "model", {"w": torch.ones(3)}, {"kind": "model"})
    atomic_write_text(tmp_path / "notes.json", "{}")
    for p in (st, st.with_suffix(".json"), tmp_path / "notes.json"):
        assert _mode(p) == _mode(plain) == 0o666 & ~umask, p


def test_data_cache_files_follow_the_umask(umask, tmp_path):
    path = tmp_path / "cache" / "mnist.npz"
    images, labels = np.zeros((2, 1, 4, 4), np.uint8), np.array([0, 1])
    assert save_cached(path, images, labels, ["a", "b"])
    assert _mode(path) == 0o666 & ~umask


def test_a_temporary_whose_mode_cannot_be_set_is_removed_not_left_behind(tmp_path, monkeypatch):
    def refuse(fd, mode):
        raise PermissionError("fchmod refused")

    monkeypatch.setattr(os, "fchmod", refuse)
    with pytest.raises(PermissionError, match="fchmod refused"):
        temp_file_beside(tmp_path / "model.safetensors", ".tmp")
    assert list(tmp_path.iterdir()) == []
