"""Graph capture: a shape-aware ``torch.fx`` trace, functionalised, plus shape propagation.

We use fx tracing rather than ``torch.export``: it keeps module calls (``call_module`` nodes with their
qualified names, which is what ``early_stop_layers`` and the per-op rules key on) and works on onnx2torch's
GraphModules once the importer has folded their shape buffers.

The sequence length is fixed when an engine is built, so the trace knows every shape: each op also runs on
``meta`` tensors (no data, no cost), and ``x.shape`` / ``x.size()`` answer with plain integers, so shape
arithmetic (``x[:, :, trim:x.shape[2] - trim]``), shape-dependent Python (``if x.shape[1] != 4``,
``x.view(-1, *s[1:])``) and einops patterns trace as the ordinary code they are.  Only the batch axis stays
symbolic (a ``size`` node), so ``reshape(B, ...)`` follows the number of edits in a batch.  It is recognised
by tracing with an unusual batch size (:data:`BATCH_MARK`).  A forward argument the caller does not give takes
its default.  A submodule whose code cannot be traced (``torch.vmap``) is traced as one op, with every module
of its class; if the shape-aware trace still fails, plain ``fx.symbolic_trace`` is tried.

The graph is then made *functional* (:mod:`.functional`): in-place ops (``ReLU(inplace=True)``, ``x += y``,
``x.relu_()``) become their out-of-place forms and later readers of the mutated tensor read the new value.  The
engine caches reference outputs and slices of them; an in-place op must never write into one.

Shapes for the example batch are stored in ``node.meta["tensor_meta"]`` (:mod:`.shapes`: on the meta device
with ``check=False``, from real data otherwise).  Models whose Python control flow depends on tensor *values*
cannot be traced: the error says so and names the model.
"""
from __future__ import annotations

import copy
import functools
import inspect
import operator
import warnings

import torch
from torch import fx, nn
from torch.fx.experimental import meta_tracer
from torch.fx.experimental.meta_tracer import MetaProxy, MetaTracer

from .common import as_output_list
from .deferred_dynamo import dynamo_import_deferred
from .errors import UnsupportedOpWarning
from .functional import drop_identities, functionalize
from .shapes import meta_copy, propagate, propagate_on_meta

BATCH_MARK = 97          # batch size of the meta trace: a size that marks the batch axis


def capture(model: nn.Module, example_args: list, check: bool = True) -> fx.GraphModule:
    """Trace ``model`` for inputs like ``example_args`` (``None`` and omitted defaulted arguments become
    concrete), make it functional, and record every node's shape for ``example_args``.

    With ``check`` the traced graph runs on ``example_args`` next to the model and, if their outputs differ,
    the model becomes one op (:func:`as_one_op`).  Without it nothing runs on real data: shapes come from the
    graph run on the ``meta`` device (no cost at any length), and the caller compares the trace with the model
    where it runs the graph anyway (:func:`same_outputs`; FastISM does it on its first reference pass)."""
    concrete = _concrete_args(model, example_args)
    if isinstance(model, fx.GraphModule) and not concrete:
        gm = model
    else:
        gm = _trace(model, example_args, concrete)
    _drop_unused_var_args(gm)
    functionalize(gm)
    drop_identities(gm)
    if not check:
        if not propagate_on_meta(gm, example_args):
            propagate(gm, example_args)
        return gm
    out = propagate(gm, example_args)
    if gm is not model:
        with torch.no_grad():
            want = model(*example_args)
        diff = _difference(out, want)
        if diff is not None:          # the trace is not the model (e.g. aliasing fx cannot see): never use it
            gm = as_one_op(model, example_args, diff)
    return gm


def as_one_op(model: nn.Module, example_args: list, diff: str) -> fx.GraphModule:
    """``model`` as one op, with shapes for ``example_args``, because its trace's outputs differ by ``diff``."""
    gm = _as_one_op(model, example_args, f"the traced graph's outputs differ from the model's: {diff}")
    if not propagate_on_meta(gm, example_args):
        propagate(gm, example_args)
    return gm


