"""Counting the host synchronizations of torch code on any device: a stand-in for torch.cuda.set_sync_debug_mode.

On a GPU every read of a tensor's value by the host (item, bool, float, int, tolist, a copy to the CPU) waits
for the device to finish, and so do the operations whose output size depends on the data (nonzero, unique,
masked_select, boolean-mask indexing, repeat_interleave without output_size); a copy from NumPy memory to
the GPU (asarray, tensor, as_tensor, from_numpy of a NumPy array) is counted too, since from pageable
memory it blocks the host as well. `count_syncs` wraps those on
torch.Tensor and torch while it is active and records, for each call made on behalf of hcl_array, the
hcl_array function that made it. On the CPU nothing waits, but the same calls are made (the CPU-only branches
aside, which the sites name), so the count is what a GPU run would pay. Where CUDA exists, tests/test_gpu.py
counts with torch.cuda.set_sync_debug_mode itself.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

PACKAGE = str(Path(__file__).resolve().parents[1] / "hcl_array")
#: value reads of torch.Tensor (each one waits for the device)
_READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy")
#: data-dependent output sizes: the host must learn the size before it can allocate
_SIZED = ("nonzero", "unique", "masked_select")


#: helpers that only pass a read on: the site is their caller
_PASS_ON = ("concrete_bool", "host_ints")


def _site() -> str | None:
    """module:function of the innermost hcl_array frame of the caller, or None when hcl_array is not on the stack."""
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_filename.startswith(PACKAGE) and frame.f_code.co_name not in _PASS_ON:
            module = Path(frame.f_code.co_filename).relative_to(PACKAGE).with_suffix("")
            return f"{'.'.join(module.parts)}:{frame.f_code.co_name}"
        frame = frame.f_back
    return None


_active = threading.local()


def _counting(original, name: str, sites: Counter, when=None):
    @functools.wraps(original)
    def counted(*args, **kwargs):
        if getattr(_active, "depth", 0) == 0:  # a read made inside another (jax's __bool__ via __array__) is one
            site = _site()
            if site is not None and (when is None or when(*args, **kwargs)):
                sites[f"{site} ({name})"] += 1
        _active.depth = getattr(_active, "depth", 0) + 1
        try:
            return original(*args, **kwargs)
        finally:
            _active.depth -= 1

    return counted


def _bool_index(tensor, index) -> bool:
    indices = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices)


def _unsized_repeat(*args, **kwargs) -> bool:
    return kwargs.get("output_size") is None


def _from_host(data, *args, **kwargs) -> bool:
    return isinstance(data, np.ndarray)


def _torch_patches() -> list:
    patches = [(torch.Tensor, name, None) for name in _READS + _SIZED]
    patches += [(torch, name, None) for name in _SIZED + ("equal", "allclose")]
    patches += [(torch.Tensor, "__getitem__", _bool_index), (torch, "repeat_interleave", _unsized_repeat)]
    patches += [(torch.Tensor, "repeat_interleave", _unsized_repeat)]
    return patches + [(torch, name, _from_host) for name in ("asarray", "tensor", "from_numpy", "as_tensor")]


def _jax_patches() -> list:
    """The value reads of a JAX array (np.asarray goes through __array__)."""
    from jax._src.array import ArrayImpl

    return [(ArrayImpl, name, None) for name in ("__bool__", "__int__", "__float__", "__index__", "__array__")] + [
        (ArrayImpl, name, None) for name in ("item", "tolist")
    ]


@contextlib.contextmanager
def count_syncs(framework: str = "torch") -> Iterator[Counter]:
    """A Counter of 'module:function (operation)' -> calls that would synchronize a GPU, filled while active.

    framework: "torch" (reads, data-sized operations, copies from NumPy) or "jax" (reads of a jax.Array).
    """
    sites: Counter = Counter()
    patches = _torch_patches() if framework == "torch" else _jax_patches()
    missing = object()
    saved = [(owner, name, owner.__dict__.get(name, missing)) for owner, name, _ in patches]
    try:
        for owner, name, when in patches:
            setattr(owner, name, _counting(getattr(owner, name), name, sites, when))
        yield sites
    finally:
        for owner, name, original in saved:
            if original is missing:  # inherited (torch._C.TensorBase): drop the override
                delattr(owner, name)
            else:
                setattr(owner, name, original)
