"""hcl-array: hard-negative contrastive losses and the geometry they produce, on any array-API backend.

The losses, hardening functions and collapse metrics are written once against the Python array API:
pass NumPy, PyTorch, JAX or CuPy arrays and get the same numbers back in the same namespace.
"""

from . import backends, geometry, hardening, metrics  # backends: registers the frameworks' loss kernels
from .geometry import simplex_etf
from .losses import (
    PAPER_PRESET,
    LossConfig,
    contrastive_loss,
    debiased_hcl,
    hscl,
    hucl,
    normalize_embeddings,
    ntxent,
    scl,
    supcon,
    ucl,
    value_and_grad,
)
from .metrics import collapse_report

__version__ = "0.1.0"

__all__ = [
    "backends",
    "PAPER_PRESET",
    "LossConfig",
    "contrastive_loss",
    "debiased_hcl",
    "geometry",
    "hardening",
    "hscl",
    "hucl",
    "metrics",
    "normalize_embeddings",
    "ntxent",
    "scl",
    "supcon",
    "ucl",
    "value_and_grad",
    "collapse_report",
    "simplex_etf",
]
