"""Data parallel on loopback (gloo): 2 ranks match 1 process; sharded caches; a dead rank fails the job."""

import json
import os
import subprocess
import sys
import time

import pytest
import yaml

CFG = {
    "name": "ddp",
    "data": {"dataset": "mnist-small", "val_size": 500, "train_limit": 6000},
    "teacher": {
        "model": {"name": "mlp", "hidden": [128]},
        "train": {"epochs": 3, "batch_size": 100, "lr": 0.1, "augment": {"jitter": 1}},
    },
    "student": {
        "model": {"name": "mlp", "hidden": [64]},
        "train": {"epochs": 3, "batch_size": 100, "lr": 0.05},
    },
    "distill": {"temperature": 4.0},
    "runtime": {
        "progress": False,
        "tensorboard": False,
        "threads": 1,
        "precision": "fp32",
        "checkpoint_every_steps": 10,
    },
}
ENV = {
    **{k: v for k, v in os.environ.items() if not k.startswith("KDKIT_FAULT")},
    "MASTER_ADDR": "127.0.0.1",
    "GLOO_SOCKET_IFNAME": "lo",
}


def _run(cfg_path, run_dir, *extra, env=None, timeout=300):
    cmd = [sys.executable, "-m", "kdkit", "run", str(cfg_path), "--run-dir", str(run_dir), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env={**ENV, **(env or {})}, timeout=timeout)


def _epochs(run_dir, phase):
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in recs if r["phase"] == phase and "train_accuracy" in r and "lr" not in r]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("ddp")
    cfg = d / "c.yaml"
    cfg.write_text(yaml.safe_dump(CFG))
    one = _run(cfg, d / "one")
    assert one.returncode == 0, one.stderr[-3000:]
    two = _run(cfg, d / "two", "--nproc", "2")
    assert two.returncode == 0, two.stderr[-3000:]
    return d, cfg


def test_two_ranks_match_one_process(runs):
    d, _ = runs
    s1 = json.loads((d / "one" / "summary.json").read_text())["models"]
    s2 = json.loads((d / "two" / "summary.json").read_text())["models"]
    for role in ("teacher", "student_scratch", "student_kd"):
        assert s1[role]["steps"] == s2[role]["steps"] == 3 * 55  # the same global batches
        assert abs(s1[role]["accuracy"] - s2[role]["accuracy"]) <= 0.005, (role, s1[role], s2[role])
        assert s2[role]["test_size"] == 2000  # evaluation counted across both ranks, exactly
        assert sum(s2[role]["errors_per_class"]) == s2[role]["errors"]
        l1 = [r["loss"] for r in _epochs(d / "one", role)]
        l2 = [r["loss"] for r in _epochs(d / "two", role)]
        assert len(l1) == len(l2) == 3
        assert all(abs(a - b) <= 0.02 * a + 1e-3 for a, b in zip(l1, l2)), (role, l1, l2)
    # Rank 0 alone wrote the run directory: one metrics file, one set of checkpoints.
    assert (d / "two" / "summary.json").exists() and len(list((d / "two").glob("metrics*.jsonl"))) == 1


def test_cache_built_by_two_ranks_is_byte_identical(runs, tmp_path):
    d, cfg = runs
    raw = yaml.safe_load(cfg.read_text())
    raw["student"]["train"]["augment"] = {"jitter": 1}
    raw["distill"] = {"teacher_outputs": "cache", "cache": {"draws": 2, "shard_size": 1000}}
    raw["teacher"]["checkpoint"] = str(d / "one" / "checkpoints" / "teacher")
    raw["phases"] = ["distill"]
    raw["student"]["train"]["epochs"] = 1
    c2 = tmp_path / "c.yaml"
    c2.write_text(yaml.safe_dump(raw))
    a = _run(c2, tmp_path / "a", env={"KDKIT_CACHE": str(tmp_path / "cache1")})
    b = _run(c2, tmp_path / "b", "--nproc", "2", env={"KDKIT_CACHE": str(tmp_path / "cache2")})
    assert a.returncode == 0 and b.returncode == 0, (a.stderr[-2000:], b.stderr[-2000:])
    dirs1 = list((tmp_path / "cache1" / "teacher-outputs").iterdir())
    dirs2 = list((tmp_path / "cache2" / "teacher-outputs").iterdir())
    assert len(dirs1) == len(dirs2) == 1 and dirs1[0].name == dirs2[0].name
    files = sorted(p.name for p in dirs1[0].iterdir())
    assert (
        files == sorted(p.name for p in dirs2[0].iterdir()) and len(files) == 7
    )  # 6 shards of 1,000 images + manifest
    for f in files:
        assert (dirs1[0] / f).read_bytes() == (dirs2[0] / f).read_bytes(), f


def test_a_dead_rank_fails_the_job_in_bounded_time_and_resume_completes(runs, tmp_path):
    _, cfg = runs
    t0 = time.time()
    dead = _run(
        cfg,
        tmp_path / "r",
        "--nproc",
        "2",
        env={"KDKIT_FAULT": "step:95", "KDKIT_FAULT_RANK": "1"},
        timeout=240,
    )
    assert dead.returncode != 0 and time.time() - t0 < 200
    assert not (tmp_path / "r" / "summary.json").exists()
    again = _run(cfg, tmp_path / "r", "--nproc", "2", "--resume")
    assert again.returncode == 0, again.stderr[-3000:]
    s = json.loads((tmp_path / "r" / "summary.json").read_text())["models"]
    assert s["student_kd"]["steps"] == 3 * 55
    assert '"event": "resumed"' in (tmp_path / "r" / "metrics.jsonl").read_text()


def test_two_nodes_over_loopback_take_the_multi_node_path(runs, tmp_path):
    import socket

    d, cfg = runs
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run_dir = tmp_path / "nodes"
    procs = []
    for node in (0, 1):
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=2",
            f"--node_rank={node}",
            "--nproc_per_node=1",
            "--rdzv_backend=c10d",
            f"--rdzv_endpoint=127.0.0.1:{port}",
            "--rdzv_id=kdkit-test",
            "-m",
            "kdkit",
            "run",
            str(cfg),
            "--run-dir",
            str(run_dir),
        ]
        procs.append(
            subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
        )
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    two = json.loads((d / "two" / "summary.json").read_text())["models"]
    nodes = json.loads((run_dir / "summary.json").read_text())["models"]
    for role in ("teacher", "student_scratch", "student_kd"):
        assert nodes[role]["steps"] == two[role]["steps"]
        assert abs(nodes[role]["accuracy"] - two[role]["accuracy"]) <= 0.005
