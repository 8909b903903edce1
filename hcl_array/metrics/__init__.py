r"""Neural-collapse and dimensional-collapse diagnostics, written once against the Python array API.

Embeddings $H \in \mathbb{R}^{N \times d}$, integer labels $y_i \in \{0, \dots, C-1\}$. Every class-mean metric is
built from the same class statistics: counts $n_c$, means $\mu_c = \frac{1}{n_c} \sum_{i:\, y_i = c} h_i$ (a
scatter-add), the within-class scatter $\sum_i (h_i - \mu_{y_i})(h_i - \mu_{y_i})^\top$ and per-class squared
deviations. The same statistics merge batch by batch (Chan et al.), so `collapse_update` streams data that does
not fit in memory and `collapse_result` reproduces `collapse_report`. Formulas: docs/metrics.md.

The package splits the work by job: `_neural_collapse` (the class-mean geometry), `_dimensional_collapse`
(the spectrum of the rows), `_probe` (rows against fixed class means), `_state` (the class statistics),
`_merging` (two states into one), `_streaming` (batch by batch) and `_report` (everything at once).

Conventions shared by every function:

* $\mu_G$ is the unweighted mean of the class means of the non-empty classes; $C'$ is their number. Empty
  classes (no row with that label) are left out of every class-mean metric, and $C'$ replaces $C$.
* Computation runs in float64 where the backend has it (`supports_float64`); JAX without
  jax_enable_x64 computes in float32 (about $10^{-6}$ relative precision). Results are 0-d arrays of the
  input's namespace; `collapse_report` turns them into Python floats.
* Magnitudes below rounding noise ($\mathrm{rtol} = \max(C, d)\, \varepsilon$ relative to the data's scale) count
  as zero, so $0/0$ ratios have defined values: nc1_quotient and cdnv are 0 for $0/0$ and $+\infty$ for $x/0$;
  cosines with a zero vector are 0; the ETF distance of all-equal means is 1. No metric returns NaN.
* Metrics do not need $d \ge C - 1$: when the simplex ETF is infeasible they keep their formulas and simply
  cannot reach 0.
* `num_classes=None` reads $\max(y) + 1$ eagerly; under jax.jit pass it as a static int (checks on
  data values, such as NaN or label range, are skipped under tracing).
"""

from __future__ import annotations

from ._dimensional_collapse import alignment, embedding_spectrum, numerical_rank, rankme, stable_rank, uniformity
from ._neural_collapse import (
    cdnv,
    class_mean_spectrum,
    class_means,
    equal_inner_product,
    equiangularity,
    equinorm,
    etf_distance,
    max_angle,
    nc1,
    nc1_quotient,
    orthogonal_frame_distance,
    unit_norm,
    zero_sum,
)
from ._probe import (
    ProbeState,
    knn_accuracy,
    mean_classifier_accuracy,
    ncc_accuracy,
    within_class_variation,
)
from ._report import PROBE_KEYS, REPORT_KEYS, collapse_metrics, collapse_report, metrics_to_host
from ._state import CollapseState
from ._streaming import (
    collapse_compute,
    collapse_init,
    collapse_result,
    collapse_update,
    probe_init,
    probe_update,
    streaming_collapse_report,
)

__all__ = [
    "CollapseState",
    "PROBE_KEYS",
    "REPORT_KEYS",
    "ProbeState",
    "alignment",
    "cdnv",
    "class_mean_spectrum",
    "class_means",
    "collapse_init",
    "collapse_metrics",
    "collapse_report",
    "collapse_compute",
    "collapse_result",
    "metrics_to_host",
    "collapse_update",
    "embedding_spectrum",
    "equal_inner_product",
    "equiangularity",
    "equinorm",
    "etf_distance",
    "knn_accuracy",
    "max_angle",
    "mean_classifier_accuracy",
    "nc1",
    "nc1_quotient",
    "ncc_accuracy",
    "numerical_rank",
    "orthogonal_frame_distance",
    "probe_init",
    "probe_update",
    "rankme",
    "stable_rank",
    "streaming_collapse_report",
    "uniformity",
    "unit_norm",
    "within_class_variation",
    "zero_sum",
]
