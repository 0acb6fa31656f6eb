"""Shared fixtures: where the real data sets live, and running a benchmark script on them."""

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def real_data_root() -> Path | None:
    """Return $KDKIT_DATA, else the ../shared/data beside the repository, if it exists."""
    env = os.environ.get("KDKIT_DATA")
    cand = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    return cand if cand.is_dir() else None


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = real_data_root()
    if root is None or not (root / "mnist").is_dir():
        pytest.skip("real data not found: set KDKIT_DATA to the shared data directory")
    return root


@pytest.fixture
def bench(data_root: Path) -> Callable[..., subprocess.CompletedProcess]:
    """Return run(script, *args, timeout=600): benchmarks/<script> in a new interpreter on the real data.

    The finished process (text stdout and stderr) is returned whatever its exit status.
    """

    def run(script: str, *args: object, timeout: float = 600) -> subprocess.CompletedProcess:
        cmd = [sys.executable, str(ROOT / "benchmarks" / script), *map(str, args)]
        env = {**os.environ, "KDKIT_DATA": str(data_root), "PYTHONPATH": str(ROOT / "src")}
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)

    return run


@pytest.fixture(scope="session")
def mnist_mlp():
    """A small MLP trained for a few hundred steps on the embedded MNIST subset, with its loaders.

    Shared by several test modules: tests copy the model before changing it.
    """
    import torch
    from torch import nn

    from kdkit.data import load_dataset
    from kdkit.data.loader import InMemoryLoader, channel_stats
    from kdkit.models import create

    train, test = load_dataset("mnist-small", "train"), load_dataset("mnist-small", "test")
    mean, std = channel_stats(train.images)
    tl = InMemoryLoader(train.images, train.labels, 100, shuffle=True, seed=0, mean=mean, std=std)
    test_loader = InMemoryLoader(test.images, test.labels, 500, mean=mean, std=std)
    torch.manual_seed(0)
    model = create("mlp", num_classes=10, in_channels=1, image_size=28, hidden=[128])
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _epoch in range(2):
        for batch in tl:
            loss = nn.functional.cross_entropy(model(batch.x), batch.y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval(), tl, test_loader
