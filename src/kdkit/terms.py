"""Build an objective from `distill.terms`: loss names, module paths, adapters made from observed shapes.

Every problem (unknown loss, wrong module path, feature shapes that cannot meet without an adapter) is
found by one dry forward pass on a real batch and reported before training starts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdkit import losses as L
from kdkit.adapters import adapter_for
from kdkit.config import TermConfig
from kdkit.errors import ConfigError, ModelError
from kdkit.losses.objective import Objective, Term
from kdkit.pretrain import PretrainStage
from kdkit.taps import Tap
from kdkit.teacher import FrozenTeacher


def _flat(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    # Embedding losses read the flattened features (e.g. the pooled penultimate layer).
    def wrapped(s: Tensor, t: Tensor, **kw: Any) -> Tensor:
        return fn(s.flatten(1), t.flatten(1), **kw)

    wrapped.__name__ = fn.__name__
    return wrapped


def _fsp_term(*maps: Tensor) -> Tensor:
    # The term's inputs are the student's listed maps, then the teacher's: split them back into two lists.
    half = len(maps) // 2
    return L.fsp(maps[:half], maps[half:])


def _fitnet_term(s: Tensor, t: Tensor) -> Tensor:
    # A linear adapter yields flat features: compare with the flattened teacher map.
    if s.shape != t.shape and s.ndim != t.ndim and s.flatten(1).shape == t.flatten(1).shape:
        return L.fitnet(s.flatten(1), t.flatten(1))
    return L.fitnet(s, t)


@dataclass(frozen=True)
class LossSpec:
    """How a loss name maps to a function and what it reads."""

    fn: Callable[..., Tensor]
    kind: str  # "logits" (student/teacher logits), "labels" (logits + labels), "ce", "feature", "embedding"
    needs_adapter_when_shapes_differ: bool = False
    layer_lists: bool = False  # reads a list of module paths per side (fsp), not one path


LOSSES: dict[str, LossSpec] = {
    "kd": LossSpec(L.kd, "logits"),
    "logit_mse": LossSpec(L.logit_mse, "logits"),
    "kd_mse_mix": LossSpec(L.kd_mse_mix, "logits"),
    "dkd": LossSpec(L.dkd, "labels"),
    "dist": LossSpec(L.dist, "logits"),
    "ce": LossSpec(L.cross_entropy, "ce"),
    "fitnet": LossSpec(_fitnet_term, "feature", needs_adapter_when_shapes_differ=True),
    "attention_transfer": LossSpec(L.attention_transfer, "feature"),
    "activation_boundary": LossSpec(L.activation_boundary, "feature", needs_adapter_when_shapes_differ=True),
    "similarity_preserving": LossSpec(L.similarity_preserving, "feature"),
    "nst": LossSpec(L.nst, "feature"),
    "pkt": LossSpec(_flat(L.pkt), "embedding"),
    "rkd": LossSpec(_flat(L.rkd), "embedding"),
    "correlation_congruence": LossSpec(_flat(L.correlation_congruence), "embedding"),
    "fsp": LossSpec(_fsp_term, "feature", layer_lists=True),
    # Losses with parameters or state: the module is built from the observed shapes in build_objective.
    "vid": LossSpec(L.fitnet, "module"),
    "crd": LossSpec(L.fitnet, "module"),
    "factor_transfer": LossSpec(L.factor_transfer, "module"),
    "ofd": LossSpec(L.ofd, "module"),
}


def _module_loss(
    name: str, s: Tensor, t: Tensor, options: dict[str, Any], n_data: int | None, teacher_path: str
) -> nn.Module:
    """Return the loss module of a stateful term, sized from the student and teacher features."""
    if name == "factor_transfer":
        return FactorTransferTerm.from_features(s, t, teacher_path, **options)
    if name == "ofd":
        if options:
            raise TypeError(
                f"ofd takes no options (its margins are measured on the teacher), got {sorted(options)}"
            )
        return L.OFDLoss.from_features(s, t)
    if name == "vid":
        if s.ndim != 4 or t.ndim != 4:
            raise ValueError(
                f"vid compares feature maps (N, C, H, W); got {tuple(s.shape)} and {tuple(t.shape)}"
            )
        return L.VIDLoss(s.shape[1], options.pop("mid_channels", t.shape[1]), t.shape[1], **options)
    if n_data is None:
        raise ValueError("crd keeps a memory bank over the transfer set: its size is needed")
    return _CRDTerm(L.CRDLoss(s.flatten(1).shape[1], t.flatten(1).shape[1], n_data, **options))


class _CRDTerm(nn.Module):
    """CRD over flattened features at the batch's dataset indices (memory bank rows)."""

    def __init__(self, crd: nn.Module) -> None:
        super().__init__()
        self.crd = crd

    def forward(self, s: Tensor, t: Tensor, index: Tensor) -> Tensor:
        """Return the contrastive loss of this batch."""
        return self.crd(s.flatten(1).float(), t.flatten(1).float(), index)


