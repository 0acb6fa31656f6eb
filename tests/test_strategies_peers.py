"""The peer-strategy benchmark rows (joint, mutual, born-again, TAKD) in their quick form on real MNIST."""

import argparse
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _rows_module():
    spec = importlib.util.spec_from_file_location(
        "strategies_peers", ROOT / "benchmarks" / "strategies_peers.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


EXPECTED = {
    "joint_vs_offline": {"student_scratch", "teacher", "student_kd", "teacher_joint"},
    "mutual_vs_independent": {"peer_1", "peer_2"},
    "born_again": {"teacher", "born_again_1", "born_again_2", "born_again_3"},
    "takd_vs_direct": {"student_scratch", "student_kd", "teacher", "assistant"},
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_quick_row_structure_and_numbers(name, tmp_path, data_root):
    rows_module = _rows_module()
    assert set(rows_module.ROWS) == set(EXPECTED)
    args = argparse.Namespace(quick=True, data_root=data_root, seed=0)
    out = rows_module.ROWS[name](args, tmp_path)
    assert set(out) == {"rows", "baseline", "notes"} and isinstance(out["notes"], str) and out["notes"]
    labels = [r["label"] for r in out["rows"]]
    assert len(set(labels)) == len(labels) and out["baseline"] in labels
    assert {r["role"] for r in out["rows"]} == EXPECTED[name]
    for r in out["rows"]:
        assert isinstance(r["test_errors"], int) and isinstance(r["test_accuracy"], float)
        assert r["test_accuracy"] == pytest.approx(1 - r["test_errors"] / 10000)
        # Three epochs on 3,000 images: every model is far above chance (10%), none is perfect.
        assert 0.6 < r["test_accuracy"] < 1.0, r
        assert 0 < r["seconds"] < 120, r
    by_role = {}
    for r in out["rows"]:
        by_role.setdefault(r["role"], []).append(r)
    if name == "joint_vs_offline":
        assert len(by_role["teacher_joint"]) == 2 and len(by_role["student_kd"]) == 3
        assert (
            by_role["teacher"][0]["params"]
            == by_role["teacher_joint"][0]["params"]
            > by_role["student_kd"][0]["params"]
        )
    if name == "born_again":
        assert [r["generation"] for r in out["rows"]] == [0, 1, 2, 3]
        assert len({r["params"] for r in out["rows"]}) == 1  # one architecture throughout
    if name == "takd_vs_direct":
        params = {r["role"]: r["params"] for r in out["rows"]}
        assert params["teacher"] > params["assistant"] > params["student_kd"] == params["student_scratch"]
