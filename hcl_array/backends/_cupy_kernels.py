"""The fused kernel on CuPy arrays: the NumPy kernel with CuPy as its module, registered for "cupy".

Loaded by the dispatcher (through `hcl_array.backends`) on the first call with a CuPy array.
"""

from __future__ import annotations

from typing import Any

import cupy

from hcl_array import dispatch, fused
from hcl_array.config import LossConfig


def fused_loss(z: Any, ids: Any, config: LossConfig, *, uniforms: Any = None, return_grad: bool = False) -> Any:
    """The fused path's entry for CuPy arrays: buffers on z's GPU."""
    return fused.numpy_like_loss(z, ids, config, cupy, uniforms=uniforms, return_grad=return_grad)


dispatch.register("fused", "cupy", fused_loss)
