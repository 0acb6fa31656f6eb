"""The README's promises: its Python example runs, its commands match .ci/run."""

import re
from pathlib import Path

import torch

from kdkit.terms import TERMS, terms_markdown

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_python_api_example_runs_and_distills():
    block = re.search(r"## Python API\n\n```python\n(.*?)```", README, re.S).group(1)
    assert len(block.strip().splitlines()) <= 12
    ns: dict = {}
    exec(compile(block, "README.md", "exec"), ns)  # noqa: S102 - our own README
    student, loader = ns["student"], ns["loader"]
    correct = total = 0
    with torch.no_grad():
        for b in loader:
            correct += int((student(b.x).argmax(1) == b.y).sum())
            total += len(b.y)
    assert total == 10000 and correct / total > 0.9  # two epochs of KD on 10k MNIST images


def test_ci_runs_the_readme_test_command():
    cmds = re.findall(r"```bash\n(.*?)\n```", README, re.S)
    assert len(cmds) >= 2
    install, test = cmds[0], cmds[1]
    assert "pip install torch==2.13.0" in install and "kdkit quickstart" in install
    ci = (ROOT / ".ci" / "run").read_text()
    assert test in ci.splitlines()


def test_readme_lists_exactly_the_registered_loss_terms():
    block = re.search(r"<!-- terms: begin -->\n(.*?)\n<!-- terms: end -->", README, re.S).group(1)
    listed = re.findall(r"^- `([a-z_0-9]+)`:", block, re.M)
    assert len(listed) == len(set(listed)), f"terms listed twice: {listed}"
    missing, unknown = sorted(set(TERMS) - set(listed)), sorted(set(listed) - set(TERMS))
    assert not missing and not unknown, f"README terms: missing {missing}, not registered {unknown}"
    assert block == terms_markdown(), "README list is stale: regenerate it with kdkit.terms.terms_markdown()"


def test_feature_terms_from_python_example_runs_and_trains_the_adapter():
    block = re.search(r"Feature terms from Python:.*?```python\n(.*?)```", README, re.S).group(1)
    ns: dict = {}
    exec(compile(block, "README.md", "exec"), ns)  # noqa: S102 - our own README
    objective, student, loader = ns["objective"], ns["student"], ns["loader"]
    assert [t.name for t in objective.terms] == ["ce", "kd", "fitnet"]
    assert objective.modules  # the 8 -> 16 channel adapter was built from the sample batch
    correct = total = 0
    with torch.no_grad():
        for b in loader:
            correct += int((student(b.x).argmax(1) == b.y).sum())
            total += len(b.y)
    assert total == 5000 and correct / total > 0.4  # three epochs of ce + kd + fitnet from a trained teacher
