"""factor_transfer: a paraphraser trained first on the teacher feature, then a translator matches its factors."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field, StrictInt, field_validator
from torch import Tensor, nn

from kdkit.losses import Paraphraser, Translator, factor_transfer
from kdkit.taps import Tap
from kdkit.teacher import FrozenTeacher
from kdkit.terms.registry import Options, TermContext, TermSpec
from kdkit.terms.stage import PretrainStage


class FactorTransferOptions(Options):
    """Options of `factor_transfer`."""

    k: float = Field(0.5, gt=0, description="paraphrase rate: factor channels = k * teacher channels")
    p: int = Field(1, description="1 (L1, the paper's choice) or 2")
    paraphraser_epochs: StrictInt = Field(30, description="epochs of the paraphraser's reconstruction stage")
    paraphraser_lr: float = Field(0.01, description="constant learning rate of that stage")
    paraphraser_bn: bool = False
    translator_bn: bool = True

    @field_validator("p")
    @classmethod
    def _p(cls, v: int) -> int:
        if v not in (1, 2):
            raise ValueError(f"p must be 1 (L1, the paper's choice) or 2, got {v!r}")
        return v

    @field_validator("paraphraser_epochs", mode="before")
    @classmethod
    def _epochs(cls, v: Any) -> Any:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(
                f"paraphraser_epochs must be a whole number of epochs >= 1 (the paraphraser is trained before "
                f"distillation), got {v!r}"
            )
        return v

    @field_validator("paraphraser_lr")
    @classmethod
    def _lr(cls, v: float) -> float:
        if v <= 0:
            raise ValueError(f"paraphraser_lr must be a positive learning rate, got {v!r}")
        return v


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
        # The same rules as the config's (FactorTransferOptions), for a term built directly in Python.
        FactorTransferOptions(p=p, paraphraser_epochs=paraphraser_epochs, paraphraser_lr=paraphraser_lr)
        self.paraphraser = Paraphraser(t_channels, k, use_bn=paraphraser_bn)
        self.translator = Translator(s_channels, t_channels, k, use_bn=translator_bn)
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
        return PretrainStage(
            name="paraphraser",
            model=model,
            loss_name="reconstruction",
            loss=_reconstruction,
            inputs=("student:paraphraser.decoder", "student:target"),
            epochs=self.paraphraser_epochs,
            lr=self.paraphraser_lr,
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
        return factor_transfer(self.translator(s), factor_t, p=self.p)


def build_factor_transfer(s: Tensor, t: Tensor, options: dict[str, Any], context: TermContext) -> nn.Module:
    """Return the factor-transfer module sized from the student and teacher feature maps."""
    return FactorTransferTerm.from_features(s, t, context.teacher_path, **options)


SPEC = TermSpec(
    name="factor_transfer",
    kind="feature",
    description=(
        "FT: a paraphraser first learns to reconstruct the teacher feature (its own stage), then the student's "
        "translator matches its normalised factors"
    ),
    reference="Kim et al. 2018",
    build=build_factor_transfer,
    options=FactorTransferOptions,
)
