"""The training loop: schedules, constraints, the non-finite guard, precomputed teacher outputs."""

import copy
import math

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from kdkit.checkpoint import load_checkpoint
from kdkit.config import TrainConfig
from kdkit.data.loader import InMemoryLoader
from kdkit.engine import Engine, NonFiniteLossError
from kdkit.errors import KdkitError
from kdkit.models import create
from kdkit.objective import Objective, Term
from kdkit.optim import FusedSGD, WeightEma, build_optimizer, lr_factor
from kdkit.resume import CheckpointPolicy, list_states
from kdkit.runtime import resolve_runtime
from kdkit.teacher import FrozenTeacher


def _blobs(n=512, seed=0):
    """Return a learnable toy image set: the class decides which quadrant is bright."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.randint(0, 60, (n, 1, 8, 8), generator=g).to(torch.uint8)
    for c in range(4):
        r, q = divmod(c, 2)
        x[y == c, :, r * 4 : r * 4 + 4, q * 4 : q * 4 + 4] += 150
    return x, y


def _engine(precision="fp32"):
    return Engine(resolve_runtime(precision), progress=False, log_every=4)


def _mlp(**kw):
    return create("mlp", num_classes=4, in_channels=1, image_size=8, hidden=[32], **kw)


def test_lr_schedules():
    cfg = TrainConfig(epochs=10, schedule="step", milestones=[0.5, 0.75], gamma=0.1)
    assert lr_factor(0, 100, cfg, 10) == 1.0
    assert lr_factor(49, 100, cfg, 10) == 1.0
    assert lr_factor(50, 100, cfg, 10) == pytest.approx(0.1)
    assert lr_factor(80, 100, cfg, 10) == pytest.approx(0.01)
    cos = TrainConfig(epochs=10, schedule="cosine", warmup_epochs=1)
    assert lr_factor(4, 100, cos, 10) == pytest.approx(0.5 * 0.5 * (1 + math.cos(math.pi * 0.04)))
    assert lr_factor(50, 100, cos, 10) == pytest.approx(0.5)
    assert lr_factor(100, 100, cos, 10) == pytest.approx(0.0, abs=1e-12)
    one = TrainConfig(epochs=10, schedule="onecycle")
    peak = max(lr_factor(s, 100, one, 10) for s in range(100))
    assert peak == pytest.approx(1.0, abs=0.01) and lr_factor(99, 100, one, 10) < 0.01


@pytest.mark.parametrize(
    "cfg",
    [
        TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
        TrainConfig(optimizer="adamw", lr=1e-2, weight_decay=1e-2),
    ],
    ids=["sgd", "adamw"],
)
def test_optimizers_match_the_reference_update_also_for_parameters_whose_gradients_start_later(cfg):
    # The second layer gets no gradient for the first two steps, as an objective term that starts later
    # (FSP's second stage): PyTorch's own fused SGD fails there, so kdkit's optimizers (both fused) must not.
    torch.manual_seed(0)
    nets = [torch.nn.ModuleList([torch.nn.Linear(20, 7), torch.nn.Linear(20, 7)]) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    w0 = nets[0][1].weight.detach().clone()
    opt = build_optimizer(nets[0].parameters(), cfg)
    group = opt.param_groups[0]
    assert group["fused"] is True and not group["foreach"]
    if cfg.optimizer == "sgd":
        assert isinstance(opt, FusedSGD)
    # PyTorch's reference (per-parameter) update with the same settings, on an identical copy.
    ref_cls = torch.optim.SGD if cfg.optimizer == "sgd" else torch.optim.AdamW
    kw = {"momentum": cfg.momentum, "nesterov": True} if cfg.optimizer == "sgd" else {}
    ref = ref_cls(nets[1].parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=False, **kw)
    x, y = torch.randn(32, 20), torch.randint(0, 7, (32,))
    for step in range(5):
        for net, o in ((nets[0], opt), (nets[1], ref)):
            o.zero_grad(set_to_none=True)
            logits = net[0](x) + (net[1](x) if step >= 2 else 0)
            torch.nn.functional.cross_entropy(logits, y).backward()
            o.step()
    assert (nets[0][1].weight - w0).abs().max() > 1e-2  # the late parameters moved
    for p, q in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_fused_sgd_resumes_from_a_state_without_the_buffers_of_late_parameters():
    """A snapshot taken before a late parameter's first gradient (or by the multi-tensor SGD kdkit used before)
    lacks that parameter's momentum buffer: after loading it, the fused update must still run and match."""
    torch.manual_seed(0)
    nets = [torch.nn.ModuleList([torch.nn.Linear(6, 3), torch.nn.Linear(6, 3)]) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    cfg = TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-3)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))

    def step(net, opt, late: bool) -> None:
        opt.zero_grad(set_to_none=True)
        logits = net[0](x) + (net[1](x) if late else 0)
        torch.nn.functional.cross_entropy(logits, y).backward()
        opt.step()

    ref = torch.optim.SGD(nets[1].parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3, foreach=True)
    step(nets[1], ref, late=False)
    saved = copy.deepcopy(
        ref.state_dict()
    )  # the multi-tensor SGD's snapshot: no buffers for the second layer
    assert len(saved["state"]) == 2
    opt = build_optimizer(nets[0].parameters(), cfg)
    nets[0].load_state_dict(nets[1].state_dict())
    opt.load_state_dict(saved)
    assert all(opt.state[p]["momentum_buffer"] is not None for p in nets[0].parameters())
    for _ in range(3):
        step(nets[0], opt, late=True)
        step(nets[1], ref, late=True)
    for p, q in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_adamw_falls_back_to_the_multi_tensor_update_without_a_fused_kernel():
    # Parameters on the meta device have no fused kernel: the multi-tensor update is chosen instead.
    model = torch.nn.Linear(4, 2, device="meta")
    opt = build_optimizer(model.parameters(), TrainConfig(optimizer="adamw", lr=1e-3))
    assert opt.param_groups[0]["foreach"] is True and not opt.param_groups[0]["fused"]