def _reconstruction(rec: Tensor, target: Tensor) -> Tensor:
    # RepDistiller trains the paraphraser with nn.MSELoss() between its reconstruction and the feature.
    return F.mse_loss(rec.float(), target.float())


class _ReconstructTeacherFeature(nn.Module):
    """The paraphraser's stage: the frozen teacher's feature at `path`, encoded and decoded by the paraphraser.

    Only the paraphraser is a submodule (trained and checkpointed); the teacher is held aside. `forward`
    returns the teacher's logits (so the stage's logged train accuracy is the teacher's); the engine reads
    the reconstruction and its target by tapping `paraphraser.decoder` and `target`.
    """

    def __init__(self, paraphraser: nn.Module, teacher: nn.Module, path: str) -> None:
        super().__init__()
        self.paraphraser = paraphraser
        self.target = nn.Identity()
        self.__dict__["teacher"] = teacher  # not registered: neither trained nor saved with the stage
        inner = teacher.model if isinstance(teacher, FrozenTeacher) else teacher
        self.path = path
        self.tap = Tap(inner, [path], what="teacher")

    def forward(self, x: Tensor) -> Tensor:
        """Return the teacher's logits after running the paraphraser on its feature."""
        logits = self.teacher(x)
        feat = self.tap.outputs[self.path]
        # A clone leaves inference mode (the frozen teacher's) so that the feature can enter autograd.
        self.paraphraser(self.target(feat.float() if feat.dtype != torch.float32 else feat.clone()))
        return logits


