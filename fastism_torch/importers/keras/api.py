"""The public entry point :func:`from_keras`: export, convert, map Keras layers to fx nodes, check."""
from __future__ import annotations

import warnings

from ...errors import UnsupportedOpWarning
from ..onnx import UnsupportedOnnxOps, onnx_to_torch, sequence_input
from .export import export_keras
from .oracle import check_against_keras

def _layer_nodes(gm, meta) -> dict[str, list[str]]:
    """Keras layer name -> fx node names converted from that layer's TF name scope(s)."""
    nodes = [n for n in gm.graph.nodes if n.op in ("call_module", "call_function", "call_method")]
    out = {}
    for layer in meta["layers"]:
        scopes = [s for s in layer.get("scopes", []) if s]
        hits = [n.name for n in nodes if any(str(n.meta.get("onnx_name") or "").startswith(s + "/")
                                             for s in scopes)]
        out.setdefault(layer["name"], []).extend(hits)
    return out


def _layers_of(meta, onnx_names, tensors=None) -> list[str]:
    """Keras layers (``name (Class)``) whose name scopes contain these ONNX nodes (innermost layer wins); a
    node tf2onnx renamed is placed by its tensors' names (``tensors``: node name -> tensor names)."""
    out = []
    for name in onnx_names:
        best = None
        for cand in [name, *(tensors or {}).get(name, [])]:
            for layer in meta["layers"]:
                for sc in layer.get("scopes", []):
                    if sc and cand.startswith(sc + "/") and (best is None or len(sc) > best[0]):
                        best = (len(sc), f"{layer['name']} ({layer['class']})")
            if best:
                break
        label = best[1] if best else name
        if label not in out:
            out.append(label)
    return out


def _stop_names(gm, meta, early_stop_layers) -> list[str]:
    by_layer = _layer_nodes(gm, meta)
    names = []
    for name in early_stop_layers or []:
        if name in by_layer:
            if not by_layer[name]:
                raise ValueError(f"early_stop_layers: Keras layer {name!r} has no operations in the converted graph "
                                 "(it was folded away, e.g. a no-op or a constant); pick the next layer")
            names.extend(by_layer[name])
        else:
            names.append(name)                    # an fx node / module name of the converted graph
    return names


def _innermost_layer(meta, onnx_name: str):
    """The innermost Keras layer (not a model) whose name scope holds the ONNX node ``onnx_name``, or None."""
    best = None
    for layer in meta["layers"]:
        for sc in layer.get("scopes", []):
            if (sc and not layer["is_model"] and onnx_name.startswith(sc + "/")
                    and (best is None or len(sc) > best[0])):
                best = (len(sc), layer)
    return best[1] if best else None


def _name_keras_layers(caught, gm, meta) -> None:
    """Re-issue the warnings ``caught`` while the engine was built; an op that became a stop point (the rules'
    verdict: custom layers made of supported ops run windowed like any other) is named by its Keras layer."""
    nodes = {n.name: n for n in gm.graph.nodes}
    for w in caught:
        node = nodes.get(getattr(w.message, "node", None)) if issubclass(w.category, UnsupportedOpWarning) else None
        layer = _innermost_layer(meta, str(node.meta.get("onnx_name") or "")) if node is not None else None
        if layer is None:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        else:
            warnings.warn(UnsupportedOpWarning(
                f"Keras layer {layer['name']!r} ({layer['class']}) is not supported by the fast engine "
                f"({node.name}: {w.message.reason}): it and everything after it run in full", node.name,
                w.message.reason), stacklevel=3)


def _sequence_spec(specs, seq_len, num_chars, seq_input_idx) -> tuple:
    """``(index, length, channels)`` of the Keras model's sequence input, checked against the caller's values."""
    idx = sequence_input(specs, num_chars or 4) if seq_input_idx is None else int(seq_input_idx)
    if not 0 <= idx < len(specs) or len(specs[idx][1]) != 3:
        raise ValueError(f"input {idx} is not sequence-shaped (batch, length, channels); inputs: {specs}")
    L, C = specs[idx][1][1], specs[idx][1][2]
    if seq_len is not None and L is not None and seq_len != L:
        raise ValueError(f"seq_len={seq_len} but the model's sequence input has length {L}")
    if num_chars is not None and C is not None and num_chars != C:
        raise ValueError(f"num_chars={num_chars} but the model's sequence input has {C} channels")
    return idx, L, C


