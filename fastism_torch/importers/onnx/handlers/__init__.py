"""Normalisers for onnx2torch's modules, one module per op family; importing this package registers them all
in :data:`..registry.HANDLERS` (it imports onnx2torch: call :func:`..setup.load_onnx2torch` first)."""
from . import activations, arithmetic, conv, reduce, shape  # noqa: F401  (register on import)