class FactorTransferTerm(nn.Module):
    """Factor transfer (Kim et al. 2018): mean |F(translator(s)) - F(paraphraser(t))|^p, F the normalised factor.

    RepDistiller ``distill == 'factor'``: before distillation the paraphraser (rate k=0.5, no BN) is
    trained alone to reconstruct the teacher feature (MSE; 30 epochs at a constant lr 0.01 for CIFAR
    ResNets, teacher frozen), then it only encodes the teacher feature; the translator (with BN) trains
    with the student; p=1. Here the stage runs `paraphraser_epochs` at `paraphraser_lr` (see
    `kdkit.pretrain`); afterwards the paraphraser is frozen (no gradients, eval mode) and saved with the run.
    """

    def __init__(
        self,
        s_channels: int,
        t_channels: int,
        teacher_path: str,
        k: float = 0.5,
        p: int = 1,
        paraphraser_epochs: int = 30,
        paraphraser_lr: float = 0.01,
        paraphraser_bn: bool = False,
        translator_bn: bool = True,
    ) -> None:
        super().__init__()
        if (
            isinstance(paraphraser_epochs, bool)
            or not isinstance(paraphraser_epochs, int)
            or paraphraser_epochs < 1
        ):
            raise ValueError(
                f"paraphraser_epochs must be a whole number of epochs >= 1 (the paraphraser is trained before "
                f"distillation), got {paraphraser_epochs!r}"
            )
        if not isinstance(paraphraser_lr, (int, float)) or paraphraser_lr <= 0:
            raise ValueError(f"paraphraser_lr must be a positive learning rate, got {paraphraser_lr!r}")
        if p not in (1, 2):
            raise ValueError(f"p must be 1 (L1, the paper's choice) or 2, got {p!r}")
        self.paraphraser = L.Paraphraser(t_channels, k, use_bn=paraphraser_bn)
        self.translator = L.Translator(s_channels, t_channels, k, use_bn=translator_bn)
        self.teacher_path = teacher_path
        self.p = p
        self.paraphraser_epochs = paraphraser_epochs
        self.paraphraser_lr = float(paraphraser_lr)
        self.frozen = False

    @classmethod
    def from_features(cls, s: Tensor, t: Tensor, teacher_path: str, **options: Any) -> FactorTransferTerm:
        """Return the term sized from a student and a teacher feature map (N, C, H, W)."""
        if s.ndim != 4 or t.ndim != 4:
            raise ValueError(
                f"factor_transfer compares feature maps (N, C, H, W); got {tuple(s.shape)} and {tuple(t.shape)}"
            )
        return cls(s.shape[1], t.shape[1], teacher_path, **options)

    def pretrain_stage(self, teacher: nn.Module) -> PretrainStage:
        """Return the paraphraser's reconstruction stage on `teacher`'s feature."""
        model = _ReconstructTeacherFeature(self.paraphraser, teacher, self.teacher_path)
        objective = Objective(
            [Term("reconstruction", _reconstruction, ("student:paraphraser.decoder", "student:target"))]
        )
        return PretrainStage(
            "paraphraser",
            model,
            objective,
            self.paraphraser_epochs,
            self.paraphraser_lr,
            finish=self.freeze,
            close=model.tap.remove,
        )

    def freeze(self) -> None:
        """Freeze the paraphraser: no gradients, eval mode from now on."""
        for param in self.paraphraser.parameters():
            param.requires_grad_(False)
            param.grad = None  # the stage's last gradients
        self.paraphraser.eval()
        self.frozen = True

    def train(self, mode: bool = True) -> FactorTransferTerm:
        """Set the mode; a frozen paraphraser stays in eval mode."""
        super().train(mode)
        if self.frozen:
            self.paraphraser.eval()
        return self

    def forward(self, s: Tensor, t: Tensor) -> Tensor:
        """Return the factor-transfer loss; no gradient ever reaches the paraphraser from this term."""
        with torch.no_grad():
            factor_t = self.paraphraser(t.float(), is_factor=True)
        return L.factor_transfer(self.translator(s), factor_t, p=self.p)


def _check_fsp_layers(term: Term, tensors: dict[str, Tensor], where: str) -> None:
    """Refuse fsp layers that are not feature maps or whose channel counts differ between student and teacher."""
    half = len(term.inputs) // 2
    for s_key, t_key in zip(term.inputs[:half], term.inputs[half:]):
        s, t = tensors[s_key], tensors[t_key]
        sp, tp = s_key.split(":", 1)[1], t_key.split(":", 1)[1]
        if s.ndim != 4 or t.ndim != 4:
            raise ConfigError(
                f"{where}: fsp compares feature maps (N, C, H, W); student {sp!r} gives {tuple(s.shape)} and "
                f"teacher {tp!r} gives {tuple(t.shape)}"
            )
        if s.shape[1] != t.shape[1]:
            raise ConfigError(
                f"{where}: fsp needs equal channel counts at each listed layer, but student {sp!r} has "
                f"{s.shape[1]} channels {tuple(s.shape)} and teacher {tp!r} has {t.shape[1]} {tuple(t.shape)}. "
                "FSP (Yim et al. 2017, as in RepDistiller) compares the flow matrices (C_next x C) of consecutive "
                "layers entry by entry, with no learned projection, so student and teacher must have the same "
                "widths layer by layer; list layers of matching widths (spatial sizes may differ: within a pair "
                "the larger map is average-pooled to the smaller)"
            )