def is_one_op(gm: fx.GraphModule) -> bool:
    """Whether ``gm`` is a whole model called as one op (nothing to check against the model)."""
    return any(n.op == "call_module" and isinstance(gm.get_submodule(n.target), WholeModel) for n in gm.graph.nodes)


def same_outputs(traced, model_out, rtol: float = 1e-5) -> str | None:
    """Why the traced graph's outputs ``traced`` differ from the model's ``model_out`` (None: they agree)."""
    return _difference(traced, model_out, rtol)


def _difference(got, want, rtol: float = 1e-5) -> str | None:
    """Why two model outputs differ (structure, shape or values beyond ``rtol`` of the scale), or None."""
    try:
        a, b = as_output_list(got), as_output_list(want)
    except TypeError:
        return None
    if len(a) != len(b):
        return f"{len(a)} outputs instead of {len(b)}"
    for x, y in zip(a, b):
        if x.shape != y.shape:
            return f"shape {tuple(x.shape)} instead of {tuple(y.shape)}"
        if x.is_floating_point() and y.numel():
            scale = float(y.abs().max()) or 1.0
            d = float((x - y).abs().max())
            if not d <= rtol * scale + 1e-7:
                return f"max |difference| {d:.3g} at scale {scale:.3g}"
    return None


def _drop_unused_var_args(gm: fx.GraphModule) -> None:
    """``forward(x, *args, **kwargs)``: the ``*args`` / ``**kwargs`` placeholders, when nothing reads them."""
    unused = [n for n in gm.graph.nodes if n.op == "placeholder" and str(n.target).startswith("*") and not n.users]
    for n in unused:
        gm.graph.erase_node(n)
    if unused:
        gm.recompile()


