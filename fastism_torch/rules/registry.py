"""Registry of per-op change-range rules.

A rule is a small function ``rule(ctx: RuleContext) -> Decision`` registered for fx targets: module classes
(``call_module``), functions (``call_function``) or method names (``call_method``).  It is called only for
nodes with at least one input that depends on the sequence *and is windowed* (see :mod:`..analysis`), and says
what the op is:

- ``pointwise``: output position ``j`` depends on input position ``j`` only (activations, BatchNorm in eval,
  channel-wise Linear/LayerNorm, element-wise arithmetic of several tensors, concatenation along channels);
- ``sliding``: a local op along the length axis (convolution, pooling, padding, cropping), described by a
  :class:`~fastism_torch.ranges.Window`, plus how to compute it without padding on a gathered window;
- ``layout``: moves the length axis (permute, transpose, (un)squeeze, reshapes that keep it);
- ``meta``: reads a shape (``x.size(2)``, ``x.shape``) and is rewritten to report the full length;
- ``inc_linear`` / ``inc_mean``: linear in the changed positions, updated from them only;
- ``stop``: everything else; from here on the model runs in full.

Registering a key twice raises. An op without a rule becomes a stop (with a warning naming it).
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch
from torch import fx, nn

from ..kinds import InputRole, Kind, State
from ..ranges import IDENTITY, Window


class EditGraphBuilder(Protocol):
    """What a rule's ``emit`` sees of the edit graph being built (:class:`fastism_torch.rewrite._Builder`)."""
    graph: fx.Graph
    static: bool               # the sync-free, static-shape kernel form (GPUs, torch.compile)

    def add_module(self, name: str, mod: nn.Module) -> str:
        """Add ``mod`` to the edit graph's root module; returns its attribute name for ``graph.call_module``."""

    def value(self, node: fx.Node) -> fx.Node:
        """The edit graph's node for the original ``node``."""

    def ref_window(self, consumer: fx.Node, source: fx.Node) -> fx.Node:
        """The reference window of ``source`` that ``consumer`` reads (a ``REF`` gather of the plan)."""

    def node_input(self, role: InputRole, owner: str, node: str | None = None) -> fx.Node:
        """A new input of the edit graph with ``role`` for the original node ``owner``, holding values of ``node``
        (default ``owner``); the executor feeds it by its role."""


#: ``emit(builder, node, args, kwargs) -> fx.Node``: the node re-emitted to run on a window without padding
Emit = Callable[[EditGraphBuilder, fx.Node, tuple, dict], fx.Node]

#: ``delta(builder, node, args, kwargs, change) -> fx.Node``: the change of a linear sliding op's output (no bias)
#: from ``change``, the change of its windowed input over that input's window of width ``w``: ``w + extent - 1``
#: output positions, the first ``extent - 1 - pad_left`` before the window's start (stride 1)
Delta = Callable[[EditGraphBuilder, fx.Node, tuple, dict, fx.Node], fx.Node]


@dataclass(frozen=True)
class Read:
    """How an op reads one of its length-bearing inputs: through ``window`` along that input's ``laxis``."""
    window: Window = IDENTITY
    laxis: int | None = None


@dataclass(frozen=True)
class Decision:
    kind: Kind
    laxis: int | None = None                     # length axis of the output (windowed kinds)
    length: int | None = None                    # full length of the output along laxis
    reads: dict = field(default_factory=dict)    # input Node -> Read (inputs that carry the length axis)
    emit: Emit | None = None                     # ops rewritten to run on windows (padding-free)
    reason: str = ""                             # STOP: why
    quiet: bool = False                          # STOP: an expected one (dense, global pooling, ...): no warning
    flatten: bool = False                        # STOP: merges the length axis; a dense user may update it
    scale: float = 1.0                           # INC_MEAN: 1/L for a mean, 1 for a sum
    delta: Delta | None = None                   # SLIDING and linear: its output's change from its input's change
    macs: int = 0                                # SLIDING: multiply-adds per output position (all channels);
    #                                              a delta op spends as many per *input* position it propagates;
    #                                              INC_LINEAR: per changed position of the window it reads
    delta_cost: float = 1.0                      # time per multiply-add of ``delta`` relative to recomputing


