"""export.onnx_optimize: the rewritten graph computes the same numbers with fewer nodes.

Parity is checked on real audio (the shipped model on real clips, the AudioSet mn04
trunk at 25 frames), and small hand-built graphs pin down what each rule must and
must not fuse.
"""

from __future__ import annotations

from pathlib import Path

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import REPO, SHARED_DATA
from export.onnx_optimize import optimize

SHIPPED = REPO / "detector" / "models" / "default.onnx"
WEIGHTS = Path(__file__).resolve().parents[1] / "export" / "data" / "mn04_as.npz"  # shipped
TOLERANCE = 1e-5


def session(model):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def outputs(model, feed):
    s = session(model)
    return s.run(None, feed)


def max_diff(a, b, feeds, relative=False):
    """Largest output difference; ``relative``: per output, divided by max(1, max |y|)
    (float32 rounding grows with the value: the trunk's AudioSet logits reach ~17)."""
    sa, sb = session(a), session(b)
    worst = 0.0
    for k, name in enumerate(o.name for o in sa.get_outputs()):
        want = [sa.run([name], feed)[0].astype(np.float64) for feed in feeds]
        got = [sb.run([name], feed)[0] for feed in feeds]
        diff = max(float(np.max(np.abs(w - g))) for w, g in zip(want, got))
        scale = max(1.0, max(float(np.max(np.abs(w))) for w in want)) if relative else 1.0
        worst = max(worst, diff / scale)
    return worst


def ops(model):
    return Counter(n.op_type for n in model.graph.node)


def real_clips(n=3):
    us8k = SHARED_DATA / "urbansound8k" / "audio" / "fold1"
    files = sorted(us8k.glob("*.flac"))[:n] if us8k.is_dir() else []
    if len(files) < n:
        pytest.skip(f"real clips not found under {us8k} (see README, 'Data')")
    return files


def real_windows(frames=None, n_clips=3):
    """Normalised model inputs ``[n, frames, 128, 1]`` of real clips, through the
    shipped recipe's front end (windows every 0.25 s)."""
    from export.audio import load_audio
    from export.pretrained import model_frontend

    frontend = model_frontend()
    windows = []
    for path in real_clips(n_clips):
        f = frontend(load_audio(path, 16000))
        w = np.stack([f[s:s + frontend.frames]
                      for s in range(0, len(f) - frontend.frames + 1, 25)])
        windows.append(w[:, :frames] if frames else w)
    return np.concatenate(windows)[..., None]


# --- the shipped model and the mn04 trunk on real audio ---------------------------------

def test_shipped_model_is_the_rewritten_graph_and_stays_equal_on_real_audio():
    """The shipped file was rewritten in place (tf2onnx's 426 nodes -> 169, events of a
    10 min real replay identical, bench/results/model_variants.md); rewriting it again
    changes nothing and keeps the scores on real clips."""
    proto = onnx.load(str(SHIPPED))
    opt = optimize(proto)
    x = real_windows()
    feeds = [{"features": x[i:i + 1]} for i in range(len(x))]
    assert max_diff(proto, opt, feeds) <= TOLERANCE
    shipped = ops(proto)
    assert shipped["Pad"] == 0 and shipped["Clip"] == 0 and shipped["Gather"] == 0
    assert shipped["HardSwish"] > 0 and len(proto.graph.node) < 200
    # metadata, input and output names are the model-file contract
    assert {p.key: p.value for p in opt.metadata_props} == \
        {p.key: p.value for p in proto.metadata_props}
    assert [i.name for i in opt.graph.input] == [i.name for i in proto.graph.input]
    assert [o.name for o in opt.graph.output] == [o.name for o in proto.graph.output]


def test_optimize_is_idempotent_and_batches_still_work():
    proto = onnx.load(str(SHIPPED))
    once = optimize(proto)
    twice = optimize(once)
    assert len(twice.graph.node) == len(once.graph.node)
    x = real_windows(n_clips=1)[:5]
    want = outputs(proto, {"features": x})
    got = outputs(twice, {"features": x})
    for a, b in zip(want, got):
        assert np.max(np.abs(a - b)) <= TOLERANCE


@pytest.fixture(scope="module")
def trunk25(tmp_path_factory):
    pytest.importorskip("tensorflow")
    from export.mn04 import load_weights
    from export.onnx_export import keras_to_onnx
    from export.pretrained import trunk_model

    model = trunk_model(load_weights(WEIGHTS), 25)
    raw = keras_to_onnx(model, "features", ["sequence", "audioset"], optimized=False)
    return model, raw


