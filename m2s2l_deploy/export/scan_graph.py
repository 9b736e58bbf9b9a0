"""The selective scan as ONNX graph pieces, in the three forms ``m2s2l-deploy export --scan`` offers.

Every form implements one node of the exporter's intermediate graph::

    y = ai.onnx.contrib::SelectiveScan(u, delta, A, B, C, D, delta_bias)   (delta_softplus=1)

with mamba-ssm's shapes, B/C always grouped: u, delta (b, d, L); A (d, n); B, C (b, g, n, L);
D, delta_bias (d,); y (b, d, L). Only the batch b is dynamic in an export; d, n, g and L are fixed
by the model and its input size.

- ``loop`` (the reference recurrence): one ONNX ``Loop`` (or ``Scan``, ``recurrence="scan"``)
  over time whose per-step result is a *scan output*, so each step writes one (b, d) slice and
  nothing is rewritten. Every shape is read at run time, so the graph is the same for every input
  size (it never unrolls). A step is 7 element-wise ops on the state h (b, n, g, d/g) (decay,
  drive, state update, read-out) plus the slicing of its inputs; memory O(b*d*n + b*d*L).
- ``chunked`` (bounded parallel): the sequence is cut into chunks of K = min(L, chunk) steps.
  Inside a chunk a log-depth, work-efficient (odd-even) associative scan composes the pairs
  (decay, drive) with Slice, Mul, Add, Concat and Reshape only: 2*ceil(log2 K) dependent steps
  instead of K. Chunks run one after another as a ``Loop`` carrying the state h (b, n, d) into the
  first element of the next chunk (drive[0] += decay[0] * h). Sequential depth:
  ceil(L/K) * 2*ceil(log2 K); with L <= K a single chunk and no recurrence op at all. Every
  multiplied decay lies in (0, 1], so no exponent is positive and nothing overflows. Memory: the
  chunk's decay and drive plus the recursion's halves, about 6 live (K, b, n, d) fp32 tensors,
  i.e. ~24*B*D*N*K bytes, plus the (b, d, L) inputs and output, whatever L is.
- ``plugin``: the node itself, op_type ``SelectiveScan`` in domain ``ai.onnx.contrib`` with
  ``plugin_namespace``/``plugin_version`` (what a TensorRT plugin creator is looked up by) and the
  real parameter ``delta_softplus``, plus a model-local FunctionProto of the same name whose body is
  the ``loop`` form with dynamic shapes. Runtimes without the plugin run the function body; ONNX
  Runtime runs a registered onnxruntime-extensions Python op of that name instead.

This module builds ONNX only (onnx + numpy), so it can be used from the exporter, the engine
builder and tests without torch.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import onnx
from onnx import TensorProto, helper

DOMAIN = "ai.onnx.contrib"
OP_TYPE = "SelectiveScan"
PLUGIN_NAMESPACE = "m2s2l"
PLUGIN_VERSION = "1"
SCAN_FORMS = ("loop", "chunked", "plugin")
INPUTS = ("u", "delta", "A", "B", "C", "D", "delta_bias")
DEFAULT_CHUNK = 256
RECURRENCES = ("loop", "scan")
DEFAULT_RECURRENCE = "loop"


class GraphBuilder:
    """Appends ONNX nodes with names unique under ``prefix``; children share the counter.

    Small on purpose: ``op`` returns the output name(s), ``const`` makes an int64/float Constant
    node (function bodies may not hold initializers, so constants are nodes everywhere).
    """

    def __init__(self, prefix: str, counter=None):
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self._counter = counter if counter is not None else itertools.count()

    def fresh(self, hint: str) -> str:
        return f"{self.prefix}{hint}_{next(self._counter)}"

    def child(self) -> "GraphBuilder":
        return GraphBuilder(self.prefix, self._counter)

    def op(self, op_type: str, inputs, n_out: int = 1, outputs=None, **attrs):
        outputs = list(outputs) if outputs is not None else [self.fresh(op_type) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outputs, name=self.fresh(op_type + "_node"),
                                           **attrs))
        return outputs[0] if len(outputs) == 1 else outputs

    def const(self, values, dtype=np.int64) -> str:
        return self.op("Constant", [], value=helper.make_tensor(
            self.fresh("const"), helper.np_dtype_to_tensor_dtype(np.dtype(dtype)),
            np.shape(values), np.asarray(values, dtype=dtype).flatten().tolist()))


# -- shared pieces --------------------------------------------------------------------------------
def _softplus(gb: GraphBuilder, x: str, softplus) -> str:
    """softplus(x) when ``softplus`` is True; ``"attr"`` reads the function attribute delta_softplus."""
    if softplus is True:
        return gb.op("Softplus", [x])
    if softplus is False:
        return x
    flag = gb.op("Constant", [])
    gb.nodes[-1].attribute.append(helper.make_attribute_ref("value_int", onnx.AttributeProto.INT,
                                                            ref_attr_name="delta_softplus"))
    cond = gb.op("Cast", [flag], to=TensorProto.BOOL)
    then_out, else_out = gb.fresh("softplus_then"), gb.fresh("softplus_else")
    then_g = helper.make_graph([helper.make_node("Softplus", [x], [then_out])], gb.fresh("then"), [],
                               [helper.make_tensor_value_info(then_out, TensorProto.FLOAT, None)])
    else_g = helper.make_graph([helper.make_node("Identity", [x], [else_out])], gb.fresh("else"), [],
                               [helper.make_tensor_value_info(else_out, TensorProto.FLOAT, None)])
    return gb.op("If", [cond], then_branch=then_g, else_branch=else_g)


def _prologue(gb: GraphBuilder, ins, softplus) -> dict:
    """Time-major, group-split views of the inputs (nothing of size L*b*d*n yet).

    Layout: the state is (b, n, g, d/g), so exp(delta*A) broadcasts over whole contiguous rows
    (ORT's element-wise kernels are slow when the innermost axis is broadcast, as it would be
    with n last). Returns dt5, du5 (L, b, 1, g, d/g), A5 (n, g, d/g), BT, CT (L, b, n, g, 1) and
    the state shape. Shapes come from Shape ops, so the same nodes serve every size.
    """
    u, delta, A, B, C, D, bias = ins
    dt = gb.op("Add", [delta, gb.op("Unsqueeze", [bias, gb.const([-1])])])
    dt = _softplus(gb, dt, softplus)
    dtT = gb.op("Transpose", [dt], perm=[2, 0, 1])
    duT = gb.op("Mul", [dtT, gb.op("Transpose", [u], perm=[2, 0, 1])])
    shape_u, shape_b = gb.op("Shape", [u]), gb.op("Shape", [B])
    d = gb.op("Slice", [shape_u, gb.const([1]), gb.const([2])])
    g = gb.op("Slice", [shape_b, gb.const([1]), gb.const([2])])
    n = gb.op("Slice", [shape_b, gb.const([2]), gb.const([3])])
    dg = gb.op("Div", [d, g])
    split5 = gb.op("Concat", [gb.const([0, 0, 1]), g, dg], axis=0)
    dt5 = gb.op("Reshape", [dtT, split5])
    du5 = gb.op("Reshape", [duT, split5])
    A5 = gb.op("Reshape", [gb.op("Transpose", [A], perm=[1, 0]), gb.op("Concat", [n, g, dg], axis=0)])
    axis4 = gb.const([4])
    BT = gb.op("Unsqueeze", [gb.op("Transpose", [B], perm=[3, 0, 2, 1]), axis4])
    CT = gb.op("Unsqueeze", [gb.op("Transpose", [C], perm=[3, 0, 2, 1]), axis4])
    batch = gb.op("Slice", [shape_u, gb.const([0]), gb.const([1])])
    state_shape = gb.op("Concat", [batch, n, g, dg], axis=0)
    return dict(dt5=dt5, du5=du5, A5=A5, BT=BT, CT=CT, state_shape=state_shape)


def _epilogue(gb: GraphBuilder, ys: str, ins, out: str) -> str:
    """ys (L, b, g, d/g) -> y (b, d, L) + D * u, written to ``out``."""
    u, D = ins[0], ins[5]
    y = gb.op("Transpose", [gb.op("Reshape", [ys, gb.const([0, 0, -1])])], perm=[1, 2, 0])
    skip = gb.op("Mul", [u, gb.op("Unsqueeze", [D, gb.const([-1])])])
    return gb.op("Add", [y, skip], outputs=[out])


def _zeros(gb: GraphBuilder, shape: str) -> str:
    return gb.op("ConstantOfShape", [shape], value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0]))


def _vi(name: str) -> onnx.ValueInfoProto:
    """A subgraph input/output with its type only: shapes are left to inference."""
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, None)


def _recurrence(gb: GraphBuilder, body_fn, state0: str, sequences: list[str], kind: str):
    """Run ``body_fn(body_builder, h, *slices) -> (h_next, y)`` over axis 0 of ``sequences``.

    kind "scan": an ONNX Scan (its runtime slices the inputs); "loop": a Loop with trip count
    = len(sequences[0]) and Gather per step. Either way y is a scan output stacked on axis 0 and
    the final state is discarded. Returns the stacked y.
    """
    body = gb.child()
    h_in = body.fresh("h_in")
    if kind == "scan":
        slices = [body.fresh("slice_in") for _ in sequences]
        h_next, y = body_fn(body, h_in, *slices)
        inputs = [_vi(h_in)] + [_vi(s) for s in slices]
    elif kind == "loop":
        it, cond_in = body.fresh("iter"), body.fresh("cond_in")
        slices = [body.op("Gather", [s, it], axis=0) for s in sequences]
        h_next, y = body_fn(body, h_in, *slices)
        cond_out = body.op("Identity", [cond_in])
        inputs = [helper.make_tensor_value_info(it, TensorProto.INT64, []),
                  helper.make_tensor_value_info(cond_in, TensorProto.BOOL, []), _vi(h_in)]
    else:
        raise ValueError(f"unknown recurrence {kind!r} (choose from {', '.join(RECURRENCES)})")
    outputs = [_vi(h_next), _vi(y)]
    if kind == "loop":
        outputs.insert(0, helper.make_tensor_value_info(cond_out, TensorProto.BOOL, []))
    graph = helper.make_graph(body.nodes, gb.fresh(f"{kind}_body"), inputs, outputs)
    if kind == "scan":
        _, ys = gb.op("Scan", [state0, *sequences], n_out=2, body=graph, num_scan_inputs=len(sequences))
    else:
        trips = gb.op("Gather", [gb.op("Shape", [sequences[0]]), gb.const(0)], axis=0)
        _, ys = gb.op("Loop", [trips, "", state0], n_out=2, body=graph)
    return ys


# -- loop -----------------------------------------------------------------------------------------
def emit_loop(gb: GraphBuilder, ins, out: str, softplus=True, recurrence: str = DEFAULT_RECURRENCE) -> str:
    """The recurrent form, one time step per iteration on (b, n, g, d/g) states.

    Each step forms its own decay exp(delta[t]*A) and drive delta[t]*u[t]*B[t], so nothing of size
    L*b*d*n exists (measured in ORT: as fast as precomputing both for all steps, which costs
    8*B*D*N*L bytes): h = decay*h + drive; y[t] = sum_n C[t]*h is the step's scan output.
    """
    p = _prologue(gb, ins, softplus)
    over_n, A5 = gb.const([-3]), p["A5"]

    def step(body, h, dt, du, b_t, c_t):
        decay = body.op("Exp", [body.op("Mul", [dt, A5])])
        h_next = body.op("Add", [body.op("Mul", [decay, h]), body.op("Mul", [du, b_t])])
        y = body.op("ReduceSum", [body.op("Mul", [h_next, c_t]), over_n], keepdims=0)
        return h_next, y

    ys = _recurrence(gb, step, _zeros(gb, p["state_shape"]), [p["dt5"], p["du5"], p["BT"], p["CT"]], recurrence)
    return _epilogue(gb, ys, ins, out)


# -- chunked --------------------------------------------------------------------------------------
def _slice0(gb: GraphBuilder, x: str, start: int, end: int, step: int = 1) -> str:
    """x[start:end:step] along axis 0 (static bounds)."""
    args = [x, gb.const([start]), gb.const([end]), gb.const([0])]
    return gb.op("Slice", args + ([gb.const([step])] if step != 1 else []))


def odd_even_scan(gb: GraphBuilder, a: str, b: str, length: int) -> str:
    """All prefixes of h[t] = a[t]*h[t-1] + b[t] (h[-1] = 0) along axis 0, in log depth, O(L) work.

    The pairs (2i, 2i+1) are composed into single elements (a_odd*a_even, a_odd*b_even + b_odd);
    the half-length problem, solved recursively, gives the states at odd positions; each even
    position is one step on from the odd state before it; the two are interleaved. Depth
    2*ceil(log2 L) element-wise steps; about 2L compositions in all, where Hillis-Steele doubling
    needs L*log2(L) (measured in ORT on CPU: 3-4x slower than this at L = 1024). All decays
    multiplied are products of values in (0, 1]: no positive exponent, no overflow.
    """
    if length == 1:
        return b
    pairs, n_even = length // 2, (length + 1) // 2
    a_even, a_odd = _slice0(gb, a, 0, length, 2), _slice0(gb, a, 1, length, 2)
    b_even, b_odd = _slice0(gb, b, 0, length, 2), _slice0(gb, b, 1, length, 2)
    a_even_p = a_even if n_even == pairs else _slice0(gb, a_even, 0, pairs)
    b_even_p = b_even if n_even == pairs else _slice0(gb, b_even, 0, pairs)
    a_pair = gb.op("Mul", [a_odd, a_even_p]) if pairs > 1 else None
    b_pair = gb.op("Add", [gb.op("Mul", [a_odd, b_even_p]), b_odd])
    h_odd = odd_even_scan(gb, a_pair, b_pair, pairs)                   # states at 1, 3, 5, ...
    h_even = _slice0(gb, b_even, 0, 1)                                 # state 0 = b[0]
    if n_even > 1:                                                     # states 2, 4, ...: one step on
        h_more = gb.op("Add", [gb.op("Mul", [_slice0(gb, a_even, 1, n_even), _slice0(gb, h_odd, 0, n_even - 1)]),
                               _slice0(gb, b_even, 1, n_even)])
        h_even = gb.op("Concat", [h_even, h_more], axis=0)
    h_even_p = h_even if n_even == pairs else _slice0(gb, h_even, 0, pairs)
    one = gb.const([1])
    both = gb.op("Concat", [gb.op("Unsqueeze", [h_even_p, one]), gb.op("Unsqueeze", [h_odd, one])], axis=1)
    shape = gb.op("Concat", [gb.const([2 * pairs]), gb.op("Shape", [h_odd], start=1)], axis=0)
    h = gb.op("Reshape", [both, shape])
    if n_even != pairs:                                                # odd length: the last state
        h = gb.op("Concat", [h, _slice0(gb, h_even, pairs, n_even)], axis=0)
    return h


def chunked_steps(length: int, chunk: int = DEFAULT_CHUNK) -> int:
    """Dependent element-wise steps of the chunked form: chunks x 2*ceil(log2 K)."""
    k = min(length, chunk)
    return math.ceil(length / k) * (2 * math.ceil(math.log2(k)) if k > 1 else 1)


def emit_chunked(gb: GraphBuilder, ins, out: str, length: int, softplus=True, chunk: int = DEFAULT_CHUNK,
                 recurrence: str = DEFAULT_RECURRENCE) -> str:
    """The bounded parallel form (see the module docstring); ``length`` is the static L."""
    if chunk < 1 or length < 1:
        raise ValueError(f"chunk and length must be >= 1, got {chunk}, {length}")
    p = _prologue(gb, ins, softplus)
    reduce_n, A5 = gb.const([-3]), p["A5"]
    k = min(length, chunk)

    def chunk_states(g, dt, du, b_t, h_in=None):
        decay = g.op("Exp", [g.op("Mul", [dt, A5])])                   # (K, b, n, g, d/g)
        drive = g.op("Mul", [du, b_t])
        if h_in is not None:                                           # carry in: b[0] += a[0] * h_in
            first = g.op("Add", [_slice0(g, drive, 0, 1),
                                 g.op("Mul", [_slice0(g, decay, 0, 1), g.op("Unsqueeze", [h_in, g.const([0])])])])
            drive = g.op("Concat", [first, _slice0(g, drive, 1, k)], axis=0)
        return odd_even_scan(g, decay, drive, k)

    if k == length:                                                    # one chunk: no recurrence op
        states = chunk_states(gb, p["dt5"], p["du5"], p["BT"])
        ys = gb.op("ReduceSum", [gb.op("Mul", [states, p["CT"]]), reduce_n], keepdims=0)
        return _epilogue(gb, ys, ins, out)

    n_chunks = math.ceil(length / k)
    padded = n_chunks * k
    # Pad time with delta = 0 (decay exp(0) = 1, drive 0: the identity step), then view as chunks.
    pads = gb.const([0] * 5 + [padded - length] + [0] * 4)
    chunked = []
    for name in ("dt5", "du5", "BT", "CT"):
        x = gb.op("Pad", [p[name], pads]) if padded != length else p[name]
        tail = gb.op("Shape", [x], start=1)
        chunked.append(gb.op("Reshape", [x, gb.op("Concat", [gb.const([n_chunks, k]), tail], axis=0)]))

    def step(body, h, dt, du, b_t, c_t):
        states = chunk_states(body, dt, du, b_t, h)
        y = body.op("ReduceSum", [body.op("Mul", [states, c_t]), reduce_n], keepdims=0)
        return body.op("Gather", [states, body.const(k - 1)], axis=0), y

    ys = _recurrence(gb, step, _zeros(gb, p["state_shape"]), chunked, recurrence)
    ys = gb.op("Reshape", [ys, gb.op("Concat", [gb.const([padded]), gb.op("Shape", [ys], start=2)], axis=0)])
    if padded != length:
        ys = _slice0(gb, ys, 0, length)
    return _epilogue(gb, ys, ins, out)


# -- plugin ---------------------------------------------------------------------------------------
def plugin_function(opset: int, recurrence: str = DEFAULT_RECURRENCE) -> onnx.FunctionProto:
    """The FunctionProto ``ai.onnx.contrib::SelectiveScan``: the loop form with dynamic shapes.

    Declares the node's attributes; the body honours ``delta_softplus`` through an If on the
    attribute's value. ``plugin_namespace``/``plugin_version`` are for plugin lookup only.
    """
    gb = GraphBuilder("")
    emit_loop(gb, list(INPUTS), "y", softplus="attr", recurrence=recurrence)
    return helper.make_function(
        DOMAIN, OP_TYPE, list(INPUTS), ["y"], gb.nodes,
        opset_imports=[helper.make_opsetid("", opset)],
        attributes=["delta_softplus", "plugin_namespace", "plugin_version"])


def plugin_node(ins, out: str, name: str, delta_softplus: bool = True) -> onnx.NodeProto:
    return helper.make_node(OP_TYPE, list(ins), [out], name=name, domain=DOMAIN,
                            plugin_namespace=PLUGIN_NAMESPACE, plugin_version=PLUGIN_VERSION,
                            delta_softplus=int(delta_softplus))


# -- rewriting an exported model ------------------------------------------------------------------
def _int_attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return a.i
    return default


def rewrite_scans(model: onnx.ModelProto, form: str, chunk: int = DEFAULT_CHUNK,
                  recurrence: str = DEFAULT_RECURRENCE) -> int:
    """Replace every intermediate SelectiveScan node (attrs delta_softplus, length) in place.

    loop/chunked: the node becomes its expansion at the same position (topological order holds);
    plugin: the node keeps its place with plugin attributes, and the function is added once.
    Returns the number of scan sites rewritten.
    """
    if form not in SCAN_FORMS:
        raise ValueError(f"unknown scan form {form!r} (choose from {', '.join(SCAN_FORMS)})")
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    graph = model.graph
    new_nodes, sites, scan_outputs = [], 0, set()
    for node in graph.node:
        if not (node.op_type == OP_TYPE and node.domain == DOMAIN):
            new_nodes.append(node)
            continue
        sites += 1
        scan_outputs.add(node.output[0])
        softplus = bool(_int_attr(node, "delta_softplus", 0))
        length = _int_attr(node, "length")
        prefix = (node.name or f"SelectiveScan{sites}") + "/"
        if form == "plugin":
            new_nodes.append(plugin_node(node.input, node.output[0], node.name or prefix[:-1], softplus))
            continue
        gb = GraphBuilder(prefix)
        if form == "loop":
            emit_loop(gb, list(node.input), node.output[0], softplus, recurrence)
        else:
            if length is None:
                raise ValueError(f"scan node {node.name} has no static length: cannot build the chunked form")
            emit_chunked(gb, list(node.input), node.output[0], length, softplus, chunk, recurrence)
        new_nodes.extend(gb.nodes)
    graph.ClearField("node")
    graph.node.extend(new_nodes)
    # Exporters may have guessed the scan outputs' shapes (PyTorch's TorchScript exporter gives all
    # of them one shared symbolic dim, which misleads ORT's buffer reuse): let inference redo them.
    kept = [v for v in graph.value_info if v.name not in scan_outputs]
    graph.ClearField("value_info")
    graph.value_info.extend(kept)
    keep = [o for o in model.opset_import if o.domain != DOMAIN]
    model.ClearField("opset_import")
    model.opset_import.extend(keep)
    if form == "plugin" and sites:
        model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
        model.functions.append(plugin_function(opset, recurrence))
    return sites


def count_nodes(model: onnx.ModelProto) -> int:
    """All nodes, those inside subgraphs (Scan/Loop/If bodies) and functions included."""
    def in_graph(g):
        total = 0
        for n in g.node:
            total += 1
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    total += in_graph(a.g)
        return total
    return in_graph(model.graph) + sum(in_graph(helper.make_graph(f.node, "f", [], [])) for f in model.functions)


# -- one scan as a model (tests, benchmarks, trip-count checks) -----------------------------------
def standalone_model(form: str, dim: int, state: int, length: int, groups: int = 1, opset: int = 17,
                     chunk: int = DEFAULT_CHUNK, recurrence: str = DEFAULT_RECURRENCE) -> onnx.ModelProto:
    """A model with the 7 scan inputs (batch dynamic) and output ``y``, in the given form."""
    shapes = {"u": ["batch", dim, length], "delta": ["batch", dim, length], "A": [dim, state],
              "B": ["batch", groups, state, length], "C": ["batch", groups, state, length],
              "D": [dim], "delta_bias": [dim]}
    node = helper.make_node(OP_TYPE, list(INPUTS), ["y"], name="scan", domain=DOMAIN, delta_softplus=1,
                            length=length)
    graph = helper.make_graph([node], "selective_scan",
                              [helper.make_tensor_value_info(k, TensorProto.FLOAT, v) for k, v in shapes.items()],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", dim, length])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                    helper.make_opsetid(DOMAIN, 1)])
    rewrite_scans(model, form, chunk=chunk, recurrence=recurrence)
    return model