def stop(reason: str, quiet: bool = False) -> Decision:
    """A stop point. ``quiet`` for the expected ones (flatten, dense, global pooling, attention)."""
    return Decision(Kind.STOP, reason=reason, quiet=quiet)


class RuleContext:
    """What a rule may look at: the node, its owning module, shapes, and which inputs are windowed."""

    def __init__(self, node: fx.Node, gm: fx.GraphModule, infos: dict):
        self.node = node
        self.gm = gm
        self.infos = infos          # Node -> NodeInfo for every earlier node

    # shapes -----------------------------------------------------------------
    @staticmethod
    def shape(n) -> tuple | None:
        tm = n.meta.get("tensor_meta") if isinstance(n, fx.Node) else None
        return tuple(tm.shape) if tm is not None and hasattr(tm, "shape") else None

    @property
    def out_shape(self):
        return self.shape(self.node)

    def module(self) -> nn.Module:
        return self.gm.get_submodule(self.node.target)

    # inputs -----------------------------------------------------------------
    def input_nodes(self) -> list[fx.Node]:
        return list(self.node.all_input_nodes)

    def windowed(self) -> list[fx.Node]:
        return [n for n in self.input_nodes() if self.infos[n].state == State.WINDOW]

    def arg(self, i: int, name: str, default=None):
        """Positional-or-keyword argument of a call_function / call_method node."""
        if i < len(self.node.args):
            return self.node.args[i]
        return self.node.kwargs.get(name, default)

    def laxis(self, n: fx.Node) -> int:
        return self.infos[n].laxis

    def length(self, n: fx.Node) -> int:
        return self.infos[n].length

    def the_window_input(self) -> fx.Node | None:
        w = self.windowed()
        return w[0] if len(w) == 1 else None


Rule = Callable[[RuleContext], Decision]
#: ``macs(ctx) -> float``: an op's multiply-adds for one sequence at full length, whatever the plan makes of it
Macs = Callable[[RuleContext], float]
#: ``peephole(graph, node, root) -> None``: rewrites ``node`` of a CPU eager edit graph (rooted at ``root``) into
#: the op's faster form there (a dense layer through oneDNN, a ReLU in place after a convolution)
Peephole = Callable[[fx.Graph, fx.Node, nn.Module], None]
_RULES: dict[tuple[str, Any], Rule] = {}
_MACS: dict[tuple[str, Any], Macs] = {}
_PEEPHOLES: dict[tuple[str, Any], Peephole] = {}


def _registrar(table: dict, what: str):
    def register_keys(*keys):
        def deco(fn):
            for key in keys:
                if key in table:
                    raise KeyError(f"a {what} for {key} is already registered ({table[key].__name__})")
                table[key] = fn
            return fn
        return deco
    return register_keys


#: Register a change-range rule for ``("module", cls)``, ``("function", fn)`` or ``("method", name)`` keys.
register = _registrar(_RULES, "change-range rule")
#: Register an op's MAC count (:data:`Macs`) for the same kind of keys (read by :mod:`fastism_torch.macs`).
counts_macs = _registrar(_MACS, "MAC count")
#: Register an edit-graph peephole (:data:`Peephole`) for the same kind of keys.
peephole = _registrar(_PEEPHOLES, "peephole")


def _find(table: dict, node: fx.Node, gm: fx.GraphModule):
    if node.op == "call_module":
        mod = gm.get_submodule(node.target)
        for cls in inspect.getmro(type(mod)):
            if ("module", cls) in table:
                return table[("module", cls)]
        return None
    if node.op == "call_function":
        return table.get(("function", node.target))
    if node.op == "call_method":
        return table.get(("method", node.target))
    return None


def lookup(node: fx.Node, gm: fx.GraphModule) -> Rule | None:
    return _find(_RULES, node, gm)