def _layer_lists(tc: TermConfig, where: str) -> tuple[str, ...]:
    """Return the inputs of a term over lists of layers: every student map, then every teacher map."""
    lists = []
    for side in ("student", "teacher"):
        paths = getattr(tc, side)
        if not isinstance(paths, list) or len(paths) < 2:
            raise ConfigError(
                f"{where}.{side}: loss {tc.loss!r} reads a list of at least 2 module paths per side, one per "
                f"layer whose consecutive pairs are compared (e.g. [relu, layer1, layer2, layer3]); got {paths!r}"
            )
        lists.append(paths)
    if len(lists[0]) != len(lists[1]):
        raise ConfigError(
            f"{where}: loss {tc.loss!r} pairs the student's and the teacher's layers in order, so both lists "
            f"need the same length; got {len(lists[0])} student paths {lists[0]} and {len(lists[1])} "
            f"teacher paths {lists[1]}"
        )
    return tuple(f"student:{p}" for p in lists[0]) + tuple(f"teacher:{p}" for p in lists[1])


def _inputs(spec: LossSpec, tc: TermConfig, where: str) -> tuple[str, ...]:
    if spec.kind in ("feature", "embedding", "module"):
        if not tc.student or not tc.teacher:
            raise ConfigError(
                f"{where}: loss {tc.loss!r} compares features: set both `student` and `teacher` "
                "to module paths (e.g. student: layer3, teacher: layer3)"
            )
        if spec.layer_lists:
            return _layer_lists(tc, where)
        for side in ("student", "teacher"):
            if isinstance(getattr(tc, side), list):
                raise ConfigError(
                    f"{where}.{side}: loss {tc.loss!r} reads one module path per side, got the list "
                    f"{getattr(tc, side)}; write one term per layer (lists of paths are for fsp)"
                )
        if tc.loss == "crd":
            return (f"student:{tc.student}", f"teacher:{tc.teacher}", "index")
        return (f"student:{tc.student}", f"teacher:{tc.teacher}")
    if tc.student or tc.teacher:
        raise ConfigError(f"{where}: loss {tc.loss!r} reads logits; remove `student`/`teacher` module paths")
    if spec.kind == "ce":
        return ("student.logits", "labels")
    if spec.kind == "labels":
        return ("student.logits", "teacher.logits", "labels")
    return ("student.logits", "teacher.logits")


def _probe(
    model: nn.Module, paths: list[str], x: Tensor, what: str, where: str
) -> tuple[Tensor, dict[str, Tensor]]:
    """Run one forward pass in eval mode and return the logits and the tapped outputs."""
    try:
        tap = Tap(model, paths, what=what)
    except ModelError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    was_training = model.training
    model.eval()
    param = next(model.parameters(), None)
    if param is not None and param.dtype != x.dtype:
        x = x.to(param.dtype)  # a teacher held in bf16 takes bf16 inputs
    try:
        with torch.no_grad():
            logits = model(x).float()
        return logits, dict(tap.outputs)
    finally:
        tap.remove()
        model.train(was_training)


