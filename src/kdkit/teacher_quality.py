"""Whether a teacher is worth distilling from: one at chance level teaches its student nothing but noise.

A run whose teacher diverged (a learning rate far too high, a loss of 1e17) still finishes its teacher phase;
its accuracy is then that of a constant guess. Distilling from it wastes the student phase and, worse, reads
as a result. The rule: a teacher is *clearly above chance* when its validation or test accuracy exceeds
1/num_classes by more than three standard errors of a chance-level guesser on that many images.
"""

from __future__ import annotations

import math
from typing import Any

SIGMAS = 3.0  # standard errors above chance that count as "clearly above"


def chance_threshold(num_classes: int, images: int) -> float:
    """Return the accuracy a model must exceed on `images` images to be clearly above chance (1/num_classes)."""
    chance = 1.0 / num_classes
    return chance + SIGMAS * math.sqrt(chance * (1.0 - chance) / max(images, 1))


def chance_level_warning(role: str, record: dict[str, Any], num_classes: int, val_images: int) -> str | None:
    """Return a warning when the teacher's record is not clearly above chance on validation or test, else None."""
    measured = [
        (name, acc, n)
        for name, acc, n in (
            ("validation", record.get("val_accuracy"), val_images),
            ("test", record.get("accuracy"), record.get("test_size") or 0),
        )
        if isinstance(acc, (int, float)) and n
    ]
    if num_classes < 2 or not measured:
        return None  # nothing to judge by: no figures, or a single class
    if any(acc > chance_threshold(num_classes, n) for _, acc, n in measured):
        return None
    figures = ", ".join(
        f"{name} accuracy {acc:.2%} (clearly above chance needs > {chance_threshold(num_classes, n):.2%} "
        f"on {n:,} images)"
        for name, acc, n in measured
    )
    return (
        f"teacher {role!r} is at chance level for {num_classes} classes (chance: {1 / num_classes:.2%}): "
        f"{figures}. Distilling from it teaches the student nothing; check its training (a loss that grew "
        "or became huge means a diverging run, e.g. too high a learning rate) or its checkpoint."
    )
