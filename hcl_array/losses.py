"""The public loss API: `contrastive_loss` and the named members of its family.

Every loss is one member of a single family (docs/losses.md):

    s_ij = g(z_i) . g(z_j) / tau
    q_i(n) = eta(s_in) / sum_{m in N(i)} eta(s_im)                   (hardening, n in N(i))
    c_i = log lambda_i + log E_{n ~ q_i} exp(s_in)                   (one masked log-sum-exp per anchor)
    l_ij = softplus(c_i - s_ij) = log(1 + lambda_i * E_q[exp(s_in - s_ij)]),   j in P(i)

and the loss is a mean of l_ij over positive pairs. Sampled negatives replace q_i by the empirical
distribution of k draws, which is the same formula with log-counts as weights. This module validates
the options into one `LossConfig` and hands the call to `dispatch.compute`, which picks the path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from . import dispatch
from .config import LossConfig, Normalize, Reduction, check_scalar, loss_config
from .formulas import normalize_embeddings
from .hardening import ExponentialTilt, Hardening, Uniform, as_hardening

Array = Any

__all__ = [
    "contrastive_loss",
    "scl",
    "hscl",
    "ucl",
    "hucl",
    "supcon",
    "ntxent",
    "debiased_hcl",
    "value_and_grad",
    "normalize_embeddings",
    "LossConfig",
    "PAPER_PRESET",
]

#: The semantics of the paper's released code (github.com/rjiang03/HCL): unit-ball clip, tau = 1, the
#: anchor is its own positive (and, for UCL, one of its negatives), k = 256 negatives drawn with
#: replacement from the detached tilted distribution and averaged (lambda = 1), mean over all pairs.
PAPER_PRESET: dict[str, Any] = {
    "normalize": "ball",
    "temperature": 1.0,
    "include_self": True,
    "negatives": "sampled",
    "k": 256,
    "negative_reduction": "mean",
    "reduction": "mean",
    "detach_weights": True,
}

#: An alias of the per-call option kernel="array_api" for every call that leaves kernel="auto": set it
#: to False to run the array-API code instead of the fused kernel everywhere (autograd through that
#: code allows double backward, forward mode, functorch). Per call, prefer kernel=.
USE_FUSED_KERNEL = True


def contrastive_loss(
    embeddings: Array,
    ids: Array | None = None,
    /,
    *,
    hardening: Hardening | Callable[[Array], Array] | None = None,
    rng: int | np.random.Generator | None = None,
    uniforms: Array | None = None,
    return_grad: bool = False,
    group: Any = None,
    **options: Any,
) -> Array | tuple[Array, Array]:
    """The general hard-negative contrastive loss that every named loss is one call of.

        l_ij = log(1 + lambda_i * E_{n ~ q_i}[exp(s_in - s_ij)]),   j in P(i),  q_i(n) ~ eta(s_in), n in N(i)

    computed as softplus(log lambda_i + LSE_n(log q_i(n) + s_in) - s_ij) in log space.

    Args:
        embeddings: (N, d) rows, or (B, V, d) views flattened view-major (row v*B + b is view v of b).
        ids: (N,) integer labels or instance ids ((B,) with views; None with views means instance ids).
        hardening: eta, a `hcl_array.hardening` object or a callable eta(s) (None: eta = 1).
        rng: random source for sampled negatives: a seed or a NumPy Generator (the same draws on every backend).
        uniforms: instead of rng, an (N, k) array of U(0, 1) numbers (use this under jax.jit).
        return_grad: also return dL/dembeddings from the analytic VJP (for NumPy and CuPy training).
        group: a torch.distributed ProcessGroup (or axis_name=, a JAX mesh axis): the global loss (distributed.md).
        **options: the fields of `LossConfig`, validated once:

            candidates: negatives N(i): "other-ids" (rows whose id differs, default) or "all" (every
                other row, the unsupervised losses; with include_self also the anchor itself).
            temperature: tau > 0; s_ij = g(z_i).g(z_j) / tau (default 1).
            normalize: g: "sphere", "ball" (unit-ball clip, default) or "none".
            negatives: "expected" (exact expectation under q, default) or "sampled" (k draws per
                anchor with replacement, shared by that anchor's positive pairs).
            k: number of negatives: None = all candidates. lambda = k (or |N(i)| when None).
            negative_reduction: "sum" (lambda as above, default) or "mean" (lambda = 1, the paper's code).
            include_self: the anchor is its own positive (and a candidate when candidates="all").
            reduction: "mean" over all positive pairs (default), "anchor_mean" (mean over anchors with
                positives of the mean over their pairs), or "none" (per-anchor mean, 0 without pairs).
            detach_weights: treat q as a constant in the backward pass (default True, the paper's code).
            check_finite: reject NaN/Inf embeddings (default True; skipped under jax.jit).
            tau_plus: the class prior of false negatives, for `debiased_hcl` (default 0).
            form: "infonce" (softplus, the family above), "supcon" (log-softmax, l = c_i - s_ij) or
                "debiased" (Robinson et al.); the named losses choose it.
            tile: rows per block: "auto" (default: the fused kernel's cache-sized blocks; the tiled
                array-API path above N = 8192 rows when the configuration allows), None (one block:
                dense), or an integer (that many rows; ValueError when only the dense path can compute
                the configuration). Same values and gradients in every case.
            kernel: "auto" (default: the fused kernel where it serves the call, `dispatch.choose_path`),
                "fused" (raise where it cannot) or "array_api" (never; autodiff through the array-API
                code allows double backward and forward mode).

    Returns:
        The loss (a 0-d array, or (N,) with reduction="none") in float32 for half-precision input,
        else in the input's dtype; with return_grad, (loss, gradient shaped like embeddings).
    """
    if not USE_FUSED_KERNEL and options.get("kernel", "auto") == "auto":
        options["kernel"] = "array_api"
    config = loss_config(hardening, **options)
    return dispatch.compute(embeddings, ids, config, rng=rng, uniforms=uniforms, return_grad=return_grad, group=group)


def scl(
    embeddings: Array, labels: Array, /, *, temperature: float = 1.0, normalize: Normalize = "ball", **options: Any
) -> Any:
    """Supervised contrastive loss (the paper's SCL): negatives are the other classes, eta = 1.

    l_ij = log(1 + lambda * mean_{n: y_n != y_i} exp(s_in - s_ij)),  j != i with y_j = y_i.
    """
    return contrastive_loss(
        embeddings, labels, candidates="other-ids", temperature=temperature, normalize=normalize, **options
    )


def hscl(
    embeddings: Array,
    labels: Array,
    /,
    *,
    beta: float = 1.0,
    temperature: float = 1.0,
    normalize: Normalize = "ball",
    hardening: Hardening | Callable[[Array], Array] | None = None,
    **options: Any,
) -> Any:
    """Hard-negative supervised contrastive loss (HSCL).

    l_ij = log(1 + lambda * E_{n ~ q_i} exp(s_in - s_ij)),  q_i(n) proportional to exp(beta * s_in)
    over the anchor's other-class rows (or to `hardening`'s eta when one is given).
    """
    return contrastive_loss(
        embeddings,
        labels,
        candidates="other-ids",
        hardening=_tilt(beta, hardening),
        temperature=temperature,
        normalize=normalize,
        **options,
    )


def ucl(
    embeddings: Array,
    ids: Array | None = None,
    /,
    *,
    temperature: float = 1.0,
    normalize: Normalize = "ball",
    **options: Any,
) -> Any:
    """Unsupervised contrastive loss (UCL): positives share the id, negatives are every other row.

    l_ij = log(1 + lambda * mean_{n != i} exp(s_in - s_ij)); negatives may share the anchor's class.
    Pass (N, d) rows with ids, or (B, V, d) views (instance ids implied), as for `ntxent`.
    """
    return contrastive_loss(embeddings, ids, candidates="all", temperature=temperature, normalize=normalize, **options)


def hucl(
    embeddings: Array,
    ids: Array | None = None,
    /,
    *,
    beta: float = 1.0,
    temperature: float = 1.0,
    normalize: Normalize = "ball",
    hardening: Hardening | Callable[[Array], Array] | None = None,
    **options: Any,
) -> Any:
    """Hard-negative unsupervised contrastive loss (HUCL): UCL with q_i(n) ~ exp(beta * s_in), n != i.

    Pass (N, d) rows with ids, or (B, V, d) views (instance ids implied).
    """
    return contrastive_loss(
        embeddings,
        ids,
        candidates="all",
        hardening=_tilt(beta, hardening),
        temperature=temperature,
        normalize=normalize,
        **options,
    )


def supcon(
    embeddings: Array,
    labels: Array,
    /,
    *,
    temperature: float = 0.1,
    normalize: Normalize = "sphere",
    reduction: Reduction = "anchor_mean",
    **options: Any,
) -> Any:
    """SupCon "L_out" (Khosla et al. 2020), as pytorch-metric-learning's SupConLoss.

    l_i = -(1/|P(i)|) sum_{j in P(i)} log( exp(s_ij) / sum_{a != i} exp(s_ia) ), mean over anchors.
    """
    return contrastive_loss(
        embeddings,
        labels,
        candidates="all",
        form="supcon",
        temperature=temperature,
        normalize=normalize,
        reduction=reduction,
        **options,
    )


def ntxent(
    embeddings: Array,
    ids: Array | None = None,
    /,
    *,
    temperature: float = 0.5,
    normalize: Normalize = "sphere",
    **options: Any,
) -> Any:
    """NT-Xent (SimCLR): l_ij = -log( e^{s_ij} / (e^{s_ij} + sum_{n: id_n != id_i} e^{s_in}) ).

    Pass (B, 2, d) views (instance ids implied) or (N, d) rows with instance ids.
    """
    return contrastive_loss(
        embeddings, ids, candidates="other-ids", temperature=temperature, normalize=normalize, **options
    )


def debiased_hcl(
    embeddings: Array,
    ids: Array | None = None,
    /,
    *,
    beta: float = 1.0,
    tau_plus: float = 0.1,
    temperature: float = 0.5,
    normalize: Normalize = "sphere",
    **options: Any,
) -> Any:
    """Debiased hard-negative loss of Robinson et al. (2021).

    Ng = max((M E_q[e^s] - tau_plus M e^{s_pos}) / (1 - tau_plus), M e^{-1/tau}),  M = |N(i)| (2B - 2),
    q ~ exp(beta s);  l = -log(e^{s_pos} / (e^{s_pos} + Ng)).
    """
    return contrastive_loss(
        embeddings,
        ids,
        candidates="other-ids",
        form="debiased",
        hardening=_tilt(beta, None),
        tau_plus=tau_plus,
        temperature=temperature,
        normalize=normalize,
        **options,
    )


def _tilt(beta: float, hardening: Hardening | Callable[[Array], Array] | None) -> Hardening:
    if hardening is not None:
        return as_hardening(hardening)
    beta = check_scalar("beta", beta, positive=False)
    return Uniform() if beta == 0 else ExponentialTilt(beta)


def value_and_grad(loss: Callable[..., Any]) -> Callable[..., tuple[Array, Array]]:
    """`loss` returning (value, dL/dembeddings) from the analytic VJP: how NumPy and CuPy users train.

    >>> value, grad = value_and_grad(hscl)(z, labels, beta=5.0)
    """

    def wrapped(embeddings: Array, ids: Array | None = None, /, **options: Any) -> tuple[Array, Array]:
        return loss(embeddings, ids, return_grad=True, **options)

    wrapped.__name__ = f"value_and_grad_{getattr(loss, '__name__', 'loss')}"
    wrapped.__doc__ = f"(value, gradient) of {getattr(loss, '__name__', 'loss')}."
    return wrapped