def test_mn04_trunk_at_25_frames_same_outputs_on_real_audio(trunk25):
    model, raw = trunk25
    opt = optimize(raw)
    x = real_windows(frames=25)
    feeds = [{"features": x[i:i + 1]} for i in range(0, len(x), 3)]
    # the sequence (what the head reads, |y| < 2) within 1e-5; the AudioSet logits
    # (|y| up to ~17, a few float32 ulps apart) within 1e-5 of their scale
    assert max_diff(raw, opt, feeds, relative=True) <= TOLERANCE
    seq = [session(raw).run(["sequence"], f)[0] - session(opt).run(["sequence"], f)[0]
           for f in feeds[:6]]
    assert max(float(np.max(np.abs(d))) for d in seq) <= TOLERANCE
    # and both still match Keras (what the export parity check holds to 1e-4)
    want = model(x[:8], training=False)
    got = outputs(opt, {"features": x[:8]})
    for w, g in zip(want, got):
        assert np.max(np.abs(np.asarray(w) - g)) <= 1e-4
    before, after = ops(raw), ops(opt)
    assert len(opt.graph.node) < 0.5 * len(raw.graph.node)
    assert after["Pad"] == 0 and before["Pad"] > 0           # folded into Conv pads
    assert after["HardSwish"] == before["Clip"] > 0          # one node per hard-swish
    assert after["Clip"] == 0 and after["Gather"] == 0       # SE shape arithmetic gone
    assert after["Transpose"] <= 1 < before["Transpose"]


def test_keras_to_onnx_optimizes_by_default(trunk25):
    from export.onnx_export import keras_to_onnx

    model, raw = trunk25
    proto = keras_to_onnx(model, "features", ["sequence", "audioset"])
    assert len(proto.graph.node) == len(optimize(raw).graph.node) < len(raw.graph.node)


# --- what each rule must and must not fuse (hand-built graphs) -------------------------

def build(nodes, inits, inputs, outputs_, opset=17):
    graph = helper.make_graph(
        nodes, "t",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, []) for n in outputs_],
        [numpy_helper.from_array(np.asarray(v, np.float32 if np.asarray(v).dtype.kind == "f"
                                            else np.int64), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def check_same(model, opt, inputs, seed=0):
    rng = np.random.default_rng(seed)
    feed = {n: rng.standard_normal([d if isinstance(d, int) else 2 for d in s]).astype(np.float32)
            for n, s in inputs}
    assert max_diff(model, opt, [feed]) <= TOLERANCE


RNG = np.random.default_rng(3)
W = RNG.standard_normal((4, 1, 3, 3)).astype(np.float32)
INPUT = [("x", ["N", 4, 6, 5])]


def pad_conv(pads, value=None, mode="constant"):
    inits = {"w": W, "pads": np.array(pads, np.int64)}
    pad_inputs = ["x", "pads"]
    if value is not None:
        inits["v"] = np.array(value, np.float32)
        pad_inputs.append("v")
    nodes = [helper.make_node("Pad", pad_inputs, ["p"], mode=mode),
             helper.make_node("Conv", ["p", "w"], ["y"], group=4)]
    return build(nodes, inits, INPUT, ["y"])


def test_zero_pad_on_spatial_axes_folds_into_conv():
    model = pad_conv([0, 0, 1, 2, 0, 0, 1, 0], value=0.0)
    opt = optimize(model)
    assert ops(opt) == Counter({"Conv": 1})
    conv = opt.graph.node[0]
    assert list(helper.get_attribute_value(next(a for a in conv.attribute
                                                 if a.name == "pads"))) == [1, 2, 1, 0]
    check_same(model, opt, INPUT)


@pytest.mark.parametrize("pads,value,mode", [
    ([0, 0, 1, 1, 0, 0, 1, 1], -1.5, "constant"),   # a non-zero pad value
    ([0, 0, 1, 1, 0, 0, 1, 1], None, "reflect"),    # not zero padding at all
    ([0, 1, 1, 1, 0, 0, 1, 1], 0.0, "constant"),    # pads the channel axis
    ([0, 0, -1, 1, 0, 0, 1, 1], 0.0, "constant"),   # a crop
])
def test_pads_that_are_not_conv_padding_stay(pads, value, mode):
    model = pad_conv(pads, value, mode)
    if pads[1]:  # channel pad: the Conv needs 5 input channels
        model = build([helper.make_node("Pad", ["x", "pads", "v"], ["p"]),
                       helper.make_node("Conv", ["p", "w5"], ["y"])],
                      {"w5": RNG.standard_normal((2, 5, 3, 3)), "pads": np.array(pads),
                       "v": np.array(0.0)}, INPUT, ["y"])
    opt = optimize(model)
    assert ops(opt)["Pad"] == 1
    check_same(model, opt, INPUT)


def test_per_channel_mul_add_fold_into_a_depthwise_conv():
    s = RNG.uniform(0.5, 2, (1, 4, 1, 1))
    b = RNG.standard_normal((1, 4, 1, 1))
    model = build([helper.make_node("Conv", ["x", "w"], ["c"], group=4, pads=[1, 1, 1, 1]),
                   helper.make_node("Mul", ["c", "s"], ["m"]),
                   helper.make_node("Add", ["b", "m"], ["y"])],
                  {"w": W, "s": s, "b": b}, INPUT, ["y"])
    opt = optimize(model)
    assert ops(opt) == Counter({"Conv": 1})
    assert opt.graph.output[0].name == "y"
    check_same(model, opt, INPUT)


@pytest.mark.parametrize("case", ["two_consumers", "per_column", "graph_output", "tensor"])
def test_mul_that_is_not_a_per_channel_scale_of_a_lone_conv_stays(case):
    inits = {"w": W, "s": RNG.uniform(0.5, 2, (1, 4, 1, 1))}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], group=4, pads=[1, 1, 1, 1])]
    outs = ["y"]
    if case == "two_consumers":
        nodes += [helper.make_node("Mul", ["c", "s"], ["y"]),
                  helper.make_node("Relu", ["c"], ["r"])]
        outs.append("r")
    elif case == "per_column":  # broadcasts along the last (time/freq) axis, not channels
        inits["s"] = RNG.uniform(0.5, 2, (5,))
        nodes.append(helper.make_node("Mul", ["c", "s"], ["y"]))
    elif case == "graph_output":  # the Conv output itself is read by the caller
        nodes.append(helper.make_node("Mul", ["c", "s"], ["y"]))
        outs.append("c")
    else:  # a runtime tensor, not a constant
        nodes.append(helper.make_node("Mul", ["c", "x"], ["y"]))
    model = build(nodes, inits, INPUT, outs)
    opt = optimize(model)
    assert ops(opt)["Mul"] == 1
    check_same(model, opt, INPUT)