def count_macs(node: fx.Node, gm: fx.GraphModule) -> float:
    """Multiply-adds of ``node`` for one sequence at full length (0 for ops no rule file counts)."""
    fn = _find(_MACS, node, gm)
    return float(fn(RuleContext(node, gm, {}))) if fn is not None else 0.0


def per_output_element(fn: Callable[[RuleContext], float]) -> Macs:
    """A :data:`Macs` from ``fn``, the multiply-adds per element of the op's output."""
    def macs(ctx: RuleContext) -> float:
        shape, per = ctx.out_shape, fn(ctx)
        return float(math.prod(shape[1:]) * per) if per and shape else 0.0
    macs.__name__ = fn.__name__
    return macs


def kernel_elements(kernel_size) -> int:
    """Elements of a (pooling) kernel: one op each per output element."""
    return math.prod(kernel_size) if isinstance(kernel_size, (tuple, list)) else int(kernel_size)


def apply_peepholes(g: fx.Graph, root: nn.Module) -> None:
    """Each node of the edit graph ``g`` (CPU eager form) through its op's peephole, if one is registered."""
    for node in list(g.nodes):
        fn = _find(_PEEPHOLES, node, root)
        if fn is not None:
            fn(g, node, root)


# ---------------------------------------------------------------- linearity
#: key -> True, or ``when(node, infos) -> bool``: ops affine in the inputs that depend on the sequence
_LINEAR: dict = {}


def varying(n, infos: dict) -> bool:
    """Whether ``n`` (an fx node; anything else is a constant) depends on the sequence."""
    return isinstance(n, fx.Node) and infos[n].state in (State.WINDOW, State.FLAT, State.FULL)


def one_varying(node: fx.Node, infos: dict) -> bool:
    """At most one input depends on the sequence (``x * w``, not ``x * x``)."""
    return sum(varying(n, infos) for n in node.all_input_nodes) <= 1


def varying_first(node: fx.Node, infos: dict) -> bool:
    """Only the first argument depends on the sequence (``x / s``, ``F.linear(x, w)``, ``x @ w``)."""
    return not any(varying(n, infos) for n in node.all_input_nodes if n is not node.args[0])


def mark_linear(*keys, when: Callable[[fx.Node, dict], bool] | None = None) -> None:
    """Mark the ops of ``keys`` as affine in their sequence-dependent inputs (``when(node, infos)``: only where it
    holds): the changes of several edits add through them.  Pairwise ISM sums the single-mutant changes of two
    edits whose change ranges never meet at an op that is not marked (:func:`is_linear`)."""
    for key in keys:
        if key in _LINEAR:
            raise KeyError(f"linearity of {key} is already registered")
        _LINEAR[key] = when or True


def is_linear(node: fx.Node, gm: fx.GraphModule, infos: dict) -> bool:
    """Whether ``node``'s output is affine in its sequence-dependent inputs: a rule with a delta form
    (:attr:`Decision.delta`, e.g. convolutions), or an op marked by :func:`mark_linear`.  Unknown ops are not."""
    dec = infos[node].decision
    if dec is not None and dec.delta is not None:
        return True
    mark = _find(_LINEAR, node, gm)
    return bool(mark) and (mark is True or bool(mark(node, infos)))


def describe(node: fx.Node, gm: fx.GraphModule) -> str:
    """Human name of a node's op for warnings: ``conv1 (Conv1d)``, ``add (operator.add)``."""
    if node.op == "call_module":
        return f"{node.target} ({type(gm.get_submodule(node.target)).__name__})"
    if node.op == "call_function":
        return f"{node.name} ({getattr(node.target, '__module__', '')}.{getattr(node.target, '__name__', node.target)})"
    return f"{node.name} ({node.op} {node.target})"


def functions(*names, modules=(torch, torch.nn.functional)):
    """``("function", f)`` keys for every existing ``module.name`` (skips names a torch version lacks)."""
    keys = []
    for mod in modules:
        for n in names:
            f = getattr(mod, n, None)
            if f is not None and ("function", f) not in keys:
                keys.append(("function", f))
    return keys


def methods(*names):
    return [("method", n) for n in names]


def module_types(*classes):
    return [("module", c) for c in classes]
