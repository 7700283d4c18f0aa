"""Loading onnx2torch safely and once: the Triton guard, then the corrected converters and the normalisers."""
from __future__ import annotations

import sys

_LOADED = False


def guard_triton() -> None:
    """onnx2torch imports torchvision, which imports torch._dynamo and Triton; Triton's import crashes a process
    that has already imported TensorFlow (a user passing a keras.Model).  There, torch runs without Triton."""
    if "tensorflow" in sys.modules and "triton" not in sys.modules:
        sys.modules["triton"] = None          # `import triton` now raises ImportError: torch treats it as absent


def load_onnx2torch() -> None:
    """Import onnx2torch (behind the Triton guard), register the corrected converters and the normalisers."""
    global _LOADED
    if _LOADED:
        return
    guard_triton()
    from . import converters, handlers  # noqa: F401  (handlers register on import)
    converters.register()
    _LOADED = True