def build_objective(
    terms: list[TermConfig],
    student: nn.Module,
    teacher: nn.Module,
    sample: Tensor,
    labels: Tensor,
    field: str = "distill.terms",
    n_data: int | None = None,
) -> Objective:
    """Return the objective of `terms`, with adapters built from the shapes seen on a sample batch."""
    built: list[Term] = []
    for i, tc in enumerate(terms):
        where = f"{field}[{i}]"
        spec = LOSSES.get(tc.loss)
        if spec is None:
            raise ConfigError(f"{where}.loss: unknown loss {tc.loss!r}; known: {sorted(LOSSES)}")
        built.append(
            Term(
                name=tc.loss,
                fn=spec.fn,
                inputs=_inputs(spec, tc, where),
                weight=tc.weight,
                kwargs=dict(tc.options),
                start_epoch=tc.start_epoch,
                stop_epoch=tc.stop_epoch,
                warmup_epochs=tc.warmup_epochs,
            )
        )
    obj_paths = Objective(built)
    s_logits, s_feats = _probe(student, obj_paths.student_paths(), sample, "student", field)
    t_logits, t_feats = _probe(teacher, obj_paths.teacher_paths(), sample, "teacher", field)
    if s_logits.shape != t_logits.shape:
        raise ModelError(
            f"student logits {tuple(s_logits.shape)} and teacher logits {tuple(t_logits.shape)} "
            "differ: both must predict the same classes"
        )
    tensors = {
        "student.logits": s_logits,
        "teacher.logits": t_logits,
        "labels": labels,
        "index": torch.arange(len(labels), device=labels.device),
        **{f"student:{k}": v for k, v in s_feats.items()},
        **{f"teacher:{k}": v for k, v in t_feats.items()},
    }

    adapters: dict[str, nn.Module] = {}
    for i, (tc, term) in enumerate(zip(terms, built)):
        if LOSSES[tc.loss].layer_lists:
            _check_fsp_layers(term, tensors, f"{field}[{i}]")
            continue
        if LOSSES[tc.loss].kind == "module":
            try:
                module = _module_loss(
                    tc.loss,
                    tensors[term.inputs[0]],
                    tensors[term.inputs[1]],
                    dict(tc.options),
                    n_data,
                    str(tc.teacher),
                )
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{field}[{i}] ({tc.loss}): {exc}") from None
            adapters[f"term{i}"] = module  # trained with the student and saved with the run
            term.fn, term.kwargs = module, {}
            continue
        if LOSSES[tc.loss].kind not in ("feature", "embedding"):
            continue
        s_shape = tuple(tensors[term.inputs[0]].shape)
        t_shape = tuple(tensors[term.inputs[1]].shape)
        differ = s_shape != t_shape
        want = (
            tc.adapter
            if tc.adapter != "auto"
            else ("auto" if differ and LOSSES[tc.loss].needs_adapter_when_shapes_differ else "none")
        )
        if want == "none":
            if differ and LOSSES[tc.loss].needs_adapter_when_shapes_differ:
                raise ConfigError(
                    f"{field}[{i}]: {tc.loss} student feature {tc.student!r} {s_shape} and teacher feature "
                    f"{tc.teacher!r} {t_shape} differ and the adapter is 'none'; set adapter: auto (or conv/linear)"
                )
            continue
        try:
            adapters[f"term{i}"] = adapter_for(s_shape, t_shape, want)
        except ValueError as exc:
            raise ConfigError(f"{field}[{i}].adapter: {exc}") from None
        term.adapter = f"term{i}"
    objective = Objective(built, modules=adapters)
    # The dry run: every term once on the real shapes, so a mismatch fails now, not mid-training.
    objective.eval()
    with torch.no_grad():
        for i, term in enumerate(built):
            try:
                term(tensors, objective.adapters[term.adapter] if term.adapter else None)
            except (TypeError, ValueError, RuntimeError) as exc:  # TypeError: an unknown option
                raise ConfigError(f"{field}[{i}] ({term.name}): {exc}") from None
    objective.train()
    return objective


def reads_teacher_features(terms: list[TermConfig]) -> bool:
    """Return True when any of the terms reads an intermediate teacher output (logits alone cannot serve it)."""
    return any(LOSSES[t.loss].kind in ("feature", "embedding", "module") for t in terms if t.loss in LOSSES)


def reads_labels(loss: str) -> bool:
    """Return True when the named loss reads the labels."""
    return loss in LOSSES and LOSSES[loss].kind in ("labels", "ce")
