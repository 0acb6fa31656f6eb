"""Loss terms of kdkit, each declared once in its own module and collected in one registry.

To add a term: write `kdkit/terms/<name>.py` defining `SPEC = TermSpec(...)` and add the module to
`_TERM_MODULES` below. `kdkit.objective_builder.build_objective` builds objectives from `distill.terms` with it.
"""

from kdkit.terms import (
    activation_boundary,
    attention_transfer,
    ce,
    correlation_congruence,
    crd,
    dist,
    dkd,
    factor_transfer,
    fitnet,
    forward_kl,
    fsp,
    gkd_jsd,
    kd,
    kd_mse_mix,
    logit_mse,
    nst,
    ofd,
    pkt,
    reverse_kl,
    rkd,
    similarity_preserving,
    skew_kl,
    skew_reverse_kl,
    total_variation,
    vid,
)
from kdkit.terms.factor_transfer import FactorTransferTerm
from kdkit.terms.registry import (
    TERMS,
    TermContext,
    TermSpec,
    register,
    response_names,
    term_spec,
    terms_markdown,
    unregister,
)
from kdkit.terms.stage import PretrainStage

# The registry's order is the README's: response terms, relations of logits, then features.
_TERM_MODULES = (
    kd,
    logit_mse,
    kd_mse_mix,
    dkd,
    dist,
    ce,
    forward_kl,
    reverse_kl,
    gkd_jsd,
    skew_kl,
    skew_reverse_kl,
    total_variation,
    fitnet,
    attention_transfer,
    activation_boundary,
    similarity_preserving,
    nst,
    pkt,
    rkd,
    correlation_congruence,
    fsp,
    vid,
    crd,
    factor_transfer,
    ofd,
)
for _module in _TERM_MODULES:
    register(_module.SPEC)

__all__ = [
    "TERMS",
    "FactorTransferTerm",
    "PretrainStage",
    "TermContext",
    "TermSpec",
    "register",
    "response_names",
    "term_spec",
    "terms_markdown",
    "unregister",
]
