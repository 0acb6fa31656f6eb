"""Checkpoints: safetensors + JSON, atomic, never unpickled."""

import json
import pickle

import pytest
import torch

from kdkit.checkpoint import load_checkpoint, save_checkpoint
from kdkit.errors import CheckpointError


def test_roundtrip_and_layout(tmp_path):
    t = {"w": torch.arange(6.0).view(2, 3), "b": torch.tensor([1, 2], dtype=torch.long)}
    st = save_checkpoint(tmp_path / "m", t, {"epoch": 3})
    assert st.name == "m.safetensors" and (tmp_path / "m.json").is_file()
    assert not list(tmp_path.glob("*.tmp"))
    for p in (tmp_path / "m", st, tmp_path / "m.json"):
        tensors, meta = load_checkpoint(p)
        assert torch.equal(tensors["w"], t["w"]) and torch.equal(tensors["b"], t["b"])
        assert meta["epoch"] == 3 and meta["format"] == "kdkit-checkpoint"


def test_pickle_checkpoint_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    bad = tmp_path / "model.pt"
    bad.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(CheckpointError, match="never unpickles"):
        load_checkpoint(bad)
    assert not marker.exists()


def test_truncated_or_mismatched_files(tmp_path):
    save_checkpoint(tmp_path / "m", {"w": torch.ones(1000)}, {})
    st = tmp_path / "m.safetensors"
    st.write_bytes(st.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="unreadable or truncated"):
        load_checkpoint(st)
    (tmp_path / "m.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(st)
    (tmp_path / "m.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(CheckpointError, match="not kdkit checkpoint metadata"):
        load_checkpoint(st)
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(tmp_path / "absent.safetensors")
