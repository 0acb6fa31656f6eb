"""Deep mutual learning (DML, Zhang et al. 2018): peers learn from the labels and from each other.

Peer i minimises beta * CE(i) + alpha * mean over j != i of soft(i, j), with peer j's logits detached; with
loss kd at temperature 1, soft(i, j) is KL(p_j || p_i). Peer k starts from the weights of seed
`seed + k - 1` (peer 1 like the scratch student); all peers see the same batches and train with
distill.train, else student.train.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from kdkit.config import ExperimentConfig, ResponseLossConfig
from kdkit.losses import response
from kdkit.objective import Objective, Term
from kdkit.plan import CohortMember, CohortPhase, ModelSource, ObjectivePlan, Phase
from kdkit.strategies.distill import response_loss, soft_kwargs
from kdkit.strategies.joint import check_cohort
from kdkit.terms import term_spec


def mutual_phases(cfg: ExperimentConfig, student_seed: int) -> list[Phase]:
    """Return the cohort phase `mutual` (roles peer_1 .. peer_K)."""
    check_cohort(cfg)
    s = cfg.strategy
    train = cfg.distill_train()
    members = []
    for i, spec in enumerate(s.peer_specs(cfg.student.model)):
        field = f"strategy.peers[{i}]" if s.peers is not None else "student.model"
        name = f"peer_{i + 1}"
        members.append(CohortMember(name, name, spec, ModelSource(field, spec, seed=student_seed + i)))
    objective = ObjectivePlan(
        "mutual", train.label_smoothing, response=response_loss(cfg), members=tuple(m.name for m in members)
    )
    return [
        CohortPhase(
            "mutual", tuple(members), "peer_1", objective, train, student_seed, {"strategy": "mutual"}
        )
    ]


def _mean_over_peers(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Return a loss of (own, *others): the mean of fn(own, other) with every other's logits detached."""

    def mean_to_peers(own: Tensor, *others: Tensor, **kw: Any) -> Tensor:
        total = fn(own, others[0].detach(), **kw)
        for other in others[1:]:
            total = total + fn(own, other.detach(), **kw)
        return total / len(others)

    return mean_to_peers


def mutual_objective(d: ResponseLossConfig, names: list[str], label_smoothing: float = 0.0) -> Objective:
    """Return the DML objective: per peer, beta * CE + alpha * mean soft loss to the other (detached) peers."""
    soft = _mean_over_peers(term_spec(d.loss).fn)
    terms = []
    for name in names:
        own = f"{name}.logits"
        if d.beta:
            ce_kwargs = {"label_smoothing": label_smoothing}
            terms.append(Term(f"ce.{name}", response.cross_entropy, (own, "labels"), d.beta, ce_kwargs))
        if d.alpha:
            others = tuple(f"{o}.logits" for o in names if o != name)
            terms.append(Term(f"{d.loss}.{name}", soft, (own, *others), d.alpha, soft_kwargs(d)))
    return Objective(terms)