def _concrete_args(model: nn.Module, example_args: list) -> dict:
    """Arguments fixed at trace time: ``None`` inputs, and every parameter the caller leaves to its default."""
    if isinstance(model, fx.GraphModule):
        names = [n.target for n in model.graph.nodes if n.op == "placeholder"]
        return {names[i]: None for i, a in enumerate(example_args) if a is None and i < len(names)}
    params = [p for p in inspect.signature(model.forward).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    concrete = {}
    for i, p in enumerate(params):
        if i < len(example_args):
            if example_args[i] is None:
                concrete[p.name] = None
        elif p.default is not p.empty:
            concrete[p.name] = p.default
        else:
            raise ValueError(f"{type(model).__name__}.forward needs argument {p.name!r}, which was not given "
                             f"({len(example_args)} input(s) given); pass all the model's inputs as a list")
    return concrete


class WholeModel(nn.Module):
    """A model that could not be traced, called as one op: a stop point at its input (naive ISM's speed)."""

    def __init__(self, model: nn.Module, reason: str):
        super().__init__()
        self.model = model
        self.reason = reason

    def forward(self, *args):
        return self.model(*args)


def _trace(model: nn.Module, example_args: list, concrete: dict) -> fx.GraphModule:
    try:
        return _shape_aware_trace(model, example_args, concrete)
    except Exception as shaped:                                   # noqa: BLE001 - fall back to the plain trace
        try:               # on a copy: a forward that caches values on its module would keep proxies there
            return fx.symbolic_trace(copy.deepcopy(model), concrete_args=concrete or None)
        except Exception:                                         # noqa: BLE001 - fall back to one op
            return _as_one_op(model, example_args, f"{type(shaped).__name__}: {str(shaped).splitlines()[0][:200]}")


def _as_one_op(model: nn.Module, example_args: list, reason: str) -> fx.GraphModule:
    """The whole model as one call: exact, as fast as naive ISM; the warning says why."""
    warnings.warn(f"fastism_torch: could not capture {type(model).__name__} with torch.fx ({reason}); it runs in "
                  "full for every edit, as fast as naive ISM. Models whose Python control flow depends on "
                  "tensor values, or that call torch.vmap, cannot be traced; wrapping such parts in a leaf "
                  "module keeps the rest fast.", UnsupportedOpWarning, stacklevel=4)
    root = nn.Module()
    root.whole = WholeModel(model, reason)
    g = fx.Graph()
    names = list(inspect.signature(model.forward).parameters)
    args = [g.placeholder(names[i] if i < len(names) else f"input_{i}") for i in range(len(example_args))]
    g.output(g.call_module("whole", tuple(args)))
    return fx.GraphModule(root, g, type(model).__name__)


# ------------------------------------------------------------------------------------------ shape-aware trace
class _ShapeProxy(MetaProxy):
    """A proxy that knows its meta value: sizes are integers, except the batch axis (a traced ``size``)."""

    def _meta(self):
        m = getattr(self, "_tensor_meta", None)
        return m if isinstance(m, torch.Tensor) else None

    def size(self, dim=None):
        m = self._meta()
        if m is None:                 # (MetaProxy.size drops dim=0)
            return self.tracer.create_proxy("call_method", "size", (self,) if dim is None else (self, dim), {})
        if dim is None:
            return tuple(self._size(d) for d in range(m.dim()))
        return self._size(dim)

    def _size(self, d: int):
        n = self._meta().shape[d]
        if n == BATCH_MARK:
            return self.tracer.create_proxy("call_method", "size", (self, d), {})
        return n

    @property
    def shape(self):
        return self.size()

    @property
    def ndim(self):
        m = self._meta()
        return m.dim() if m is not None else self.dim()

    def __len__(self):
        n = self.size(0) if self._meta() is not None else None
        if isinstance(n, int):
            return n
        raise TypeError("len() of a tensor whose first axis is the batch is not known at trace time")


def _inplace_dunder(op):
    # Proxy has no __iadd__, so `x += y` would trace as `x = x + y` and lose that other names of x change too
    def method(self, other):
        return self.tracer.create_proxy("call_function", op, (self, other), {})
    return method


for _name, _op in (("__iadd__", operator.iadd), ("__isub__", operator.isub), ("__imul__", operator.imul),
                   ("__itruediv__", operator.itruediv)):
    setattr(_ShapeProxy, _name, _inplace_dunder(_op))


def _relu_meta(x, inplace=False):
    return torch.relu(x)


# MetaTracer refuses F.relu(inplace=True) on meta tensors (the output then has no shape); out of place is the same
meta_tracer.manual_meta_overrides[torch.nn.functional.relu] = _relu_meta


class _ShapeTracer(MetaTracer):
    # MetaTracer swaps torch.arange & co. for wrappers while it traces; torch.compile's table of torch functions,
    # if first built then, no longer knows the real ones (graph breaks at every torch.arange). Constructors
    # with only constant arguments become constants; with a traced argument they are traced anyway.
    _TORCH_METHODS_TO_PATCH: list = []

    def __init__(self, leaves=frozenset()):
        super().__init__()
        self.leaves = frozenset(leaves)      # module classes traced as one op (their code could not be)
        self.failed_in = None                # the innermost module whose forward raised while tracing
        self._leaf_meta = False              # a leaf's code running on meta tensors for its output's shape

    def proxy(self, node):
        return _ShapeProxy(node, self)

    def is_leaf_module(self, m, qualname):
        return type(m) in self.leaves or super().is_leaf_module(m, qualname)

    def create_proxy(self, kind, target, *args, **kwargs):
        if kind != "call_module" or type(self.root.get_submodule(target)) not in self.leaves:
            return super().create_proxy(kind, target, *args, **kwargs)
        self._leaf_meta = True               # its submodules then run as plain code, not as more graph nodes
        try:
            return super().create_proxy(kind, target, *args, **kwargs)
        finally:
            self._leaf_meta = False

    def call_module(self, m, forward, args, kwargs):
        if self._leaf_meta:
            return forward(*args, **kwargs)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None and m is not self.root:
                self.failed_in = m
            raise


def _shape_aware_trace(model: nn.Module, example_args: list, concrete: dict) -> fx.GraphModule:
    """Trace a copy of ``model`` on the ``meta`` device (its modules then run on meta inputs to give shapes);
    the graph module is then built on ``model`` itself (same qualified names), with any constant the trace
    made."""
    names = [p for p in inspect.signature(model.forward).parameters]
    meta_args = {names[i]: torch.empty((BATCH_MARK, *a.shape[1:]), dtype=a.dtype, device="meta")
                 for i, a in enumerate(example_args) if isinstance(a, torch.Tensor)}
    graph, meta_model = _trace_with_leaves(model, meta_args, concrete)
    for node in graph.nodes:
        if node.op == "get_attr" and not _has_attr(model, node.target):     # a constant made while tracing
            value = _get_attr(meta_model, node.target)
            if isinstance(value, torch.Tensor) and value.is_meta:
                raise ValueError(f"{node.target}: a constant computed from the model's weights while tracing")
            setattr(model, node.target, value)                  # (fx names them _tensor_constant<k>)
    return fx.GraphModule(model, graph, type(model).__name__)


def _trace_with_leaves(model: nn.Module, meta_args: dict, concrete: dict, tries: int = 8):
    """``(graph, meta copy of the model it was traced on)``.  Where a submodule's code cannot be traced
    (``torch.vmap`` in borzoi-pytorch's attention), every module of its class is traced as one op (a stop point,
    named by the analysis) and the rest of the model as usual; each try on a fresh copy (a failed trace may have
    left values cached on its modules)."""
    leaves: set = set()
    for _ in range(tries):
        meta_model = meta_copy(model)
        tracer = _ShapeTracer(leaves)
        try:
            with warnings.catch_warnings(), _einops_on_proxies(), dynamo_import_deferred():
                warnings.simplefilter("ignore")
                return tracer.trace(meta_model, meta_args, concrete_args=concrete or None), meta_model
        except Exception:
            if tracer.failed_in is None or type(tracer.failed_in) in leaves:
                raise
            leaves.add(type(tracer.failed_in))
    raise ValueError(f"could not trace the model with {sorted(c.__name__ for c in leaves)} modules as single ops")


def _get_attr(root, target: str):
    for atom in target.split("."):
        root = getattr(root, atom)
    return root


def _has_attr(root, target: str) -> bool:
    try:
        _get_attr(root, target)
        return True
    except AttributeError:
        return False


_FX_BACKEND = "fastism_fx_proxy"     # not a module name: einops never instantiates the backend by itself


class _einops_on_proxies:
    """Let einops (if installed) treat fx proxies as torch tensors while tracing; einops is left as it was."""

    def __enter__(self):
        self.backend = None
        try:
            from einops import _backends
        except ImportError:
            return self
        torch_backend = next((b for b in _backends.AbstractBackend.__subclasses__()
                              if getattr(b, "framework_name", None) == "torch"), None)
        if torch_backend is None:
            return self
        cls = _fx_backend_class(torch_backend)
        self.backends = _backends
        self.backend = cls()
        _backends._loaded_backends[_FX_BACKEND] = self.backend
        return self

    def __exit__(self, *exc):
        if self.backend is not None:
            self.backends._loaded_backends.pop(_FX_BACKEND, None)
            for k in [k for k, v in self.backends._type2backend.items() if v is self.backend]:
                self.backends._type2backend.pop(k)
        return False


@functools.cache
def _fx_backend_class(torch_backend):
    """einops' torch backend for fx proxies (one class per process: einops keeps finding its subclasses)."""
    class FxProxyBackend(torch_backend):
        framework_name = _FX_BACKEND

        def is_appropriate_type(self, tensor):
            return isinstance(tensor, fx.Proxy)

        def shape(self, x):
            return tuple(x.shape)
    return FxProxyBackend
