"""ONNX -> torch.fx with canonical torch ops, for :class:`~fastism_torch.FastISM`.

:func:`onnx_to_torch` converts with onnx2torch, then *normalises* the result: it walks onnx2torch's
GraphModule once, evaluating every node on two example batches (of 2 and 3 sequences), and emits a new graph
in which

- everything that depends only on constants (shape arithmetic, axes and shape buffers, ``Shape`` -> ``Gather``
  -> ``Concat`` chains) is folded into Python ints or buffers; a shape entry that differs between the two
  example batches is the batch size and becomes ``-1``; a float constant the size of the batch with equal rows
  (Keras's zero initial RNN states) becomes its one row, which broadcasts the same;
- onnx2torch's own modules become canonical torch calls (``unsqueeze``/``squeeze``/``permute``/``reshape``
  with int arguments, ``operator.add``/``mul``..., ``torch.cat``, ``getitem`` slices, ``F.pad``,
  ``torch.mean``/``amax``, ``nn.Linear``, ``F.softmax``, ``torch.clamp``);
- a ``Conv2d``/``MaxPool2d``/``AvgPool2d``/``ConvTranspose2d`` that only slides along one axis of an input whose
  other spatial axis has size 1 (how tf2onnx writes Keras's 1-D layers) becomes its 1-D form;
- chains of ``unsqueeze``/``squeeze``/``permute``/singleton-``reshape`` collapse into at most one squeeze, one
  permute and one unsqueeze (tf2onnx's ``ExpandDims`` -> ``Transpose`` -> ``Conv`` -> ``Squeeze`` sandwiches).

Every emitted node is checked against onnx2torch's value for the same node, so a normalisation bug raises
instead of silently changing the model.  onnx2torch modules without a canonical form stay as leaf modules (the
core engine makes them stop points, with a warning).  Converters that onnx2torch gets wrong or lacks are in
:mod:`.converters`.

Modules, each importing only those above it:

- :mod:`.values` (what is known about a value) and :mod:`.builder` (emits the new graph, evaluating each node);
- :mod:`.registry` (module class -> normaliser; a misspelt or duplicate key raises at import) and
  :mod:`.handlers` (the normalisers, one module per op family);
- :mod:`.onnx_fixes` (rewrites of the ONNX graph before onnx2torch: ``Erfc``), :mod:`.converters`
  (onnx2torch converters corrected or added) and :mod:`.setup` (loads onnx2torch once, behind the Triton guard);
- :mod:`.layout_chains` (the layout-chain pass) and :mod:`.normalise` (the driver);
- :mod:`.api` (:func:`onnx_to_torch`, :func:`from_onnx`).

onnx2torch itself is imported only when a model is converted (:func:`.setup.load_onnx2torch`).
"""
from .api import (
                  UnsupportedOnnxOps,
                  from_onnx,
                  input_specs,
                  onnx_to_torch,
                  sequence_input,
                  unconvertible_nodes,
)
from .builder import Builder
from .values import Const, ShapeVal, Sym

__all__ = ["onnx_to_torch", "from_onnx", "input_specs", "sequence_input", "unconvertible_nodes",
           "UnsupportedOnnxOps", "Builder", "Const", "ShapeVal", "Sym"]
