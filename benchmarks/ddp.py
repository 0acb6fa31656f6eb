"""Data-parallel overhead on this machine: 1 process x 2 threads against 2 processes x 1 thread.

    python benchmarks/ddp.py

No speed-up is expected on 2 cores: the point is that the distributed path is correct (tests) and that its
overhead is measured. The same short distillation (MNIST 1200-1200 -> 800-800 MLPs, online teacher) runs both
ways; samples/s come from each run's summary.json. The per-step communication time is measured by all-reducing
a buffer the size of the student's gradients between 2 gloo processes on loopback.
Writes benchmarks/results/ddp.json and a section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from benchcommon import machine, section_head, store_and_render  # noqa: E402

TITLE = "Data parallel overhead (MNIST 1200-1200 -> 800-800, online teacher, 2 epochs on 30,000 images)"
CFG = {
    "name": "ddp-bench",
    "data": {"dataset": "mnist", "val_size": 0, "train_limit": 30000},
    "teacher": {"model": {"name": "mlp", "hidden": [1200, 1200]}, "train": {"epochs": 1, "batch_size": 256}},
    "student": {"model": {"name": "mlp", "hidden": [800, 800]}, "train": {"epochs": 2, "batch_size": 256}},
    "distill": {"teacher_outputs": "online", "temperature": 4.0},
    "phases": ["teacher", "distill"],
    "runtime": {"progress": False, "tensorboard": False},
}
MARKS = ("<!-- ddp:start -->", "<!-- ddp:end -->")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(nproc: int, threads: int, work: Path) -> dict:
    """Run the distillation with nproc processes of `threads` threads; return the distilled student's record."""
    cfg = {**CFG, "runtime": {**CFG["runtime"], "threads": threads}}
    path = work / f"c{nproc}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "kdkit", "run", str(path), "--run-dir", str(work / f"run{nproc}")]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MASTER_ADDR": "127.0.0.1",
        "GLOO_SOCKET_IFNAME": "lo",
    }
    subprocess.run(cmd, check=True, env=env, capture_output=True, text=True)
    return json.loads((work / f"run{nproc}" / "summary.json").read_text())["models"]["student_kd"]


COMM = r"""
import os, statistics, sys, time, torch, torch.distributed as dist
dist.init_process_group("gloo")
n = int(sys.argv[1])
buf = torch.randn(n)
for _ in range(5):
    dist.all_reduce(buf)
times = []
for _ in range(50):
    t = time.perf_counter(); dist.all_reduce(buf); times.append(time.perf_counter() - t)
if dist.get_rank() == 0:
    print(statistics.median(times) * 1000)
dist.destroy_process_group()
"""


def comm_ms(numel: int, work: Path) -> float:
    """Return the median time of one gloo all-reduce of `numel` fp32 values between 2 local processes."""
    script = work / "comm.py"
    script.write_text(COMM)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--master_addr=127.0.0.1",
            f"--master_port={_free_port()}",
            str(script),
            str(numel),
        ],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    return float(out.stdout.strip().splitlines()[-1])


def render(res: dict) -> str:
    """Return the RESULTS.md section from a stored result (benchmarks/results/ddp.json)."""
    one, two = res["one_process_2_threads"], res["two_processes_1_thread"]
    params, ms = res["gradient_values"], res["allreduce_ms_per_step"]
    ratio = two["samples_per_second"] / one["samples_per_second"]
    return "\n".join(
        [
            *section_head(MARKS[0], TITLE, res["command"], res["machine"], res["date"]),
            "| setup | samples/s | test accuracy | optimizer steps |",
            "|---|---|---|---|",
            f"| 1 process x 2 threads | {one['samples_per_second']:,.0f} | {one['accuracy'] * 100:.2f}% | {one['steps']} |",
            f"| 2 processes x 1 thread (gloo, loopback) | {two['samples_per_second']:,.0f} | "
            f"{two['accuracy'] * 100:.2f}% | {two['steps']} |",
            "",
            f"2 processes / 1 process throughput: {ratio:.2f}x. One all-reduce of the student's "
            f"{params:,} gradient values: {ms:.2f} ms per step (median of 50), about "
            f"{res['comm_share_of_step'] * 100:.0f}% of a single-process step.",
            MARKS[1],
        ]
    )


def render_stored(results_root: Path = ROOT / "benchmarks" / "results") -> str:
    """Return the RESULTS.md section from the committed JSON, without measuring anything."""
    return render(json.loads((results_root / "ddp.json").read_text()))


def main() -> int:
    """Measure and record; return the exit status."""
    data = os.environ.get("KDKIT_DATA") or str(ROOT.parent / "shared" / "data")
    os.environ["KDKIT_DATA"] = data
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        one = run(1, 2, work)
        two = run(2, 1, work)
        params = one["params"]
        ms = comm_ms(params, work)
        wall = time.perf_counter() - t0
    steps_per_s_one = one["steps"] / one["train_seconds"]
    res = {
        "date": dt.date.today().isoformat(),
        "machine": machine(),
        "command": "python benchmarks/ddp.py",
        "one_process_2_threads": {
            "samples_per_second": one["samples_per_second"],
            "accuracy": one["accuracy"],
            "steps": one["steps"],
        },
        "two_processes_1_thread": {
            "samples_per_second": two["samples_per_second"],
            "accuracy": two["accuracy"],
            "steps": two["steps"],
        },
        "allreduce_ms_per_step": ms,
        "gradient_values": params,
        "comm_share_of_step": ms / 1000 * steps_per_s_one,
        "wall_seconds": wall,
    }
    store_and_render(res, ROOT / "benchmarks" / "results" / "ddp.json", render, MARKS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
