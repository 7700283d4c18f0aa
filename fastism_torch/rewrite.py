"""Rewrite: from the original graph and a :class:`~fastism_torch.plan.Plan`, build the *edit graph*, one
``GraphModule`` that computes the model's outputs for a batch of edits.

- windowed nodes are copied (or re-emitted padding-free by their rule) and run on windows;
- every plan :class:`~fastism_torch.plan.Gather` becomes a :func:`~fastism_torch.kernels.gather_window` call
  (keyword arguments) whose reference cache and index tensors are inputs of the edit graph;
  with ``static=True`` (GPUs, ``torch.compile``) the sync-free :func:`~fastism_torch.kernels.gather_window_static`
  instead;
- ``inc_mean`` nodes become incremental updates of the reference output (``ref_{node}``), reading the
  reference window's sum from running sums (``g{k}_cache``); ``inc_linear`` nodes are emitted by their rule
  (:mod:`.rules.dense`);
- static nodes (other model inputs) are replayed on the edits' rows; full nodes are copied.

The edit graph reads only the plan and the analysis.  Every input it makes is listed, with its role, in
:attr:`EditModule.inputs` (:class:`EditInput`): the executor feeds exactly those, by role.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass

import torch

from torch import fx

from . import kernels
from .kernels import ops  # noqa: F401  (registers torch.ops.fastism.*)
from .kinds import GatherKind, InputRole, Kind, State
from .plan import Plan
from .rules.registry import apply_peepholes


@dataclass(frozen=True)
class EditInput:
    """One input (placeholder) of the edit graph: its keyword ``name``, what it holds (``role``), and the plan
    gather (index ``gather``) or node (``node``, for the original node ``owner``) it belongs to.  The executor
    feeds exactly these."""
    name: str
    role: InputRole
    gather: int | None = None
    node: str | None = None
    owner: str | None = None

    @property
    def per_edit(self) -> bool:
        """Whether the value has one row per edit (a batch's rows can be cut into chunks)."""
        return self.role not in (InputRole.CACHE, InputRole.WIDTH, InputRole.DENSE_SPAN)


@dataclass
class EditModule:
    module: fx.GraphModule
    inputs: tuple              # EditInput per placeholder of the edit graph: what the executor feeds
    static: bool = False       # sync-free, static-shape kernels (GPUs, torch.compile)
    segment_gathers: tuple = ()  # plan gather that starts segment ``submod_{i}`` (None: segment 0, no gather)

    @property
    def ref_nodes(self) -> list:
        """Names of the nodes whose reference output is an input (incremental ops)."""
        return [x.node for x in self.inputs if x.role == InputRole.REF_OUTPUT]


# The edit graph's placeholder names (the executor reads them from :class:`EditInput`, never rebuilds them).
VALUES = "values"                            # the edits' new values, (B, width, C)


def gather_input(k: int, part: str) -> str:
    """Input ``part`` of gather ``k``: cache, seq, start, shift or width."""
    return f"g{k}_{part}"


#: name prefixes of the inputs that belong to an original node (``{prefix}_{node}``)
NODE_INPUT_PREFIX = {InputRole.STATIC_ROWS: "in", InputRole.REF_OUTPUT: "ref", InputRole.DENSE_START: "start",
                     InputRole.DENSE_SPAN: "span"}


GATHER_META = "fastism_gather"           # node.meta key: the plan gather a gather node implements
DELTA_OPS = (torch.ops.fastism.gather_window_delta, kernels.gather_window_delta_static)   # eager, static
#: the CPU eager form calls the kernels' Python functions directly (:func:`direct_kernels`): the custom ops
#: (opaque to ``torch.compile``, checked by ``opcheck``) cost ~100 us of dispatch per call, most of a small
#: model's per-call time; ``False`` keeps the custom ops in eager graphs too (the op tests record them)
DIRECT_KERNELS = True
DIRECT = {torch.ops.fastism.gather_window: kernels.gather_window,
          torch.ops.fastism.gather_window_add: kernels.gather_window_add,
          torch.ops.fastism.gather_window_add_mean: kernels.gather.gather_window_add_mean,
          torch.ops.fastism.gather_window_delta: kernels.gather_window_delta,
          torch.ops.fastism.inc_linear: kernels.inc_linear}
GATHER_OPS = (torch.ops.fastism.gather_window, kernels.gather_window_static, torch.ops.fastism.gather_window_add,
              torch.ops.fastism.gather_window_add_mean, *DELTA_OPS,
              *(DIRECT[op] for op in DIRECT if op is not torch.ops.fastism.inc_linear))
ADDS = (operator.add, torch.add)


class _Builder:
    """Emits the edit graph node by node.  Rules that re-emit their node (``Decision.emit``) see only
    :attr:`graph` and :meth:`add_module` (the builder protocol of :mod:`.rules.registry`)."""

    def __init__(self, gm: fx.GraphModule, infos: dict, plan: Plan, static: bool):
        self.graph = fx.Graph()
        self.root = gm
        self.infos, self.plan, self.static = infos, plan, static
        self.nodes = {n.name: n for n in gm.graph.nodes}
        self.by_key = {(x.consumer, x.source, x.kind): k for k, x in enumerate(plan.gathers)}
        self.env: dict = {}          # original node -> edit graph node
        self.made: dict = {}         # gather index -> its edit graph node
        self.changes: dict = {}      # DELTA gather index -> the node of the change it adds
        self.inputs: list = []       # EditInput, in the order made
        self._n = 0

    def add_module(self, name: str, mod):
        self._n += 1
        name = f"_fastism_{name}_{self._n}"
        self.root.add_submodule(name, mod)
        return name

    def input(self, name: str, role: InputRole, gather: int | None = None, node: str | None = None,
              owner: str | None = None) -> fx.Node:
        """A new input of the edit graph, listed for the executor (:class:`EditInput`)."""
        self.inputs.append(EditInput(name, role, gather, node, owner))
        return self.graph.placeholder(name)

    def node_input(self, role: InputRole, owner: str, node: str | None = None) -> fx.Node:
        """An input of ``role`` for the original node ``owner``, holding values of ``node`` (default ``owner``)."""
        return self.input(f"{NODE_INPUT_PREFIX[role]}_{owner}", role, node=node or owner, owner=owner)

    def value(self, node: fx.Node) -> fx.Node:
        return self.env[node]

    def ref_window(self, consumer: fx.Node, source: fx.Node) -> fx.Node:
        return self.gathered(self.by_key[(consumer.name, source.name, GatherKind.REF)])

    def gather_inputs(self, k: int, *roles: InputRole) -> list:
        """Inputs ``roles`` of plan gather ``k``; :data:`InputRole.SEQ` is :data:`InputRole.OWN_ROWS` for a gather
        of the edits' own rows (a static source)."""
        own = self.plan.gathers[k].source_state == State.STATIC
        return [self.input(gather_input(k, str(r)), InputRole.OWN_ROWS if own and r == InputRole.SEQ else r, k)
                for r in roles]

    # --------------------------------------------------------------- gathers
    def gathered(self, k: int) -> fx.Node:
        """The edit graph node of plan gather ``k`` (made once; a reused gather is a narrowed view)."""
        if k not in self.made:
            self.made[k] = self._gather(k)
        return self.made[k]

    def _gather(self, k: int) -> fx.Node:
        ga, g = self.plan.gathers[k], self.graph
        src_node = self.nodes[ga.source]
        if ga.reuse is not None:
            base, off, shrink = ga.reuse
            return g.call_function(kernels.narrow_window, (self.gathered(base), ga.laxis, off, shrink))
        if ga.source_state == State.STATIC:          # rows of the edits themselves (replayed static input)
            src = g.call_function(kernels.to_cache, (self.env[src_node], ga.laxis))
        else:
            src, = self.gather_inputs(k, InputRole.CACHE)
        new = shift = None
        op, name = GATHER_OPS[int(self.static)], "new"
        if ga.kind == GatherKind.DELTA:
            new, op, name = self.changes[k], DELTA_OPS[int(self.static)], "change"
            shift, = self.gather_inputs(k, InputRole.DELTA_ORIGIN)
        elif ga.kind != GatherKind.REF and ga.source_state == State.WINDOW:
            new = self.env[src_node]
            shift, = self.gather_inputs(k, InputRole.SHIFT)
        seq, start, width = self.gather_inputs(k, InputRole.SEQ, InputRole.START, InputRole.WIDTH)
        node = g.call_function(op, (), {"cache": src, name: new, "seq_idx": seq, "start": start, "shift": shift,
                                        "width": width, "laxis": ga.laxis, "feat_shape": list(ga.feat),
                                        "new_laxis": ga.laxis})
        node.meta[GATHER_META] = k
        return node

    def mapped(self, node: fx.Node, kind: GatherKind):
        """``node``'s args and kwargs in the edit graph: each input gathered (if the plan says so) or mapped."""
        sub = {}
        for x in node.all_input_nodes:
            k = self.by_key.get((node.name, x.name, kind))
            sub[x] = self.gathered(k) if k is not None else self.env.get(x)
        return fx.node.map_arg(node.args, sub.__getitem__), fx.node.map_arg(node.kwargs, sub.__getitem__), sub

    # ------------------------------------------------------------------ nodes
    def emit(self, node: fx.Node, seq_node: fx.Node) -> None:
        info = self.infos[node]
        dec = info.decision
        if node.op == "placeholder":
            if node is seq_node:
                self.env[node] = self.input(VALUES, InputRole.VALUES)
            else:
                self.env[node] = self.node_input(InputRole.STATIC_ROWS, node.name)
        elif node.op == "output":
            args, _, _ = self.mapped(node, GatherKind.FULL)
            self.graph.output(args[0])
        elif info.state == State.FLAT:
            return
        elif dec is not None and dec.kind == Kind.INC_MEAN:
            self.env[node] = self._inc_mean(node, dec)
        elif dec is not None and dec.kind == Kind.INC_LINEAR:
            self.env[node] = dec.emit(self, node, (), {})     # (rules/dense.py: the incremental dense update)
        elif info.state == State.WINDOW and self.plan.nodes[node.name].delta_from:
            self.env[node] = self._delta(node, dec)
        else:
            args, kwargs, sub = self.mapped(node, GatherKind.WINDOW if info.state == State.WINDOW else GatherKind.FULL)
            if dec is not None and dec.emit is not None and info.state in (State.WINDOW, State.STATIC):
                self.env[node] = dec.emit(self, node, args, kwargs)
            else:
                self.env[node] = self.graph.node_copy(node, lambda n: sub[n])

    def _delta(self, node: fx.Node, dec) -> fx.Node:
        """A linear op by delta propagation: its reference window plus ``dec.delta`` of its input's change
        (the input's window minus that window's reference)."""
        x = self.nodes[self.plan.nodes[node.name].delta_from]
        ref = self.ref_window(node, x)
        change = self.graph.call_function(operator.sub, (self.env[x], ref))
        args, kwargs, _ = self.mapped(node, GatherKind.WINDOW)
        k = self.by_key[(node.name, node.name, GatherKind.DELTA)]
        self.changes[k] = dec.delta(self, node, args, kwargs, change)
        return self.gathered(k)

    def _inc_mean(self, node: fx.Node, dec) -> fx.Node:
        x = next(iter(dec.reads))
        k = self.by_key[(node.name, x.name, GatherKind.SUM)]
        prefix, seq, start = self.gather_inputs(k, InputRole.CACHE, InputRole.SEQ, InputRole.START)
        return self.graph.call_function(kernels.inc_mean_prefix, (), {
            "new": self.env[x], "prefix": prefix, "seq_idx": seq, "start": start,
            "ref_out": self.node_input(InputRole.REF_OUTPUT, node.name),
            "laxis": self.infos[x].laxis, "scale": dec.scale})


def build_edit_module(gm: fx.GraphModule, infos: dict, plan: Plan, seq_node: fx.Node,
                      static: bool = False) -> EditModule:
    """The edit graph; ``static=True`` emits the kernels that never read tensor values on the host."""
    b = _Builder(gm, infos, plan, static)
    for node in gm.graph.nodes:
        b.emit(node, seq_node)
    if not static:
        fuse_adds_into_gathers(b.graph)
        apply_peepholes(b.graph, b.root)            # each op's faster CPU form, from its rule file
        if DIRECT_KERNELS:
            direct_kernels(b.graph)
    b.graph.lint()
    module = fx.GraphModule(b.root, b.graph, class_name="FastISMEditGraph")
    starts = (None, *(n.meta.get(GATHER_META) for n in b.graph.nodes if n.target in GATHER_OPS))
    return EditModule(split_segments(module), tuple(b.inputs), static, starts)


def fuse_adds_into_gathers(g: fx.Graph) -> None:
    """``gather_window(cache, a + b, ...)`` where the sum has no other reader -> ``gather_window_add(cache, a, b,
    ...)``: a residual block's sum is written straight into the next layer's gathered window (CPU eager form).
    A sum whose one other reader is a global mean -> ``gather_window_add_mean``, the mean summed from the
    window (BPNet's last residual sum feeds the profile head and the counts head's mean)."""
    for node in list(g.nodes):
        if node.target is not torch.ops.fastism.gather_window:
            continue
        new = node.kwargs["new"]
        if (not isinstance(new, fx.Node) or new.op != "call_function" or new.target not in ADDS or new.kwargs
                or len(new.args) != 2 or not all(isinstance(x, fx.Node) for x in new.args)):
            continue
        kw = {k: v for k, v in node.kwargs.items() if k != "new"}
        kw["a"], kw["b"] = new.args
        others = [u for u in new.users if u is not node]
        mean = others[0] if len(others) == 1 else None
        if others and not (_mean_of(mean, new, kw["new_laxis"]) and _all_after(mean.users, node)):
            continue                    # (the fused op replaces the mean where the gather is: its readers follow)
        with g.inserting_before(node):
            if mean is None:
                fused = op = g.call_function(torch.ops.fastism.gather_window_add, (), kw)
            else:
                m = mean.kwargs
                for x in (m["prefix"], m["seq_idx"], m["start"], m["ref_out"]):   # the mean's inputs, made after
                    node.prepend(x)                                               # the gather
                op = g.call_function(torch.ops.fastism.gather_window_add_mean, (), {
                    **kw, "prefix": m["prefix"], "m_seq": m["seq_idx"], "m_start": m["start"], "ref_out": m["ref_out"],
                    "scale": m["scale"]})
                fused = g.call_function(operator.getitem, (op, 0))
                mean.replace_all_uses_with(g.call_function(operator.getitem, (op, 1)))
                g.erase_node(mean)
        op.meta.update(node.meta)
        node.replace_all_uses_with(fused)
        g.erase_node(node)
        g.erase_node(new)


def direct_kernels(g: fx.Graph) -> None:
    """The CPU eager form: each custom op -> its kernel's Python function (:data:`DIRECT_KERNELS`)."""
    for node in g.nodes:
        if node.op == "call_function" and node.target in DIRECT:
            node.target = DIRECT[node.target]


def _all_after(users, node: fx.Node) -> bool:
    """Whether every node of ``users`` comes after ``node`` in its graph."""
    after, n = set(), node.next
    while n.op != "root":
        after.add(n)
        n = n.next
    return all(u in after for u in users)


def _mean_of(node, new: fx.Node, laxis: int) -> bool:
    """Whether ``node`` is the incremental mean of ``new`` (alone, along ``laxis``) with placeholder inputs."""
    if node is None or node.target is not kernels.inc_mean_prefix or node.args:
        return False
    kw = node.kwargs
    return (kw["new"] is new and kw["laxis"] == laxis
            and all(isinstance(kw[k], fx.Node) and kw[k].op == "placeholder"
                    for k in ("prefix", "seq_idx", "start", "ref_out")))


def _keeps(node: fx.Node) -> bool:
    """Whether dead-code elimination keeps ``node`` unused: the graph's inputs and output, and in-place ops (our
    kernels mutate nothing).  fx's own test imports ``torch._higher_order_ops`` on its first use in a process,
    0.2 s of a small model's first build."""
    return node.op in ("placeholder", "output") or str(getattr(node.target, "__name__", node.target)).endswith("_")


def split_segments(module: fx.GraphModule) -> fx.GraphModule:
    """One submodule per segment: each gather starts a segment that runs up to the next gather, in graph order.

    Segment ids then never decrease along the graph, which ``split_module`` (emitting submodules in the order
    of their first node) needs.  A value used inside a container argument (``x[:n]`` holds ``n`` in a
    ``slice``) is recomputed right before that user: ``split_module`` passes only direct arguments between
    submodules.
    """
    g = module.graph
    for n in list(g.nodes):
        for u in list(n.users):
            if n.op not in ("placeholder", "get_attr") and n not in u.args and n not in u.kwargs.values():
                with g.inserting_before(u):
                    twin = g.node_copy(n)
                u.replace_input_with(n, twin)
    g.eliminate_dead_code(is_impure_node=_keeps)
    seg: dict = {}
    current = 0
    for n in g.nodes:
        if n.op in ("placeholder", "output"):
            continue
        if n.target in GATHER_OPS:
            current += 1
        seg[n] = current
    module.recompile()
    from torch.fx.passes.split_module import split_module
    return split_module(module, module, lambda n: seg[n], keep_original_order=True)


@dataclass(frozen=True)
class TailSplit:
    """The split edit graph cut before segment ``first``: :attr:`head` runs on the whole batch and returns the
    values the rest reads; :attr:`tail` runs that rest on any slice of the batch's rows (a chunk whose
    activations stay in the CPU's caches: BPNet's last dilated layers move windows of 64 x 1285 floats per
    edit)."""
    head: fx.GraphModule      # the feed -> a tuple: the values named ``carried``
    tail: fx.GraphModule      # keyword inputs: the feed names it reads and ``carried`` -> the outputs
    carried: tuple            # node names of the head's outputs, in order
    feed: tuple               # feed names the tail reads
    rows: frozenset           # the carried values that are per-edit rows (the others, e.g. a value computed
    #                           from parameters alone, go to every chunk whole)


def split_tail(module: fx.GraphModule, first: int, row_inputs) -> TailSplit | None:
    """Cut the split edit graph (:func:`split_segments`) before its call of segment ``first``; None when no
    segment from ``first`` on is called.  ``row_inputs``: the feed names that are per-edit rows (a value
    computed from one of them is too)."""
    g = module.graph
    nodes = list(g.nodes)
    cut = next((i for i, n in enumerate(nodes) if n.op == "call_module" and n.target.startswith("submod_")
                and int(n.target.split("_")[1]) >= first), None)
    if cut is None:
        return None
    placeholders = [n for n in nodes if n.op == "placeholder"]
    body = [n for n in nodes[:cut] if n.op not in ("placeholder", "output")]
    rest = [n for n in nodes[cut:] if n.op != "placeholder"]
    reads = {x for n in rest for x in n.all_input_nodes}
    carried = [n for n in body if n in reads]
    feed = [n for n in placeholders if n in reads]
    rows = _row_values(module, placeholders + body, set(row_inputs))

    head, env = fx.Graph(), {}
    for n in placeholders + body:
        env[n] = head.node_copy(n, env.__getitem__)
    head.output(tuple(env[n] for n in carried))
    tail, env = fx.Graph(), {}
    for n in feed + carried:
        env[n] = tail.placeholder(n.name)
    for n in rest:
        env[n] = tail.node_copy(n, env.__getitem__)
    return TailSplit(fx.GraphModule(module, head, class_name="FastISMEditHead"),
                     fx.GraphModule(module, tail, class_name="FastISMEditTail"),
                     tuple(n.name for n in carried), tuple(n.target for n in feed),
                     frozenset(n.name for n in carried if n in rows))


def _row_values(module: fx.GraphModule, nodes: list, row_inputs: set) -> set:
    """The top-level ``nodes`` of the split edit graph whose values depend on a per-edit input, looking
    inside each segment's submodule (one of its outputs may depend on parameters alone)."""
    rows, outs = set(), {}                            # outs: submodule call -> its per-row output positions
    for n in nodes:
        if n.op == "placeholder":
            if n.target in row_inputs:
                rows.add(n)
        elif n.op == "call_module":
            sub = module.get_submodule(n.target)
            inner = {p for p, a in zip((x for x in sub.graph.nodes if x.op == "placeholder"), n.args) if a in rows}
            for x in sub.graph.nodes:
                if x.op != "placeholder" and any(y in inner for y in x.all_input_nodes):
                    inner.add(x)
            out = next(x for x in sub.graph.nodes if x.op == "output").args[0]
            outs[n] = [v in inner for v in out] if isinstance(out, (tuple, list)) else [out in inner]
            if any(outs[n]) and not isinstance(out, (tuple, list)):
                rows.add(n)
        elif n.op == "call_function" and n.target is operator.getitem and n.args[0] in outs:
            if outs[n.args[0]][n.args[1]]:
                rows.add(n)
        elif any(x in rows for x in n.all_input_nodes):
            rows.add(n)
    return rows
