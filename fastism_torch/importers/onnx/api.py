"""The public API: :func:`onnx_to_torch` (ONNX -> normalised fx graph) and :func:`from_onnx` (-> FastISM), plus
the input-spec helpers the Keras importer shares."""
from __future__ import annotations

import os
import warnings

import torch
import torch.nn.functional as F
from torch import fx

from .onnx_fixes import standardise
from .setup import load_onnx2torch


def input_specs(model) -> list[tuple[str, list]]:
    """``(name, shape)`` of each graph input of an ONNX model (``None`` for symbolic dims)."""
    inits = {i.name for i in model.graph.initializer}
    out = []
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]
        out.append((inp.name, dims))
    return out


def _load(path):
    import onnx
    if isinstance(path, onnx.ModelProto):
        return path
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such ONNX file: {path}")
    try:
        return onnx.load(path)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{path} is not a readable ONNX model ({type(e).__name__}: {e})") from e


def _example_inputs(specs, seq_len, num_chars, batch, seed=0, layout="NLC"):
    g = torch.Generator().manual_seed(seed + batch)
    xs = []
    for name, dims in specs:
        dims = list(dims)
        ncl = layout == "NCL" and len(dims) == 3
        if ncl:
            dims = [dims[0], dims[2], dims[1]]
        if not dims:
            raise ValueError(f"ONNX input {name!r} is a scalar; only batched inputs are supported")
        dims[0] = batch
        for i in range(1, len(dims)):
            if dims[i] in (None, 0):
                if len(dims) == 3 and i == 1 and seq_len is not None:
                    dims[i] = seq_len
                elif len(dims) == 3 and i == 2:
                    dims[i] = num_chars
                else:
                    raise ValueError(f"ONNX input {name!r} has a symbolic dimension {i} ({dims}); pass seq_len")
        if len(dims) == 3:
            x = F.one_hot(torch.randint(0, dims[2], (batch, dims[1]), generator=g), dims[2]).float()
            x = x.transpose(1, 2).contiguous() if ncl else x
        else:
            x = torch.randn(dims, generator=g)
        xs.append(x)
    return xs


def onnx_to_torch(path, seq_len: int | None = None, num_chars: int = 4, layout: str = "NLC") -> fx.GraphModule:
    """Convert an ONNX model to a normalised ``torch.fx.GraphModule`` taking the ONNX inputs in order.

    Parameters
    ----------
    path : str, os.PathLike or onnx.ModelProto
    seq_len : int, optional
        Length of a rank-3 input whose length axis is symbolic.
    num_chars : int, default 4
        Size of a symbolic channel axis of a rank-3 input.
    layout : {"NLC", "NCL"}, default "NLC"
        Axis order of rank-3 inputs (for the example batches used to fold shapes).

    Returns
    -------
    torch.fx.GraphModule, in eval mode; node.meta["onnx_name"] names the ONNX node each op came from.
    """
    load_onnx2torch()
    import onnx2torch

    from .normalise import normalise
    model = standardise(_load(path))
    specs = input_specs(model)
    missing = unconvertible_nodes(model)
    if missing:
        raise UnsupportedOnnxOps(missing, _tensor_names(model, [n for _, n in missing]))
    try:
        gm = onnx2torch.convert(model)
    except NotImplementedError as e:
        raise ValueError(f"the ONNX model uses an operator onnx2torch cannot convert: {e}") from e
    gm.eval()
    examples = tuple(_example_inputs(specs, seq_len, num_chars, b, layout=layout) for b in (2, 3))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"onnx2torch.*")
        warnings.filterwarnings("ignore", message=r"Using a non-tuple sequence for multidimensional indexing")
        out = normalise(gm, examples)
    return out.eval()


class UnsupportedOnnxOps(ValueError):
    """The model has ONNX operators no converter handles; ``nodes`` lists ``(op_type, node name)``."""

    def __init__(self, nodes, tensors=None):
        self.nodes = list(nodes)
        self.tensors = tensors or {}             # node name -> its input and output tensor names
        ops = sorted({op for op, _ in self.nodes})
        names = ", ".join(repr(n) for _, n in self.nodes[:8]) + (" ..." if len(self.nodes) > 8 else "")
        super().__init__(f"the ONNX model uses operator(s) {ops} that cannot be converted to PyTorch "
                         f"(onnx2torch has no converter), at node(s) {names}")