def from_keras(model_or_path, *, custom_objects=None, allow_unsafe: bool = False, cache_dir=None,
               early_stop_layers=None, seq_len: int | None = None, num_chars: int | None = None,
               seq_input_idx: int | None = None, test_correctness: bool = True, **fastism_kwargs):
    """A :class:`~fastism_torch.FastISM` for a Keras model, without TensorFlow in this process.

    Parameters
    ----------
    model_or_path : str, os.PathLike or keras.Model
        ``.h5`` (Keras 2 or 3), ``.keras``, a SavedModel folder, or an in-memory model (saved to a temporary
        file first).
    custom_objects : dict, optional
        ``{name: class or "module:qualname"}`` for custom layers; classes must be importable (the model is
        loaded in a subprocess).
    allow_unsafe : bool, default False
        Allow code stored in the model file to run (``Lambda`` layers).  Without it, every format (``.keras``,
        ``.h5``, SavedModel folders, in-memory models) is scanned for ``Lambda`` layers before anything loads
        it (``ValueError`` naming them), and Keras loads it in safe mode.
    cache_dir : str, optional
        Where converted models are cached; default ``$FASTISM_TORCH_CACHE`` or ``~/.cache/fastism_torch``.
    early_stop_layers : list of str, optional
        Keras layer names (or fx node names of the converted graph) from which the model runs in full.
    seq_len : int, optional
        Needed only when the model's sequence input has no fixed length.
    num_chars : int, optional
        Default: the sequence input's last dimension (4 if unknown).
    seq_input_idx : int, optional
        Which Keras input is the sequence; default the rank-3 ``(None, L, C)`` input (the longest with
        ``C == 4`` if several).
    test_correctness : bool, default True
        Compare with naive ISM run by Keras itself (in the subprocess) on a few random sequences; raise
        ``ValueError`` with the largest difference if they disagree.
    **fastism_kwargs
        Passed to :class:`~fastism_torch.FastISM` (``change_ranges``, ``device``, ``batch_size``, ...).
        The layout is ``"NLC"``: sequences ``(N, L, C)`` as Keras takes them.

    Returns
    -------
    FastISM; ``ism(seqs)`` gives ``(N, n_ranges, *out)`` per output and ``ism.saturation_mutagenesis(seqs)``
    ``(N, L, C, *out)``, like the original fastISM.  ``ism.keras_export`` holds the conversion details.
    """
    from ...fast import FastISM
    if fastism_kwargs.get("layout", "NLC") != "NLC":
        raise ValueError("from_keras models take sequences as (N, L, C): layout must be 'NLC'")
    fastism_kwargs.pop("layout", None)
    ex = export_keras(model_or_path, custom_objects=custom_objects, allow_unsafe=allow_unsafe,
                      cache_dir=cache_dir, seq_len=seq_len)
    idx, L, C = _sequence_spec(ex.input_specs, seq_len, num_chars, seq_input_idx)
    try:
        gm = onnx_to_torch(ex.onnx_path, seq_len=L, num_chars=C)
    except UnsupportedOnnxOps as e:
        layers = _layers_of(ex.meta, [n for _, n in e.nodes], e.tensors)
        raise ValueError(f"Keras layer(s) {layers} cannot be converted to PyTorch ({e})") from e
    stops = _stop_names(gm, ex.meta, early_stop_layers)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UnsupportedOpWarning)
        ism = FastISM(gm, L, num_chars=C, layout="NLC", seq_input_idx=idx, early_stop_layers=stops or None,
                      test_correctness=False, **fastism_kwargs)
    _name_keras_layers(caught, gm, ex.meta)
    ism.keras_export = ex
    ism.output_names = [o["name"] for o in ex.meta["outputs"]]
    if test_correctness:
        check_against_keras(ism, ex)
    return ism
