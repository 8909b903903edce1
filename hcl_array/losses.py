r"""The public loss API: `contrastive_loss` and the named members of its family.

Every loss is one member of a single family (docs/losses.md):

$$s_{ij} = \frac{g(z_i)^\top g(z_j)}{\tau}, \qquad
  q_i(n) = \frac{\eta(s_{in})}{\sum_{m \in N(i)} \eta(s_{im})} \quad (n \in N(i)),$$

$$\ell_{ij} = \log\Bigl(1 + \lambda_i\, \mathbb{E}_{n \sim q_i} e^{s_{in} - s_{ij}}\Bigr)
  = \operatorname{softplus}(c_i - s_{ij}), \qquad
  c_i = \log \lambda_i + \log \mathbb{E}_{n \sim q_i} e^{s_{in}}, \qquad j \in P(i),$$

and the loss is a mean of $\ell_{ij}$ over positive pairs. Sampled negatives replace $q_i$ by the empirical
distribution of $k$ draws, which is the same formula with log-counts as weights. This module validates
the options into one `LossConfig` and hands the call to `dispatch.compute`, which picks the path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from . import dispatch
from .config import (
    AxisName,
    Candidates,
    Form,
    Kernel,
    LossConfig,
    NegativeReduction,
    Negatives,
    Normalize,
    Reduction,
    Tile,
    check_scalar,
    loss_config,
)
from .formulas import normalize_embeddings
from .hardening import ExponentialTilt, Hardening, Uniform, as_hardening

Array = Any
#: eta: a `hcl_array.hardening` object, or any non-negative, non-decreasing callable eta(s) on arrays.
HardeningLike = Hardening | Callable[[Array], Array]
#: The random source of sampled negatives: a seed or a NumPy Generator (the same draws on every backend).
Seed = int | np.random.Generator

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
r"""The semantics of the paper's released code (github.com/rjiang03/HCL): `hscl(z, y, beta=5.0, **PAPER_PRESET, rng=0)`.

Unit-ball clip, $\tau = 1$, the anchor is its own positive (and, for UCL, one of its negatives), $k = 256$
negatives drawn with replacement from the detached tilted distribution and averaged ($\lambda = 1$), mean over
all pairs.
"""

USE_FUSED_KERNEL = True
"""A global alias of kernel="array_api" for every call that leaves kernel="auto" (per call, prefer kernel=).