def hard_swish_graph(three=3.0, six=6.0, sixth=1 / 6, opset=17):
    return build([helper.make_node("Add", ["x", "three"], ["a"]),
                  helper.make_node("Clip", ["a", "zero", "six"], ["c"]),
                  helper.make_node("Mul", ["sixth", "c"], ["d"]),
                  helper.make_node("Mul", ["d", "x"], ["y"])],
                 {"three": np.float32(three), "zero": np.float32(0.0), "six": np.float32(six),
                  "sixth": np.float32(sixth)}, INPUT, ["y"], opset=opset)


def test_hard_swish_becomes_one_node_and_equals_x_relu6_x_plus_3_over_6():
    model = hard_swish_graph()
    opt = optimize(model)
    assert ops(opt) == Counter({"HardSwish": 1})
    x = np.linspace(-8, 8, 4 * 6 * 5 * 2, dtype=np.float32).reshape(2, 4, 6, 5)
    want = x * np.clip(x + 3, 0, 6) / 6
    got = outputs(opt, {"x": x})[0]
    assert np.max(np.abs(got - want)) <= 1e-6
    check_same(model, opt, INPUT)


@pytest.mark.parametrize("kwargs", [dict(three=2.0), dict(six=5.0), dict(sixth=0.2),
                                    dict(opset=13)])
def test_near_hard_swish_is_left_alone(kwargs):
    model = hard_swish_graph(**kwargs)
    opt = optimize(model)
    assert ops(opt)["HardSwish"] == 0 and ops(opt)["Clip"] == 1
    check_same(model, opt, INPUT)


def test_transposes_that_cancel_are_removed_and_others_merged():
    model = build([helper.make_node("Transpose", ["x"], ["t1"], perm=[0, 2, 3, 1]),
                   helper.make_node("Transpose", ["t1"], ["t2"], perm=[0, 3, 1, 2]),
                   helper.make_node("Relu", ["t2"], ["y"]),
                   helper.make_node("Transpose", ["t1"], ["t3"], perm=[0, 2, 1, 3]),
                   helper.make_node("Transpose", ["t3"], ["z"], perm=[3, 1, 2, 0])],
                  {}, INPUT, ["y", "z"])
    opt = optimize(model)
    assert ops(opt) == Counter({"Relu": 1, "Transpose": 1})
    check_same(model, opt, INPUT)


def test_a_model_with_state_inputs_and_outputs_keeps_them():
    """A streaming-style graph: features and a carried state in, scores and new state out."""
    s = RNG.uniform(0.5, 2, (1, 4, 1, 1))
    inputs = [("features", ["N", 4, 6, 5]), ("state_in", ["N", 4, 4, 3])]
    model = build([helper.make_node("Pad", ["features", "pads"], ["p"]),
                   helper.make_node("Conv", ["p", "w"], ["c"], group=4),
                   helper.make_node("Mul", ["c", "s"], ["m"]),
                   helper.make_node("Add", ["m", "state_in"], ["state_out"]),
                   helper.make_node("ReduceMean", ["state_out"], ["scores"], axes=[2, 3],
                                    keepdims=0)],
                  {"w": W, "s": s, "pads": np.array([0, 0, 0, 0, 0, 0, 0, 0])},
                  inputs, ["scores", "state_out"])
    opt = optimize(model)
    assert [i.name for i in opt.graph.input] == ["features", "state_in"]
    assert [o.name for o in opt.graph.output] == ["scores", "state_out"]
    assert ops(opt) == Counter({"Conv": 1, "Add": 1, "ReduceMean": 1})
    check_same(model, opt, inputs)