def test_training_learns_and_applies_max_norm(tmp_path):
    x, y = _blobs()
    loader = InMemoryLoader(x, y, 32, shuffle=True, seed=0, mean=[0.3], std=[0.3])
    torch.manual_seed(0)
    model = _mlp(max_norm=0.5)
    eng = _engine()
    res = eng.fit(
        "t",
        model,
        Objective.hard_labels(),
        loader,
        TrainConfig(epochs=5, lr=0.1),
        checkpoint=CheckpointPolicy(tmp_path, keep=2),
    )
    assert res.steps == 5 * 16 and res.samples == 5 * 512
    assert eng.evaluate(res.model, InMemoryLoader(x, y, 100, mean=[0.3], std=[0.3])).accuracy > 0.95
    norms = res.model.features.fc1.weight.norm(dim=1)
    assert norms.max() <= 0.5 + 1e-5 and norms.max() > 0.45  # the constraint was active and holds
    states = list_states(tmp_path, "t")
    assert [s for s, _ in states] == [64, 80]  # one per epoch end, the newest two kept
    tensors, meta = load_checkpoint(states[-1][1])
    assert meta["epoch"] == 5 and meta["step"] == 80 and meta["batch"] == 0
    assert any(k.startswith("optimizer.") and k.endswith("momentum_buffer") for k in tensors)
    assert len(res.history) == 5 and res.history[-1]["loss"] < res.history[0]["loss"]


def test_non_finite_loss_stops_with_phase_step_and_term():
    x, y = _blobs(64)
    loader = InMemoryLoader(x, y, 16)

    def explode(logits):
        return logits.sum() * float("nan")

    obj = Objective([Term.from_name("ce"), Term("explode", explode, ("student.logits",))])
    with pytest.raises(NonFiniteLossError) as e:
        _engine().fit("student_kd", _mlp(), obj, loader, TrainConfig(epochs=1))
    msg = str(e.value)
    assert "student_kd" in msg and "explode" in msg and "at step 1" in msg and "'ce'" not in msg


