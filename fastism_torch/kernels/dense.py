"""Dense products on the CPU through oneDNN: :func:`linear` (used by the edit graph's dense layers and
:func:`~fastism_torch.kernels.inc_linear`) and :func:`onednn_dense` (the same for a whole model's forward pass,
so naive ISM and the reference pass run the same products)."""
from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode


def _onednn_linear_op():
    try:
        return torch.ops.mkldnn._linear_pointwise if torch.backends.mkldnn.is_available() else None
    except (AttributeError, RuntimeError):
        return None


_ONEDNN_LINEAR = _onednn_linear_op()
ONEDNN_MIN_WEIGHT = 4096        # smaller layers: the call's overhead outweighs the faster product


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, computed by oneDNN for float32 CPU tensors when possible.

    PyTorch's float32 ``mm``/``addmm`` on the CPU call MKL's sgemm, which on AMD CPUs runs an AVX2 code path:
    measured 51-55 GMAC/s on one core of the 2-core EPYC CI machine, against 114-119 GMAC/s for oneDNN (the
    library PyTorch's convolutions already use) on the same product.  ``torch.ops.mkldnn._linear_pointwise``
    (the op inductor's CPU lowering uses) is oneDNN's float32 inner product: full float32, no reduced
    precision.  It is used for inference on float32 CPU tensors with a contiguous weight (a strided weight
    takes a slow reference path), outside autocast; everything else goes to ``F.linear``.
    """
    if (_ONEDNN_LINEAR is not None and x.device.type == "cpu" and x.dtype == torch.float32
            and weight.dtype == torch.float32 and weight.dim() == 2 and weight.is_contiguous()
            and weight.numel() >= ONEDNN_MIN_WEIGHT and x.dim() >= 2 and x.shape[0] > 0
            and (bias is None or (bias.dtype == torch.float32 and bias.is_contiguous()))
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                                  or (bias is not None and bias.requires_grad)))
            and not torch.is_autocast_enabled("cpu")):
        return _ONEDNN_LINEAR(x, weight, bias, "none", [], "")
    return torch.nn.functional.linear(x, weight, bias)


class onednn_dense(TorchFunctionMode):
    """Inside the block, ``F.linear`` calls (``nn.Linear`` included) go through :func:`linear`: a model's dense
    layers then run the same oneDNN products in naive ISM as in the fast path's edit graph."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.linear:
            return linear(*args, **kwargs)
        return func(*args, **kwargs)
