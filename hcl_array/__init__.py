"""hcl-array: hard-negative contrastive losses and the geometry they produce, on any array-API backend.

The losses, hardening functions and collapse metrics are written once against the Python array API:
pass NumPy, PyTorch, JAX or CuPy arrays and get the same numbers back in the same namespace.
"""

from . import hardening
from .losses import (
    PAPER_PRESET,
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

__version__ = "0.1.0"

__all__ = [
    "PAPER_PRESET",
    "contrastive_loss",
    "debiased_hcl",
    "hardening",
    "hscl",
    "hucl",
    "normalize_embeddings",
    "ntxent",
    "scl",
    "supcon",
    "ucl",
    "value_and_grad",
]
