"""Rewrite an exported ONNX graph into fewer, fused nodes with the same arithmetic.

tf2onnx writes the mn04 trunk as ~400 small nodes, and at 1 thread onnxruntime spends
much of a window on per-node overhead. :func:`optimize` rewrites what it can prove
equal, on any graph the project exports (one or many inputs and outputs, a streaming
model's state inputs included):

* ``Pad`` (constant mode, value 0, spatial axes only) feeding a ``Conv`` -> the
  Conv's own ``pads``;
* per-channel ``Mul`` / ``Add`` by a constant right after a ``Conv`` whose output has
  no other consumer (a BatchNorm left unfolded, e.g. after a depthwise Conv) -> the
  Conv's weights and bias;
* ``x * clip(x + 3, 0, 6) / 6`` (Keras ``hard_silu``, 4 nodes) -> ``HardSwish``
  (opset >= 14);
* the squeeze-excitation tail tf2onnx writes for Keras ``Dense`` on a pooled map
  (Reshape / MatMul / Shape arithmetic / Reshape / Add, twice, then a multiply between
  two Transposes) -> two 1x1 ``Conv`` on the pooled map and one broadcast ``Mul``;
* ``Transpose`` followed by ``Transpose`` -> one (or none, when they cancel);
* nodes whose outputs nobody reads (the left-over shape arithmetic) -> removed.

Every rule checks its preconditions (constant operands, shapes from ONNX shape
inference, single consumers, nothing a graph output depends on by name) and leaves
the graph alone otherwise. Floating-point results can differ in the last bits
(weights are multiplied once instead of per run); tests hold them to 1e-5.
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np

logger = logging.getLogger(__name__)

_UNARY_ACTIVATIONS = {"Relu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "LeakyRelu",
                      "Clip", "Elu", "Selu", "Softplus"}


class _Graph:
    """Producer / consumer maps and constant lookup over a ``GraphProto`` (rebuilt per pass)."""

    def __init__(self, graph):
        from onnx import numpy_helper

        self.graph = graph
        self.consts: dict[str, np.ndarray] = {}
        for init in graph.initializer:
            self.consts[init.name] = numpy_helper.to_array(init)
        for node in graph.node:
            if node.op_type == "Constant" and len(node.output) == 1:
                value = _constant_value(node)
                if value is not None:
                    self.consts[node.output[0]] = value
        self.producer = {}
        self.consumers: dict[str, list] = {}
        for node in graph.node:
            for out in node.output:
                if out:
                    self.producer[out] = node
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(node)
        self.outputs = {o.name for o in graph.output}
        # names read inside subgraphs (If / Loop / Scan bodies) count as used, always
        self.pinned = set(self.outputs)
        for node in graph.node:
            for attr in node.attribute:
                for sub in list(attr.g.node if attr.HasField("g") else []) + \
                        [n for g in attr.graphs for n in g.node]:
                    self.pinned.update(i for i in sub.input if i)

    def const(self, name: str) -> np.ndarray | None:
        return self.consts.get(name)

    def only_consumer(self, name: str):
        """The one node reading ``name`` when nothing else (nor a graph output) does."""
        users = self.consumers.get(name, [])
        if len(users) != 1 or name in self.pinned:
            return None
        return users[0]

    def made_by(self, name: str, op_type: str):
        node = self.producer.get(name)
        return node if node is not None and node.op_type == op_type else None


def _constant_value(node) -> np.ndarray | None:
    from onnx import numpy_helper

    for attr in node.attribute:
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
    return None


def _attr(node, name: str, default=None):
    from onnx import helper

    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


def _set_attr(node, name: str, value) -> None:
    from onnx import helper

    for i, attr in enumerate(node.attribute):
        if attr.name == name:
            del node.attribute[i]
            break
    node.attribute.append(helper.make_attribute(name, value))


class _Names:
    """Fresh tensor names that collide with nothing in the model."""

    def __init__(self, graph):
        self.used = {i.name for i in graph.initializer} | {i.name for i in graph.input}
        for node in graph.node:
            self.used.update(node.input)
            self.used.update(node.output)
            self.used.add(node.name)
        self.count = 0

    def new(self, stem: str) -> str:
        while True:
            self.count += 1
            name = f"opt/{stem}_{self.count}"
            if name not in self.used:
                self.used.add(name)
                return name


def _add_initializer(graph, names: _Names, stem: str, array: np.ndarray) -> str:
    from onnx import numpy_helper

    name = names.new(stem)
    graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
    return name


def _shapes(model) -> dict[str, list]:
    """Inferred shapes: name -> list of dims (int, or None when not a known number)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as exc:  # a graph shape inference cannot read: rules needing shapes skip
        logger.debug("shape inference failed (%s)", exc)
        inferred = model
    shapes: dict[str, list] = {}
    graph = inferred.graph
    for info in list(graph.input) + list(graph.value_info) + list(graph.output):
        t = info.type.tensor_type
        if t.HasField("shape"):
            shapes[info.name] = [d.dim_value if d.HasField("dim_value") else None
                                 for d in t.shape.dim]
    from onnx import numpy_helper
    for init in graph.initializer:
        shapes[init.name] = list(numpy_helper.to_array(init).shape)
    return shapes


