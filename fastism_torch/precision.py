"""The float32 precision policy of the engines (TF32).

On NVIDIA GPUs since Ampere, PyTorch runs float32 cuDNN convolutions in TF32 by default (10-bit mantissa:
about 1e-3 relative error per op).  ISM effects are differences between two predictions, and the fast and the
naive paths run convolutions of different shapes (so different TF32 roundings): exact ISM needs IEEE float32.
The engines therefore run their own work with TF32 *off* unless asked (``tf32=True``), and restore the
caller's settings afterwards.  With ``tf32=True`` the self-check compares at :data:`TF32_RTOL`.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

TF32_RTOL = 5e-3     # self-check tolerance (relative to output scale) with TF32 convolutions and matmuls
#: float32 self-check tolerance (relative to output scale) per device type.  On GPUs cuDNN picks other
#: algorithms for the fast path's narrow windows than for full-length passes (their summation orders differ):
#: measured 1.1e-5 on Factorized Basset's 30 layers on an H100, IEEE float32 throughout.
FLOAT32_RTOL = {"cpu": 1e-5}
GPU_FLOAT32_RTOL = 5e-5


def float32_rtol(device) -> float:
    return FLOAT32_RTOL.get(torch.device(device).type, GPU_FLOAT32_RTOL)


@contextmanager
def cudnn_benchmark(on: bool):
    """``torch.backends.cudnn.benchmark`` inside the block (restored after)."""
    old = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = on
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = old


@contextmanager
def float32_precision(tf32: bool):
    """cuDNN convolutions and matrix products in TF32 (``tf32=True``) or IEEE float32 inside the block.

    Set and restored through PyTorch's legacy switches (``cudnn.allow_tf32``, the float32 matmul precision):
    mixing them with the per-op ``fp32_precision`` API makes the legacy getter, which torch.export and other
    code read, raise.
    """
    old_cudnn = torch.backends.cudnn.allow_tf32
    old_matmul = torch.get_float32_matmul_precision()
    torch.backends.cudnn.allow_tf32 = tf32
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = old_cudnn
        torch.set_float32_matmul_precision(old_matmul)