def unconvertible_nodes(model) -> list[tuple[str, str]]:
    """``(op_type, node name)`` of every node onnx2torch has no converter for (at the model's opset)."""
    from onnx2torch.node_converters.registry import get_converter
    opsets = {o.domain: o.version for o in model.opset_import}
    out = []
    for node in model.graph.node:
        try:
            get_converter(node.op_type, opsets.get(node.domain, 1), node.domain)
        except NotImplementedError:
            out.append((node.op_type, node.name or node.op_type))
    return out


def _tensor_names(model, node_names) -> dict:
    want = set(node_names)
    return {n.name: [t for t in (*n.output, *n.input) if t] for n in model.graph.node if n.name in want}


def sequence_input(specs, num_chars: int = 4) -> int:
    """Index of the sequence input: the rank-3 input, preferring last axis ``num_chars`` and the longest."""
    cands = [(i, d) for i, (_, d) in enumerate(specs) if len(d) == 3]
    if not cands:
        raise ValueError("the model has no sequence-shaped input (rank 3: batch, length, channels); inputs: "
                         + ", ".join(f"{n} {d}" for n, d in specs))
    best = sorted(cands, key=lambda c: (c[1][2] not in (num_chars, None), -(c[1][1] or 0)))
    return best[0][0]


def from_onnx(path, *, seq_len: int | None = None, num_chars: int = 4, seq_input_idx: int | None = None,
              **fastism_kwargs):
    """A :class:`~fastism_torch.FastISM` for an ONNX model taking sequences as ``(N, L, C)``.

    Parameters
    ----------
    path : str, os.PathLike or onnx.ModelProto
    seq_len : int, optional
        Sequence length; read from the model's sequence input when fixed there.
    num_chars : int, default 4
    seq_input_idx : int, optional
        Which input is the sequence; default: the rank-3 input (channel axis ``num_chars``, longest).
    layout : {"NLC", "NCL"}, optional
        Axis order of the sequence input; default ``"NCL"`` when the inputs' middle axis is ``num_chars`` (and
        the last is not), else ``"NLC"`` (Keras's ``(N, L, C)``).
    **fastism_kwargs
        Passed to :class:`~fastism_torch.FastISM` (``change_ranges``, ``early_stop_layers``, ``device``, ...).
    """
    from ...fast import FastISM
    model = _load(path)
    specs = input_specs(model)
    layout = _layout(specs, num_chars, fastism_kwargs.pop("layout", None))
    specs_lc = [(n, [d[0], d[2], d[1]] if len(d) == 3 else d) for n, d in specs] if layout == "NCL" else specs
    idx = sequence_input(specs_lc, num_chars) if seq_input_idx is None else int(seq_input_idx)
    if not 0 <= idx < len(specs):
        raise ValueError(f"seq_input_idx={idx} but the model has {len(specs)} input(s)")
    dims = specs_lc[idx][1]
    if len(dims) != 3:
        raise ValueError(f"input {idx} ({specs[idx][0]}) is not sequence-shaped (batch, length, channels): {dims}")
    L = dims[1] or seq_len
    if L is None:
        raise ValueError("the sequence input's length is symbolic; pass seq_len")
    if seq_len is not None and dims[1] and seq_len != dims[1]:
        raise ValueError(f"seq_len={seq_len} but the model's sequence input has length {dims[1]}")
    C = dims[2] or num_chars
    gm = onnx_to_torch(model, seq_len=L, num_chars=C, layout=layout)
    return FastISM(gm, L, num_chars=C, layout=layout, seq_input_idx=idx, **fastism_kwargs)


def _layout(specs, num_chars: int, layout: str | None) -> str:
    """``layout`` checked, or the default: ``"NCL"`` when only the rank-3 inputs' middle axis is ``num_chars``."""
    if layout is None:
        r3 = [d for _, d in specs if len(d) == 3]
        layout = "NCL" if r3 and all(d[1] == num_chars and d[2] != num_chars for d in r3) else "NLC"
    if layout not in ("NLC", "NCL"):
        raise ValueError(f"layout must be 'NLC' or 'NCL'; got {layout!r}")
    return layout