Set it to False to run the array-API code instead of the fused kernel everywhere (autograd through that code
allows double backward, forward mode, functorch).
"""


def contrastive_loss(
    embeddings: Array,
    ids: Array | None = None,
    /,
    *,
    candidates: Candidates = "other-ids",
    hardening: HardeningLike | None = None,
    temperature: float = 1.0,
    normalize: Normalize = "ball",
    negatives: Negatives = "expected",
    k: int | None = None,
    negative_reduction: NegativeReduction = "sum",
    include_self: bool = False,
    reduction: Reduction = "mean",
    detach_weights: bool = True,
    tau_plus: float = 0.0,
    form: Form = "infonce",
    check_finite: bool = True,
    tile: Tile = "auto",
    kernel: Kernel = "auto",
    rng: Seed | None = None,
    uniforms: Array | None = None,
    return_grad: bool = False,
    group: Any = None,
    axis_name: AxisName = None,
) -> Array | tuple[Array, Array]:
    r"""The hard-negative contrastive loss that every named loss is one call of (docs/losses.md).

    $$\ell_{ij} = \log\Bigl(1 + \lambda_i\, \mathbb{E}_{n \sim q_i} e^{s_{in} - s_{ij}}\Bigr),\ j \in P(i), \qquad
      q_i(n) = \frac{\eta(s_{in})}{\sum_{m \in N(i)} \eta(s_{im})},\ n \in N(i),$$

    with $s_{ij} = g(z_i)^\top g(z_j) / \tau$. Returns the loss (0-d; (N,) with reduction="none"; float32 for
    half-precision input), or with return_grad the pair (loss, dL/dembeddings).

    Args:
        embeddings: (N, d) rows, or (B, V, d) views flattened view-major (row v*B + b is view v of b).
        ids: (N,) integer labels or instance ids ((B,) with views; None with views means instance ids).
        candidates: $N(i)$: "other-ids" (rows whose id differs) or "all" (every other row, the unsupervised losses).
        hardening: $\eta$, a `hcl_array.hardening` object or a callable $\eta(s)$ (None: $\eta = 1$).
        temperature: $\tau > 0$.
        normalize: $g$: "ball" ($z / \max(1, \lVert z \rVert)$, the paper's), "sphere" ($z / \lVert z \rVert$), "none".
        negatives: "expected" (the exact expectation under $q_i$) or "sampled" ($k$ draws per anchor, with replacement).
        k: negatives per anchor; None: all candidates. $\lambda_i = k$, or $|N(i)|$ when None.
        negative_reduction: "sum" ($\lambda_i$ as above) or "mean" ($\lambda_i = 1$, the paper's code).
        include_self: the anchor is its own positive (and a candidate when candidates="all").
        reduction: "mean" over positive pairs, "anchor_mean" (over anchors of their pair means) or "none".
        detach_weights: $q_i$ is a constant in the backward pass (the paper's code); False: Robinson et al.
        tau_plus: $\tau^+$, the class prior of a false negative (form="debiased").
        form: "infonce" (the softplus above), "supcon" ($\ell_{ij} = c_i - s_{ij}$) or "debiased" (Robinson et al.).
        check_finite: reject NaN/Inf embeddings (skipped under jax.jit, where values are not concrete).
        tile: anchor rows per block: "auto", None (one block) or an integer; the same numbers in every case.
        kernel: "auto" (the fused kernel where it serves the call), "fused" (or an error) or "array_api".
        rng: the random source of sampled negatives: a seed or a NumPy Generator.
        uniforms: instead of rng, an (N, k) array of U(0, 1) numbers (use this under jax.jit).
        return_grad: also return dL/dembeddings from the analytic VJP (NumPy and CuPy training).
        group: a torch.distributed ProcessGroup: the loss of the global batch (docs/distributed.md).
        axis_name: a JAX mesh axis (inside shard_map): the loss of the global batch.
    """
    return _loss(**locals())  # pandas' read_csv idiom: every parameter by name, no repetition


def _loss(
    embeddings: Array,
    ids: Array | None,
    *,
    rng: Seed | None,
    uniforms: Array | None,
    return_grad: bool,
    group: Any,
    kernel: Kernel,
    **options: Any,
) -> Array | tuple[Array, Array]:
    """`contrastive_loss`'s work: the options validated into one `LossConfig`, the call handed to dispatch."""
    if kernel == "auto" and not USE_FUSED_KERNEL:
        kernel = "array_api"
    config = loss_config(kernel=kernel, **options)
    return dispatch.compute(embeddings, ids, config, rng=rng, uniforms=uniforms, return_grad=return_grad, group=group)


def scl(
    embeddings: Array,
    labels: Array,
    /,
    *,
    temperature: float = 1.0,
    normalize: Normalize = "ball",
    negatives: Negatives = "expected",
    k: int | None = None,
    negative_reduction: NegativeReduction = "sum",
    include_self: bool = False,
    reduction: Reduction = "mean",
    detach_weights: bool = True,
    check_finite: bool = True,
    tile: Tile = "auto",
    kernel: Kernel = "auto",
    rng: Seed | None = None,
    uniforms: Array | None = None,
    return_grad: bool = False,
    group: Any = None,
    axis_name: AxisName = None,
) -> Array | tuple[Array, Array]:
    r"""Supervised contrastive loss (the paper's SCL): negatives are the other classes, $\eta = 1$.

    $$\ell_{ij} = \log\Bigl(1 + \lambda\, \frac{1}{|N(i)|} \sum_{n:\, y_n \ne y_i} e^{s_{in} - s_{ij}}\Bigr),
      \qquad j \ne i,\ y_j = y_i.$$

    Options as for `contrastive_loss`.
    """
    return contrastive_loss(
        embeddings,
        labels,
        candidates="other-ids",
        form="infonce",
        temperature=temperature,
        normalize=normalize,
        negatives=negatives,
        k=k,
        negative_reduction=negative_reduction,
        include_self=include_self,
        reduction=reduction,
        detach_weights=detach_weights,
        check_finite=check_finite,
        tile=tile,
        kernel=kernel,
        rng=rng,
        uniforms=uniforms,
        return_grad=return_grad,
        group=group,
        axis_name=axis_name,
    )


def hscl(
    embeddings: Array,
    labels: Array,
    /,
    *,
    beta: float = 1.0,
    hardening: HardeningLike | None = None,
    temperature: float = 1.0,
    normalize: Normalize = "ball",
    negatives: Negatives = "expected",
    k: int | None = None,
    negative_reduction: NegativeReduction = "sum",
    include_self: bool = False,
    reduction: Reduction = "mean",
    detach_weights: bool = True,
    check_finite: bool = True,
    tile: Tile = "auto",
    kernel: Kernel = "auto",
    rng: Seed | None = None,
    uniforms: Array | None = None,
    return_grad: bool = False,
    group: Any = None,
    axis_name: AxisName = None,
) -> Array | tuple[Array, Array]:
    r"""Hard-negative supervised contrastive loss (HSCL): SCL with negatives tilted towards the hard ones.

    $$\ell_{ij} = \log\Bigl(1 + \lambda\, \mathbb{E}_{n \sim q_i} e^{s_{in} - s_{ij}}\Bigr), \qquad
      q_i(n) \propto e^{\beta s_{in}} \text{ over the anchor's other-class rows}$$

    (or $q_i(n) \propto \eta(s_{in})$ for a given `hardening`, which then replaces `beta`).
    Options as for `contrastive_loss`.
    """
    return contrastive_loss(
        embeddings,
        labels,
        candidates="other-ids",
        form="infonce",
        hardening=_tilt(beta, hardening),
        temperature=temperature,
        normalize=normalize,
        negatives=negatives,
        k=k,
        negative_reduction=negative_reduction,
        include_self=include_self,
        reduction=reduction,
        detach_weights=detach_weights,
        check_finite=check_finite,
        tile=tile,
        kernel=kernel,
        rng=rng,
        uniforms=uniforms,
        return_grad=return_grad,
        group=group,
        axis_name=axis_name,
    )


def ucl(
    embeddings: Array,
    ids: Array | None = None,
    /,
    *,
    temperature: float = 1.0,
    normalize: Normalize = "ball",
    negatives: Negatives = "expected",
    k: int | None = None,
    negative_reduction: NegativeReduction = "sum",
    include_self: bool = False,
    reduction: Reduction = "mean",
    detach_weights: bool = True,
    check_finite: bool = True,
    tile: Tile = "auto",
    kernel: Kernel = "auto",
    rng: Seed | None = None,
    uniforms: Array | None = None,
    return_grad: bool = False,
    group: Any = None,
    axis_name: AxisName = None,
) -> Array | tuple[Array, Array]:
    r"""Unsupervised contrastive loss (UCL): positives share the id, negatives are every other row.

    $$\ell_{ij} = \log\Bigl(1 + \lambda\, \frac{1}{N - 1} \sum_{n \ne i} e^{s_{in} - s_{ij}}\Bigr);$$

    negatives may share the anchor's class. Pass (N, d) rows with ids, or (B, V, d) views (instance ids
    implied), as for `ntxent`. Options as for `contrastive_loss`.
    """
    return contrastive_loss(
        embeddings,
        ids,
        candidates="all",
        form="infonce",
        temperature=temperature,
        normalize=normalize,
        negatives=negatives,
        k=k,
        negative_reduction=negative_reduction,
        include_self=include_self,
        reduction=reduction,
        detach_weights=detach_weights,
        check_finite=check_finite,
        tile=tile,
        kernel=kernel,
        rng=rng,
        uniforms=uniforms,
        return_grad=return_grad,
        group=group,
        axis_name=axis_name,
    )


def hucl(
    embeddings: Array,
    ids: Array | None = None,
    /,
    *,
    beta: float = 1.0,
    hardening: HardeningLike | None = None,
    temperature: float = 1.0,
    normalize: Normalize = "ball",
    negatives: Negatives = "expected",
    k: int | None = None,
    negative_reduction: NegativeReduction = "sum",
    include_self: bool = False,
    reduction: Reduction = "mean",
    detach_weights: bool = True,
    check_finite: bool = True,
    tile: Tile = "auto",
    kernel: Kernel = "auto",
    rng: Seed | None = None,
    uniforms: Array | None = None,
    return_grad: bool = False,
    group: Any = None,
    axis_name: AxisName = None,
) -> Array | tuple[Array, Array]:
    r"""Hard-negative unsupervised contrastive loss (HUCL): UCL with $q_i(n) \propto e^{\beta s_{in}}$, $n \ne i$.

    Pass (N, d) rows with ids, or (B, V, d) views (instance ids implied). Options as for `contrastive_loss`.
    """
    return contrastive_loss(
        embeddings,
        ids,
        candidates="all",
        form="infonce",
        hardening=_tilt(beta, hardening),
        temperature=temperature,
        normalize=normalize,
        negatives=negatives,
        k=k,
        negative_reduction=negative_reduction,
        include_self=include_self,
        reduction=reduction,
        detach_weights=detach_weights,
        check_finite=check_finite,
        tile=tile,
        kernel=kernel,
        rng=rng,
        uniforms=uniforms,
        return_grad=return_grad,
        group=group,
        axis_name=axis_name,
    )


def supcon(
    embeddings: Array,
    labels: Array,
    /,
    *,
    temperature: float = 0.1,
    normalize: Normalize = "sphere",
    negatives: Negatives = "expected",
    k: int | None = None,
    negative_reduction: NegativeReduction = "sum",
    include_self: bool = False,
    reduction: Reduction = "anchor_mean",
    detach_weights: bool = True,
    check_finite: bool = True,
    tile: Tile = "auto",
    kernel: Kernel = "auto",
    rng: Seed | None = None,
    uniforms: Array | None = None,
    return_grad: bool = False,
    group: Any = None,
    axis_name: AxisName = None,
) -> Array | tuple[Array, Array]:
    r"""SupCon $\mathcal{L}_{out}$ (Khosla et al. 2020), as pytorch-metric-learning's SupConLoss.

    $$\ell_i = -\frac{1}{|P(i)|} \sum_{j \in P(i)} \log \frac{e^{s_{ij}}}{\sum_{a \ne i} e^{s_{ia}}},$$

    averaged over the anchors. Options as for `contrastive_loss`.
    """
    return contrastive_loss(
        embeddings,
        labels,
        candidates="all",
        form="supcon",
        temperature=temperature,
        normalize=normalize,
        negatives=negatives,
        k=k,
        negative_reduction=negative_reduction,
        include_self=include_self,
        reduction=reduction,
        detach_weights=detach_weights,
        check_finite=check_finite,
        tile=tile,
        kernel=kernel,
        rng=rng,
        uniforms=uniforms,
        return_grad=return_grad,
        group=group,
        axis_name=axis_name,
    )


def ntxent(
    embeddings: Array,
    ids: Array | None = None,
    /,
    *,
    temperature: float = 0.5,
    normalize: Normalize = "sphere",
    negatives: Negatives = "expected",
    k: int | None = None,
    negative_reduction: NegativeReduction = "sum",
    include_self: bool = False,
    reduction: Reduction = "mean",
    detach_weights: bool = True,
    check_finite: bool = True,
    tile: Tile = "auto",
    kernel: Kernel = "auto",
    rng: Seed | None = None,
    uniforms: Array | None = None,
    return_grad: bool = False,
    group: Any = None,
    axis_name: AxisName = None,
) -> Array | tuple[Array, Array]:
    r"""NT-Xent (SimCLR): $\ell_{ij} = -\log \dfrac{e^{s_{ij}}}{e^{s_{ij}} + \sum_{n:\, id_n \ne id_i} e^{s_{in}}}$.

    Pass (B, 2, d) views (instance ids implied) or (N, d) rows with instance ids. Options as for
    `contrastive_loss`.
    """
    return contrastive_loss(
        embeddings,
        ids,
        candidates="other-ids",
        form="infonce",
        temperature=temperature,
        normalize=normalize,
        negatives=negatives,
        k=k,
        negative_reduction=negative_reduction,
        include_self=include_self,
        reduction=reduction,
        detach_weights=detach_weights,
        check_finite=check_finite,
        tile=tile,
        kernel=kernel,
        rng=rng,
        uniforms=uniforms,
        return_grad=return_grad,
        group=group,
        axis_name=axis_name,
    )


def debiased_hcl(
    embeddings: Array,
    ids: Array | None = None,
    /,
    *,
    beta: float = 1.0,
    temperature: float = 0.5,
    normalize: Normalize = "sphere",
    negatives: Negatives = "expected",
    k: int | None = None,
    negative_reduction: NegativeReduction = "sum",
    include_self: bool = False,
    reduction: Reduction = "mean",
    detach_weights: bool = True,
    tau_plus: float = 0.1,
    check_finite: bool = True,
    tile: Tile = "auto",
    kernel: Kernel = "auto",
    rng: Seed | None = None,
    uniforms: Array | None = None,
    return_grad: bool = False,
    group: Any = None,
    axis_name: AxisName = None,
) -> Array | tuple[Array, Array]:
    r"""Debiased hard-negative loss of Robinson et al. (2021).

    $$N_g = \max\Bigl(\frac{M\, \mathbb{E}_{q}[e^{s}] - \tau^+ M e^{s_{ij}}}{1 - \tau^+},\ M e^{-1/\tau}\Bigr),
      \qquad \ell_{ij} = -\log \frac{e^{s_{ij}}}{e^{s_{ij}} + N_g},$$

    with $q \propto e^{\beta s}$ and $M = |N(i)|$ ($2B - 2$ for B pairs of views). Options as for
    `contrastive_loss`.
    """
    return contrastive_loss(
        embeddings,
        ids,
        candidates="other-ids",
        form="debiased",
        hardening=_tilt(beta, None),
        temperature=temperature,
        normalize=normalize,
        negatives=negatives,
        k=k,
        negative_reduction=negative_reduction,
        include_self=include_self,
        reduction=reduction,
        detach_weights=detach_weights,
        tau_plus=tau_plus,
        check_finite=check_finite,
        tile=tile,
        kernel=kernel,
        rng=rng,
        uniforms=uniforms,
        return_grad=return_grad,
        group=group,
        axis_name=axis_name,
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