def _opset(model) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return 0


# --- rules -------------------------------------------------------------------------------
# Each rule takes (model, graph helper, shapes, names) and returns how many rewrites it made.
# Rules only add nodes or rewire; what is left unused is removed by _prune.

def _fold_pad_into_conv(model, g: _Graph, shapes, names) -> int:
    count = 0
    for pad in list(g.graph.node):
        if pad.op_type != "Pad" or len(pad.input) < 2:
            continue
        if _attr(pad, "mode", b"constant") not in (b"constant", "constant"):
            continue
        if len(pad.input) > 3 and pad.input[3]:  # explicit axes: not handled
            continue
        pads = g.const(pad.input[1])
        if pads is None or pads.ndim != 1 or pads.size % 2:
            continue
        if len(pad.input) > 2 and pad.input[2]:
            value = g.const(pad.input[2])
            if value is None or value.size != 1 or float(value.reshape(-1)[0]) != 0.0:
                continue
        conv = g.only_consumer(pad.output[0])
        if conv is None or conv.op_type != "Conv" or conv.input[0] != pad.output[0]:
            continue
        if _attr(conv, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            continue
        rank = pads.size // 2
        pads = pads.astype(np.int64)
        if rank < 3 or np.any(pads < 0) or pads[0] or pads[1] or pads[rank] or pads[rank + 1]:
            continue
        spatial = rank - 2
        old = list(_attr(conv, "pads", [0] * (2 * spatial)))
        if len(old) != 2 * spatial:
            continue
        begins = [old[i] + int(pads[2 + i]) for i in range(spatial)]
        ends = [old[spatial + i] + int(pads[rank + 2 + i]) for i in range(spatial)]
        _set_attr(conv, "pads", begins + ends)
        conv.input[0] = pad.input[0]
        count += 1
    return count


def _per_channel(c: np.ndarray, channels: int, rank: int) -> np.ndarray | None:
    """``c`` as a ``[channels]`` vector when it broadcasts per output channel of a
    rank-``rank`` Conv output without changing its shape; otherwise None."""
    if c.ndim > rank:
        return None
    shape = (1,) * (rank - c.ndim) + tuple(c.shape)
    if shape[0] != 1 or any(d != 1 for d in shape[2:]) or shape[1] not in (1, channels):
        return None
    return np.broadcast_to(c.reshape(-1), (channels,)).astype(np.float64)


def _fold_affine_into_conv(model, g: _Graph, shapes, names) -> int:
    count = 0
    for conv in list(g.graph.node):
        if conv.op_type != "Conv" or not conv.output[0]:
            continue
        w = g.const(conv.input[1])
        b = g.const(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else None
        if w is None or w.dtype != np.float32 or (len(conv.input) > 2 and conv.input[2]
                                                   and b is None):
            continue
        nxt = g.only_consumer(conv.output[0])
        if nxt is None or nxt.op_type not in ("Mul", "Add") or len(nxt.input) != 2:
            continue
        other = nxt.input[1] if nxt.input[0] == conv.output[0] else nxt.input[0]
        if other == conv.output[0]:
            continue
        c = g.const(other)
        if c is None or c.dtype != np.float32:
            continue
        vec = _per_channel(c, w.shape[0], w.ndim)
        if vec is None:
            continue
        bias = np.zeros(w.shape[0]) if b is None else b.astype(np.float64)
        if nxt.op_type == "Mul":
            w = w.astype(np.float64) * vec.reshape((-1,) + (1,) * (w.ndim - 1))
            conv.input[1] = _add_initializer(g.graph, names, "conv_w", w.astype(np.float32))
            bias = bias * vec
        else:
            bias = bias + vec
        bias_name = _add_initializer(g.graph, names, "conv_b", bias.astype(np.float32))
        if len(conv.input) > 2:
            conv.input[2] = bias_name
        else:
            conv.input.append(bias_name)
        conv.output[0] = nxt.output[0]
        nxt.output[0] = names.new("dead")  # the Mul/Add is now unused: _prune drops it
        del nxt.input[:]
        count += 1
    return count


def _const_close(g: _Graph, name: str, value: float, rank: int | None) -> bool:
    """``name`` is a constant equal to ``value`` everywhere that cannot change a
    rank-``rank`` tensor's shape when broadcast against it."""
    c = g.const(name)
    if c is None or c.size != 1:
        return False
    if c.ndim and (rank is None or c.ndim > rank):
        return False
    return bool(np.isclose(float(c.reshape(-1)[0]), value, rtol=1e-6, atol=0.0))


def _hard_swish(model, g: _Graph, shapes, names) -> int:
    """``x * (clip(x + 3, 0, 6) * (1/6))`` (any operand order, or ``/ 6``) -> HardSwish(x)."""
    from onnx import helper

    if _opset(model) < 14:
        return 0
    count = 0
    for mul in list(g.graph.node):
        if mul.op_type != "Mul" or len(mul.input) != 2:
            continue
        for x, t in ((mul.input[0], mul.input[1]), (mul.input[1], mul.input[0])):
            rank = len(shapes[x]) if x in shapes else None
            scale = g.producer.get(t)
            if scale is None or scale.op_type not in ("Mul", "Div"):
                continue
            if scale.op_type == "Mul":
                pairs = [(scale.input[0], scale.input[1]), (scale.input[1], scale.input[0])]
                pairs = [(a, k) for a, k in pairs if _const_close(g, k, 1.0 / 6.0, rank)]
            else:
                pairs = [(scale.input[0], scale.input[1])] \
                    if _const_close(g, scale.input[1], 6.0, rank) else []
            if not pairs:
                continue
            clip = g.made_by(pairs[0][0], "Clip")
            if clip is None:
                continue
            if len(clip.input) == 3:
                lo_ok = _const_close(g, clip.input[1], 0.0, rank) if clip.input[1] else False
                hi_ok = _const_close(g, clip.input[2], 6.0, rank) if clip.input[2] else False
            else:  # opset < 11: min/max attributes
                lo_ok = float(_attr(clip, "min", -np.inf)) == 0.0
                hi_ok = float(_attr(clip, "max", np.inf)) == 6.0
            if not (lo_ok and hi_ok):
                continue
            add = g.made_by(clip.input[0], "Add")
            if add is None or x not in add.input:
                continue
            three = add.input[1] if add.input[0] == x else add.input[0]
            if three == x or not _const_close(g, three, 3.0, rank):
                continue
            new = helper.make_node("HardSwish", [x], [mul.output[0]],
                                   name=names.new("hardswish"))
            mul.output[0] = names.new("dead")
            del mul.input[:]
            _insert_before(g.graph, mul, new)
            count += 1
            break
    return count


def _squeeze_excitation(model, g: _Graph, shapes, names) -> int:
    """The SE tail of Keras Dense layers on a pooled NCHW map, as tf2onnx writes it::

        p = GlobalAveragePool(x)                        # [N, C, 1, 1]
        h = act1(Reshape(MatMul(Reshape(p, [-1, C]), W1), ...) + b1)   # [N, 1, 1, C1]
        s = act2(Reshape(MatMul(Reshape(h, [-1, C1]), W2), ...) + b2)  # [N, 1, 1, C]
        y = Transpose(Transpose(x', [0, 2, 3, 1]) * s, [0, 3, 1, 2])

    becomes ``y = x' * act2(Conv1x1(act1(Conv1x1(p, W1, b1)), W2, b2))`` on NCHW.
    """
    from onnx import helper

    count = 0

    def perm(node):
        return list(_attr(node, "perm", []) or [])

    def dense(out_name):
        """(input, W, b, act) of ``act(Reshape(MatMul(Reshape(v,[-1,C]),W),.) + b)`` whose
        output is [?, 1, 1, C1]; None when it does not match."""
        act = g.producer.get(out_name)
        if act is None or act.op_type not in _UNARY_ACTIVATIONS or len(act.input) != 1:
            return None
        add = g.made_by(act.input[0], "Add")
        if add is None or len(add.input) != 2:
            return None
        for r_name, b_name in ((add.input[0], add.input[1]), (add.input[1], add.input[0])):
            b = g.const(b_name)
            r2 = g.made_by(r_name, "Reshape")
            if b is None or r2 is None or b.ndim != 1:
                continue
            if shapes.get(r2.output[0], [])[1:] != [1, 1, b.size] or \
                    len(shapes.get(r2.output[0], [])) != 4:
                continue
            mm = g.made_by(r2.input[0], "MatMul")
            if mm is None:
                continue
            w = g.const(mm.input[1])
            r1 = g.made_by(mm.input[0], "Reshape")
            if w is None or w.ndim != 2 or w.shape[1] != b.size or r1 is None:
                continue
            target = g.const(r1.input[1])
            if target is None or list(target.reshape(-1)) != [-1, w.shape[0]]:
                continue
            return r1.input[0], w, b, act
        return None

    for t_back in list(g.graph.node):
        if t_back.op_type != "Transpose" or perm(t_back) != [0, 3, 1, 2]:
            continue
        mul = g.made_by(t_back.input[0], "Mul")
        if mul is None or len(mul.input) != 2 or g.only_consumer(mul.output[0]) is not t_back:
            continue
        for t_name, s_name in ((mul.input[0], mul.input[1]), (mul.input[1], mul.input[0])):
            t_fwd = g.made_by(t_name, "Transpose")
            if t_fwd is None or perm(t_fwd) != [0, 2, 3, 1]:
                continue
            second = dense(s_name)
            if second is None:
                continue
            h, w2, b2, act2 = second
            first = dense(h)
            if first is None:
                continue
            p, w1, b1, act1 = first
            pool = g.made_by(p, "GlobalAveragePool")
            if pool is None or shapes.get(p, [])[1:] != [w1.shape[0], 1, 1]:
                continue
            if w2.shape[1] != w1.shape[0] or w2.shape[0] != w1.shape[1]:
                continue
            c1 = names.new("se_fc1")
            a1 = names.new("se_act1")
            c2 = names.new("se_fc2")
            gate = names.new("se_gate")
            w1n = _add_initializer(g.graph, names, "se_w1",
                                   w1.T.reshape(w1.shape[1], w1.shape[0], 1, 1))
            b1n = _add_initializer(g.graph, names, "se_b1", b1)
            w2n = _add_initializer(g.graph, names, "se_w2",
                                   w2.T.reshape(w2.shape[1], w2.shape[0], 1, 1))
            b2n = _add_initializer(g.graph, names, "se_b2", b2)
            new = [
                helper.make_node("Conv", [p, w1n, b1n], [c1], name=names.new("se_conv1"),
                                 kernel_shape=[1, 1]),
                _copy_unary(act1, c1, a1, names),
                helper.make_node("Conv", [a1, w2n, b2n], [c2], name=names.new("se_conv2"),
                                 kernel_shape=[1, 1]),
                _copy_unary(act2, c2, gate, names),
                helper.make_node("Mul", [t_fwd.input[0], gate], [t_back.output[0]],
                                 name=names.new("se_scale")),
            ]
            t_back.output[0] = names.new("dead")
            del t_back.input[:]
            for node in new:
                _insert_before(g.graph, t_back, node)
            count += 1
            break
    return count


def _copy_unary(node, src: str, dst: str, names: _Names):
    from onnx import helper

    new = helper.make_node(node.op_type, [src], [dst], name=names.new(node.op_type.lower()))
    new.attribute.extend(node.attribute)
    return new


def _transpose_pairs(model, g: _Graph, shapes, names) -> int:
    """``Transpose(Transpose(x, p), q)`` -> ``Transpose(x, p∘q)`` or ``x`` itself."""
    from onnx import helper

    count = 0
    for second in list(g.graph.node):
        if second.op_type != "Transpose" or not second.input:
            continue
        first = g.made_by(second.input[0], "Transpose")
        if first is None:
            continue
        p, q = _attr(first, "perm"), _attr(second, "perm")
        if p is None or q is None or len(p) != len(q):
            continue
        combined = [list(p)[i] for i in q]
        if combined == list(range(len(combined))):
            if second.output[0] in g.pinned:  # a graph output keeps its name: Identity
                new = helper.make_node("Identity", [first.input[0]], [second.output[0]],
                                       name=names.new("identity"))
                second.output[0] = names.new("dead")
                del second.input[:]
                _insert_before(g.graph, second, new)
            else:
                _rename_uses(g.graph, second.output[0], first.input[0])
                second.output[0] = names.new("dead")
                del second.input[:]
        else:
            second.input[0] = first.input[0]
            _set_attr(second, "perm", combined)
        count += 1
    return count


def _rename_uses(graph, old: str, new: str) -> None:
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new


def _insert_before(graph, anchor, node) -> None:
    nodes = list(graph.node)
    index = next(i for i, n in enumerate(nodes) if n is anchor)
    graph.node.insert(index, node)


def _prune(model) -> int:
    """Drop nodes no graph output depends on, and initializers nothing reads."""
    graph = model.graph
    g = _Graph(graph)
    needed = set(g.pinned)
    keep = []
    for node in reversed(list(graph.node)):
        if any(o in needed for o in node.output if o):
            keep.append(node)
            needed.update(i for i in node.input if i)
    keep.reverse()
    removed = len(graph.node) - len(keep)
    if removed:
        del graph.node[:]
        graph.node.extend(keep)
    used = set(needed)
    inits = [i for i in graph.initializer if i.name in used]
    if len(inits) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(inits)
    produced = {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
    infos = [v for v in graph.value_info if v.name in produced]
    del graph.value_info[:]
    graph.value_info.extend(infos)
    return removed


def _toposort(graph) -> None:
    """Order nodes so each comes after the producers of its inputs (stable otherwise)."""
    producer = {o: i for i, n in enumerate(graph.node) for o in n.output if o}
    nodes = list(graph.node)
    state = [0] * len(nodes)  # 0 new, 1 in progress, 2 placed
    ordered = []
    for root in range(len(nodes)):
        stack = [root]
        while stack:
            i = stack[-1]
            if state[i] == 2:
                stack.pop()
                continue
            state[i] = 1
            deps = [producer[name] for name in nodes[i].input
                    if name in producer and state[producer[name]] == 0]
            if deps:
                stack.extend(reversed(deps))
                continue
            state[i] = 2
            ordered.append(nodes[i])
            stack.pop()
    del graph.node[:]
    graph.node.extend(ordered)


RULES = (_fold_pad_into_conv, _fold_affine_into_conv, _hard_swish, _squeeze_excitation,
         _transpose_pairs)


def optimize(proto, *, rules=RULES, check: bool = True):
    """A rewritten copy of ``proto`` (an ONNX ``ModelProto``) with the same arithmetic.

    Metadata, inputs, outputs and their names are kept. ``rules`` selects the rewrites
    (all by default); ``check`` runs the ONNX checker on the result.
    """
    import onnx

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    stats: Counter = Counter()
    for _ in range(10):
        changed = 0
        for rule in rules:
            shapes = _shapes(model) if rule in (_hard_swish, _squeeze_excitation) else {}
            n = rule(model, _Graph(model.graph), shapes, _Names(model.graph))
            if n:
                stats[rule.__name__.lstrip("_")] += n
                _prune(model)
                _toposort(model.graph)
                changed += n
        if not changed:
            break
    _prune(model)
    if check:
        onnx.checker.check_model(model)
    logger.info("onnx optimize: %d -> %d nodes (%s)", len(proto.graph.node),
                len(model.graph.node), ", ".join(f"{k} {v}" for k, v in sorted(stats.items()))
                or "nothing to rewrite")
    return model