def test_gradient_clipping_bounds_the_update():
    x, y = _blobs(64)
    loader = InMemoryLoader(x, y, 64)
    torch.manual_seed(0)
    m = _mlp()
    before = [p.detach().clone() for p in m.parameters()]
    # SGD without momentum, lr 1: the parameter change is exactly the clipped gradient.
    _engine().fit(
        "t",
        m,
        Objective.hard_labels(),
        loader,
        TrainConfig(epochs=1, lr=1.0, momentum=0.0, schedule="constant", grad_clip=0.01),
    )
    delta = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(m.parameters(), before)))
    assert delta.item() == pytest.approx(0.01, rel=1e-3)


def test_precomputed_teacher_outputs_train_identically_to_online_teacher():
    x, y = _blobs(256)
    eng = _engine()
    torch.manual_seed(1)
    teacher = _mlp()
    eng.fit(
        "t", teacher, Objective.hard_labels(), InMemoryLoader(x, y, 32, shuffle=True), TrainConfig(epochs=2)
    )
    frozen = FrozenTeacher(teacher)
    logits = eng.predict_logits(frozen, InMemoryLoader(x, y, 100))
    obj = Objective.response("kd", alpha=0.9, beta=0.1, temperature=4.0)
    cfg = TrainConfig(epochs=2, lr=0.05)
    results = []
    for extras in ({}, {"teacher.logits": logits}):
        torch.manual_seed(2)
        loader = InMemoryLoader(x, y, 32, shuffle=True, seed=3, extras=extras)
        results.append(eng.fit("s", _mlp(), obj, loader, cfg, teacher=None if extras else frozen).model)
    for a, b in zip(results[0].parameters(), results[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert all(not p.requires_grad for p in frozen.parameters()) and not frozen.model.training


def test_objective_needing_a_teacher_without_one_is_refused():
    x, y = _blobs(32)
    with pytest.raises(Exception, match="teacher"):
        _engine().fit("s", _mlp(), Objective.response(), InMemoryLoader(x, y, 8), TrainConfig(epochs=1))


def test_compile_failure_falls_back_to_eager_with_a_message(monkeypatch):
    class Broken(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", lambda m: Broken(m))
    x, y = _blobs(64)
    from io import StringIO

    from rich.console import Console

    out = StringIO()
    eng = Engine(resolve_runtime("fp32"), console=Console(file=out, width=200), progress=False, compile=True)
    res = eng.fit("t", _mlp(), Objective.hard_labels(), InMemoryLoader(x, y, 16), TrainConfig(epochs=2))
    assert res.steps == 8 and "torch.compile failed (RuntimeError: no compiler here)" in out.getvalue()
    assert res.history[-1]["loss"] < res.history[0]["loss"]


def test_weight_ema_averages_float_state_with_warmup_and_copies_integer_buffers():
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = WeightEma(net, decay=0.9)
    w0 = net[0].weight.detach().clone()
    expected = w0.clone()
    for n in range(200):
        with torch.no_grad():
            net[0].weight.add_(1.0)
        net(torch.randn(8, 3))  # moves the batch-norm statistics and its integer batch count
        d = min(0.9, (1 + n) / (10 + n))
        assert ema.current_decay() == pytest.approx(d)
        expected = d * expected + (1 - d) * net[0].weight.detach()
        ema.update()
    torch.testing.assert_close(ema.shadow["0.weight"], expected)
    # Once warmed up (decay 0.9 from update 80 on) the average of weights moving +1 per step lags them by
    # decay / (1 - decay) = 9 steps.
    lag = (net[0].weight - ema.shadow["0.weight"]).mean().item()
    assert lag == pytest.approx(9.0, abs=1e-3)
    assert int(ema.shadow["1.num_batches_tracked"]) == 200  # copied, not averaged
    rm = ema.shadow["1.running_mean"]
    assert not torch.equal(rm, net[1].running_mean) and not torch.equal(rm, torch.zeros(2))
    copy_ = copy.deepcopy(net)
    ema.copy_to(copy_)
    torch.testing.assert_close(copy_[0].weight, expected)
    torch.testing.assert_close(net[0].weight.detach(), w0 + 200)  # the live model is untouched
    with pytest.raises(ValueError, match="decay"):
        WeightEma(net, decay=1.0)


def test_fit_with_ema_validates_and_returns_the_average_and_resumes_bit_identically(tmp_path):
    x, y = _blobs()
    val = InMemoryLoader(x[:128], y[:128], 64, mean=[0.3], std=[0.3])
    cfg = TrainConfig(epochs=4, lr=0.1, ema_decay=0.95)

    def loader():
        return InMemoryLoader(x, y, 32, shuffle=True, seed=0, mean=[0.3], std=[0.3])

    # The reference average, built from the weights after every optimizer step of the same run.
    torch.manual_seed(0)
    model = _mlp()
    ref = {k: v.detach().clone() for k, v in model.state_dict().items()}
    n = [0]

    def follow(opt, args, kwargs):
        d = min(0.95, (1 + n[0]) / (10 + n[0]))
        for k, v in model.state_dict().items():
            ref[k].mul_(d).add_(v.detach(), alpha=1 - d)
        n[0] += 1

    handle = register_optimizer_step_post_hook(follow)
    try:
        res = _engine().fit(
            "t",
            model,
            Objective.hard_labels(),
            loader(),
            cfg,
            val_loader=val,
            checkpoint=CheckpointPolicy(tmp_path / "a", keep=10),
        )
    finally:
        handle.remove()
    assert n[0] == 4 * 16 and res.model is model
    for k, v in res.model.state_dict().items():
        torch.testing.assert_close(v, ref[k], rtol=1e-5, atol=1e-6)
    # Validation was on the average: the returned model's accuracy is what the last epoch recorded.
    acc = _engine().evaluate(res.model, val).accuracy
    assert res.val.accuracy == acc == res.history[-1]["val_accuracy"] and acc > 0.9

    # Resumed from the state after epoch 2 (which holds the average), the run ends bit for bit the same.
    states = list_states(tmp_path / "a", "t")
    assert [s for s, _ in states] == [16, 32, 48, 64]
    tensors, meta = load_checkpoint(states[1][1])
    assert meta["ema"]["updates"] == 32 and any(k.startswith("ema.") for k in tensors)
    (tmp_path / "b").mkdir()
    for suffix in (".json", ".safetensors"):
        src = states[1][1].with_suffix(suffix)
        (tmp_path / "b" / src.name).write_bytes(src.read_bytes())
    torch.manual_seed(123)
    again = _engine().fit(
        "t",
        _mlp(),
        Objective.hard_labels(),
        loader(),
        cfg,
        val_loader=val,
        checkpoint=CheckpointPolicy(tmp_path / "b", keep=10, resume=True),
    )
    for (k, a), b in zip(res.model.state_dict().items(), again.model.state_dict().values()):
        assert torch.equal(a, b), k

    # A state written without an average cannot continue a run that keeps one.
    plain = TrainConfig(epochs=1, lr=0.1)
    _engine().fit(
        "p", _mlp(), Objective.hard_labels(), loader(), plain, checkpoint=CheckpointPolicy(tmp_path / "c")
    )
    with pytest.raises(KdkitError, match="no weight average"):
        _engine().fit(
            "p",
            _mlp(),
            Objective.hard_labels(),
            loader(),
            TrainConfig(epochs=2, lr=0.1, ema_decay=0.9),
            checkpoint=CheckpointPolicy(tmp_path / "c", resume=True),
        )
