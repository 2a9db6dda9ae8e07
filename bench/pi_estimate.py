"""Raspberry Pi estimate: published Pi timings of standard networks, the same networks
timed here, and the daemon's measured CPU scaled by their ratio.

    python bench/pi_estimate.py --runs 200 --rounds 5 [--suites spec keras daemon]

There is no Raspberry Pi here, so the daemon's CPU on one (the target: real time with
>= 20x headroom on a Pi-class core, i.e. <= 50 ms CPU per second of audio) is estimated
from a **published Pi-to-here ratio on the same network and runtime**:

1. ``PUBLISHED`` below: single-thread (or clearly stated thread count) CPU timings on a
   Raspberry Pi 4 / Cortex-A72 (and Pi 5 where they exist) of standard networks, each
   with its source address and the numbers as published.
2. The same networks are timed here on one thread (``--suites``):

   * ``spec``: MobileNet v1 1.0 and MobileNet v2 1.0 at 224x224, written out layer for
     layer as the networks of ncnn's ``benchncnn`` (the Caffe-converted models in its
     ``benchmark/`` folder: convolution + BatchNorm + Scale + ReLU, Split/Eltwise
     residuals, global average pooling, the 1000-way classifier, softmax; the same
     layer and blob counts), then run with **ncnn** (the ``ncnn`` wheel, when it is
     installed: weights from ``DataReaderFromEmpty`` and benchncnn's options, as the
     published numbers were taken) and, as the same graph in ONNX (batch norm folded,
     random weights), with **onnxruntime**;
   * ``keras``: ``keras.applications`` MobileNet, MobileNetV2, MobileNetV3Large and
     MobileNetV3Small (224x224, ``weights=None``: timing does not depend on weight
     values) converted to fp32 TFLite and run with the TensorFlow Lite interpreter
     (XNNPACK delegate, the kernels of the published XNNPACK table) and, through
     tf2onnx, with onnxruntime (needs TensorFlow);
   * ``daemon``: the shipped model, one ``Classifier.predict`` window per call, as the
     daemon opens it (one onnxruntime thread).

   onnxruntime runs with one intra-op thread, sequential execution, ORT_ENABLE_ALL.
   Each timed call records wall time and ``time.process_time`` (CPU of the whole
   process); networks alternate within each of ``--rounds`` rounds so that load from
   other processes hits all alike; the figure used is the **minimum over rounds of the
   median CPU ms per call** (the machine is shared: the minimum of medians is the least
   inflated by other work; the 1-minute load average is recorded per round).
3. ratio = published Pi ms / CPU ms here, for the same network, runtime and threads
   (ncnn, one thread, Cortex-A72: the ``ncnn_class`` scenario, with the ncnn wheel).
   Published numbers with more than one thread only bound the one-thread time
   (``T4 <= T1 <= 4 * T4`` on four cores): a cross-check. No one-thread onnxruntime
   figure on a Pi was found, so for the daemon's runtime (the ``onnxruntime`` scenario)
   the Pi time is ncnn's published A72 time times the published factor by which
   onnxruntime is slower than ncnn on a Pi core, over onnxruntime's time here on the
   same network (no ncnn needed here).
4. The daemon's whole-process CPU per audio second (``bench/results/process_cost_onset.json``,
   or ``--daemon-ms``) times the ratio = the Pi estimate; headroom = 1000 ms / that.

The ratio is applied to the whole process (model, features, Python), not only to the
model: an approximation (see the caveats written with the results). Results:
``bench/results/<name>.json`` and ``<name>.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import REPO, RESULTS, machine, save  # noqa: E402

NCNN_README = "https://github.com/Tencent/ncnn/blob/master/benchmark/README.md"
XNNPACK_README = "https://github.com/google/XNNPACK/blob/master/README.md"
AALLAN_README = "https://github.com/aallan/benchmarking-ml-on-the-edge"

# Numbers exactly as published (ms per inference). "threads" is what the source states.
# "use": "ratio" = single-thread on a Pi-class core with a network timed here -> a ratio;
# "bound" = more threads -> only a range for the one-thread time; "pi5_scale" = a Pi 4
# -> Pi 5 speed-up on one network and runtime; "context" = reported, not used.
PUBLISHED = [
    {"id": "ncnn-rk3399-a72-1t", "use": "ratio", "runtime": "ncnn",
     "device": "Rockchip RK3399, its Cortex-A72 core at 1.8 GHz (the Pi 4's core; "
               "Pi 4 runs it at 1.5 GHz, 1.8 GHz on boards from rev 1.4 and the Pi 400)",
     "core": "Cortex-A72", "clock_ghz": 1.8, "threads": 1,
     "command": "benchncnn 8 1 2 (8 loops, 1 thread, big cores only)",
     "precision": "fp32 network, random weights (benchncnn)",
     "ms": {"mobilenet_v1": 136.94, "mobilenet_v2": 109.01},
     "ms_kind": "avg of 8 loops (min: mobilenet 134.79, mobilenet_v2 106.92)",
     "url": NCNN_README + "#rockchip-rk3399-cortex-a72-18ghz-x-2--cortex-a53-15ghz-x-4",
     "note": "an older ncnn than the wheel timed here (the list has no mobilenet_v3 row); "
             "ncnn's ARM kernels have become faster since, so the ratio is on the "
             "pessimistic side for the Pi"},
    {"id": "ncnn-pi4-4t", "use": "bound", "runtime": "ncnn",
     "device": "Raspberry Pi 4 Model B, BCM2711, Cortex-A72 1.5 GHz x 4",
     "core": "Cortex-A72", "clock_ghz": 1.5, "threads": 4,
     "command": "benchncnn 8 4 0", "precision": "fp32 network, random weights",
     "ms": {"mobilenet_v1": 86.01, "mobilenet_v2": 75.84},
     "ms_kind": "avg of 8 loops", "url": NCNN_README +
     "#raspberry-pi-4-model-b-broadcom-bcm2711b0-cortex-a72-armv8-15ghz-x-4",
     "note": "4 threads: bounds the one-thread time"},
    {"id": "ncnn-pi4-4t-qengineering", "use": "bound", "runtime": "ncnn",
     "device": "Raspberry Pi 4 Model B, BCM2711B0, Cortex-A72 1.5 GHz x 4",
     "core": "Cortex-A72", "clock_ghz": 1.5, "threads": 4,
     "command": "benchncnn, loop_count = 8, num_threads = 4",
     "precision": "fp32 network, random weights",
     "ms": {"mobilenet_v1": 72.08, "mobilenet_v2": 72.62},
     "ms_kind": "avg of 8 loops", "url": "https://github.com/Tencent/ncnn/issues/3485",
     "note": "newer ncnn than the README's Pi 4 run; 4 threads"},
    {"id": "xnnpack-pi4-mt", "use": "bound", "runtime": "tflite-xnnpack",
     "device": "Raspberry Pi 4, BCM2711 (Raspbian Buster, 32-bit build)",
     "core": "Cortex-A72", "clock_ghz": 1.5, "threads": 4,
     "command": "end2end-bench --benchmark_min_time=5, 'multi-threaded' table",
     "precision": "fp32, randomized weights and inputs",
     "ms": {"mobilenet_v1": 75, "mobilenet_v2": 44, "mobilenet_v3_large": 41,
            "mobilenet_v3_small": 14},
     "ms_kind": "as published (Feb 2020)", "url": XNNPACK_README + "#raspberry-pi",
     "note": "multi-threaded (the board's 4 cores): bounds the one-thread time; a 32-bit "
             "build (the 64-bit OS the daemon targets is faster)"},
    {"id": "tf-pi4-pi5-fp32", "use": "pi5_scale", "runtime": "tensorflow",
     "device": "Raspberry Pi 4 vs Raspberry Pi 5 (BCM2712, Cortex-A76 2.4 GHz)",
     "core": "Cortex-A72 -> Cortex-A76", "clock_ghz": None, "threads": "all cores",
     "command": "benchmark_tf.py (TensorFlow, not Lite), SSD MobileNet v2 / v1 COCO 300x300",
     "precision": "fp32 (frozen TensorFlow graph)",
     "ms": {"pi4_ssd_mobilenet_v2": 483.5, "pi5_ssd_mobilenet_v2": 148.9,
            "pi4_ssd_mobilenet_v1": 263.9, "pi5_ssd_mobilenet_v1": 66.2},
     "ms_kind": "mean over runs", "url": AALLAN_README,
     "note": "multi-threaded; the Pi 4 -> Pi 5 speed-up of one core may be smaller"},
    {"id": "tflite-pi4-pi5-int8-4t", "use": "context", "runtime": "tflite",
     "device": "Raspberry Pi 4 vs Raspberry Pi 5", "core": "Cortex-A72 -> Cortex-A76",
     "clock_ghz": None, "threads": 4,
     "command": "benchmark_tf_lite.py (set_num_threads(4)), SSD MobileNet v2 / v1 COCO",
     "precision": "quantized (the script requires quantized models)",
     "ms": {"pi4_ssd_mobilenet_v2": 112.6, "pi5_ssd_mobilenet_v2": 23.5,
            "pi4_ssd_mobilenet_v1": 82.7, "pi5_ssd_mobilenet_v1": 16.9},
     "ms_kind": "mean over runs", "url": AALLAN_README,
     "note": "int8 and 4 threads: not used (the daemon runs fp32 on one thread)"},
    {"id": "ncnn-vs-ort-pi5", "use": "runtime_factor", "runtime": "ncnn vs onnxruntime",
     "device": "Raspberry Pi 5 (CPU only)", "core": "Cortex-A76", "clock_ghz": 2.4,
     "threads": "not stated", "command": "13 COCO detection models, FPS per runtime",
     "precision": "FP32 in both runtimes",
     "ms": {"ncnn_speedup_min_picodet_s": 1.25, "ncnn_speedup_picodet_m": 1.36,
            "ncnn_speedup_picodet_l": 1.33, "ncnn_speedup_median_13_models": 2.09,
            "ncnn_speedup_max_yolox_x": 2.87},
     "ms_kind": "speed-up factors (ncnn FPS / onnxruntime FPS), not ms",
     "url": "https://www.visionanalysis.org/articles/ncnn-fp32-vs-onnx-fp32-rpi5",
     "note": "how much slower onnxruntime is than ncnn on an Arm Pi core; PicoDet "
             "(depthwise-separable, the family closest to MobileNets) 1.25-1.36x"},
    {"id": "ncnn-x86-1t", "use": "x86_check", "runtime": "ncnn",
     "device": "AMD Ryzen Threadripper 3970X (Zen 2, 3.7-4.5 GHz) / AMD Ryzen Embedded "
               "V1605B (Zen, 2.0-3.6 GHz)", "core": "x86-64", "clock_ghz": None, "threads": 1,
     "command": "benchncnn 10 1 0 -1 0 / benchncnn 32 1 0 -1 0",
     "precision": "fp32 network, random weights",
     "ms": {"3970x_mobilenet_v1": 21.68, "3970x_mobilenet_v2": 14.82,
            "v1605b_mobilenet_v1": 41.70, "v1605b_mobilenet_v2": 27.81},
     "ms_kind": "avg", "url": NCNN_README,
     "note": "x86 cores on one thread: checks that the ncnn time here is in line"},
    {"id": "piper-ort-pi4-5950x", "use": "context", "runtime": "onnxruntime",
     "device": "Raspberry Pi 4 (4 GB) vs AMD Ryzen 9 5950X", "core": "Cortex-A72 vs Zen 3",
     "clock_ghz": None, "threads": "not stated (onnxruntime's default: all cores)",
     "command": "Piper text-to-speech real-time factor, one voice at three sizes",
     "precision": "fp32 ONNX",
     "ms": {"rtf_pi4_low": 0.494, "rtf_5950x_low": 0.019, "rtf_pi4_medium": 0.803,
            "rtf_5950x_medium": 0.030, "rtf_pi4_high": 5.307, "rtf_5950x_high": 0.082},
     "ms_kind": "real-time factor (not ms)", "url": "https://github.com/rhasspy/piper/issues/33",
     "note": "the only Pi-vs-x86 onnxruntime pair found: 26-65x, but 4 Pi cores against "
             "16 desktop cores and a network that is not timed here; not used"},
]

# ---------------------------------------------------------------------------------------
# The benchncnn MobileNets, as a list of layers (one spec -> ncnn param text and ONNX)

def _mobilenet_v1_layers():
    layers = [("conv", 3, 32, 3, 2, 1, True)]
    cfg = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 \
        + [(1024, 2), (1024, 1)]
    c = 32
    for out, stride in cfg:
        layers += [("conv", c, c, 3, stride, c, True), ("conv", c, out, 1, 1, 1, True)]
        c = out
    return layers, c


def _mobilenet_v2_layers():
    layers = [("conv", 3, 32, 3, 2, 1, True)]
    cfg = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
           (6, 160, 3, 2), (6, 320, 1, 1)]
    c = 32
    for t, out, n, s in cfg:
        for i in range(n):
            stride = s if i == 0 else 1
            mid = c * t
            block = [("conv", c, mid, 1, 1, 1, True), ("conv", mid, mid, 3, stride, mid, True),
                     ("conv", mid, out, 1, 1, 1, False)]
            layers.append(("residual", block) if stride == 1 and c == out else ("seq", block))
            c = out
    layers.append(("conv", c, 1280, 1, 1, 1, True))
    return layers, 1280


SPEC_NETS = {"mobilenet_v1": _mobilenet_v1_layers, "mobilenet_v2": _mobilenet_v2_layers}


def _flat(layers):
    for layer in layers:
        if layer[0] == "conv":
            yield "conv", [layer]
        else:
            yield layer[0], layer[1]


def ncnn_param(name: str, size: int = 224, classes: int = 1000) -> str:
    """The network as ncnn param text, in the layout of benchncnn's Caffe-converted files
    (convolution, BatchNorm, Scale, ReLU; Split for a blob read twice)."""
    layers, channels = SPEC_NETS[name]()
    lines, n_blobs = [], 0
    counter = iter(range(10**6))

    def emit(kind, lname, inputs, outputs, params=""):
        nonlocal n_blobs
        n_blobs += len(outputs)
        lines.append(f"{kind:<16} {lname:<16} {len(inputs)} {len(outputs)} "
                     + " ".join(inputs + outputs) + (f" {params}" if params else ""))

    def conv(blob, spec):
        _, cin, cout, k, stride, groups, relu = spec
        i = next(counter)
        pad = k // 2
        if groups == 1:
            emit("Convolution", f"conv{i}", [blob], [f"c{i}"],
                 f"0={cout} 1={k} 2=1 3={stride} 4={pad} 5=0 6={cout * cin * k * k}")
        else:
            emit("ConvolutionDepthWise", f"conv{i}", [blob], [f"c{i}"],
                 f"0={cout} 1={k} 2=1 3={stride} 4={pad} 5=0 6={cout * k * k} 7={groups}")
        emit("BatchNorm", f"bn{i}", [f"c{i}"], [f"b{i}"], f"0={cout}")
        emit("Scale", f"scale{i}", [f"b{i}"], [f"s{i}"], f"0={cout} 1=1")
        if not relu:
            return f"s{i}"
        emit("ReLU", f"relu{i}", [f"s{i}"], [f"r{i}"])
        return f"r{i}"

    emit("Input", "data", [], ["data"], f"0={size} 1={size} 2=3")
    blob = "data"
    for kind, block in _flat(layers):
        if kind == "residual":
            i = next(counter)
            emit("Split", f"split{i}", [blob], [f"{blob}_0", f"{blob}_1"])
            x = f"{blob}_1"
            for spec in block:
                x = conv(x, spec)
            emit("Eltwise", f"add{i}", [f"{blob}_0", x], [f"a{i}"], "0=1 -23301=0")
            blob = f"a{i}"
        else:
            for spec in block:
                blob = conv(blob, spec)
    emit("Pooling", "pool", [blob], ["pool"], "0=1 1=0 2=1 3=0 4=1")
    # benchncnn's files hold the classifier as a 1x1 Convolution, which current ncnn runs
    # through a deprecated path with a warning per call; InnerProduct is the same product.
    emit("InnerProduct", "fc", ["pool"], ["fc"], f"0={classes} 1=1 2={classes * channels}")
    emit("Softmax", "prob", ["fc"], ["prob"], "0=0")
    return f"7767517\n{len(lines)} {n_blobs}\n" + "\n".join(lines) + "\n"


def spec_onnx(name: str, size: int = 224, classes: int = 1000, seed: int = 0) -> bytes:
    """The same network in ONNX (opset 17): Conv with bias (batch norm folded), Relu, Add,
    GlobalAveragePool, 1x1 Conv classifier, Softmax; He-initialised random weights."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    layers, channels = SPEC_NETS[name]()
    nodes, inits = [], []
    counter = iter(range(10**6))

    def conv(x, cin, cout, k, stride, groups, relu):
        i = next(counter)
        fan_in = cin // groups * k * k
        w = (rng.standard_normal((cout, cin // groups, k, k)) * np.sqrt(2.0 / fan_in))
        inits.append(numpy_helper.from_array(w.astype(np.float32), f"w{i}"))
        inits.append(numpy_helper.from_array(np.zeros(cout, np.float32), f"b{i}"))
        nodes.append(helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"],
                                      kernel_shape=[k, k], strides=[stride, stride],
                                      pads=[k // 2] * 4, group=groups))
        if not relu:
            return f"c{i}"
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        return f"r{i}"

    x = "data"
    for kind, block in _flat(layers):
        start = x
        for spec in block:
            x = conv(x, *spec[1:])
        if kind == "residual":
            i = next(counter)
            nodes.append(helper.make_node("Add", [start, x], [f"a{i}"]))
            x = f"a{i}"
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pool"]))
    x = conv("pool", channels, classes, 1, 1, 1, False)
    nodes += [helper.make_node("Flatten", [x], ["flat"]),
              helper.make_node("Softmax", ["flat"], ["prob"], axis=1)]
    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info("data", TensorProto.FLOAT,
                                                    [1, 3, size, size])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [1, classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


# ---------------------------------------------------------------------------------------
# Runners: each returns a no-argument callable that runs one inference

def ort_runner(model: bytes | str, feed_shape, layout_nhwc: bool = False):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    x = np.random.default_rng(1).random(feed_shape, dtype=np.float32)
    return lambda: sess.run(None, {name: x})


def ncnn_runner(param_text: str, size: int = 224, fp16: bool = True):
    import ncnn

    tmp = tempfile.NamedTemporaryFile("w", suffix=".param", delete=False)
    tmp.write(param_text)
    tmp.close()
    blob_pool, workspace_pool = ncnn.UnlockedPoolAllocator(), ncnn.PoolAllocator()
    blob_pool.set_size_compare_ratio(0.0)
    workspace_pool.set_size_compare_ratio(0.5)
    opt = ncnn.Option()  # benchncnn's options on a CPU build
    opt.lightmode = True
    opt.num_threads = 1
    opt.blob_allocator = blob_pool
    opt.workspace_allocator = workspace_pool
    opt.use_winograd_convolution = True
    opt.use_sgemm_convolution = True
    opt.use_int8_inference = True
    opt.use_vulkan_compute = False
    opt.use_fp16_packed = fp16
    opt.use_fp16_storage = fp16
    opt.use_fp16_arithmetic = fp16
    opt.use_int8_storage = True
    opt.use_int8_arithmetic = True
    opt.use_packing_layout = True
    ncnn.set_cpu_powersave(0)
    ncnn.set_omp_dynamic(0)
    ncnn.set_omp_num_threads(1)
    net = ncnn.Net()
    net.opt = opt
    if net.load_param(tmp.name) != 0:
        raise RuntimeError("ncnn could not load the generated param")
    os.unlink(tmp.name)
    net.load_model(ncnn.DataReaderFromEmpty())
    mat = ncnn.Mat((size, size, 3))
    mat.fill(0.01)

    def run():
        ex = net.create_extractor()
        ex.input("data", mat)
        return ex.extract("prob")
    def close():  # the net's blobs go back to the pools before the pools go away
        net.clear()
        blob_pool.clear()
        workspace_pool.clear()
    run.close = close
    return run


KERAS_NETS = {"mobilenet_v1": "MobileNet", "mobilenet_v2": "MobileNetV2",
              "mobilenet_v3_large": "MobileNetV3Large", "mobilenet_v3_small": "MobileNetV3Small"}


def keras_model(name: str):
    import keras

    return getattr(keras.applications, KERAS_NETS[name])(weights=None,
                                                         input_shape=(224, 224, 3))


def tflite_runner(model):
    import tensorflow as tf

    flat = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        Interpreter = tf.lite.Interpreter
    interp = Interpreter(model_content=flat, num_threads=1)  # XNNPACK delegate by default
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    interp.set_tensor(inp["index"], np.random.default_rng(1).random((1, 224, 224, 3),
                                                                     dtype=np.float32))
    return interp.invoke


def keras_onnx(model) -> bytes:
    import tensorflow as tf
    import tf2onnx

    spec = (tf.TensorSpec((1, 224, 224, 3), tf.float32, name="input"),)
    model.output_names = ["output"]
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=17)
    return proto.SerializeToString()


def daemon_runner():
    from detector.model.classifier import Classifier

    clf = Classifier(None, ["CPUExecutionProvider"], 1)
    frames, n_mels = clf.metadata.frames, clf.metadata.features.n_mels
    window = np.random.default_rng(2).standard_normal((frames, n_mels)).astype(np.float32)
    return lambda: clf.predict(window)


# ---------------------------------------------------------------------------------------

def time_calls(fn, runs: int) -> tuple[list[float], list[float]]:
    wall, cpu = [], []
    for _ in range(runs):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        c1, w1 = time.process_time(), time.perf_counter()
        wall.append((w1 - w0) * 1000.0)
        cpu.append((c1 - c0) * 1000.0)
    return wall, cpu


def build_runners(suites, skipped: dict) -> dict:
    """{(suite, runtime, network): callable}; what cannot be built is noted in ``skipped``."""
    runners = {}
    if "spec" in suites:
        try:
            import ncnn  # noqa: F401
            have_ncnn = True
        except ImportError:
            have_ncnn = False
            skipped["spec/ncnn"] = "the ncnn wheel is not installed (pip install ncnn)"
        for name in SPEC_NETS:
            if have_ncnn:
                runners[("spec", "ncnn", name)] = ncnn_runner(ncnn_param(name))
            runners[("spec", "onnxruntime", name)] = ort_runner(spec_onnx(name),
                                                                (1, 3, 224, 224))
    if "keras" in suites:
        try:
            import tensorflow  # noqa: F401
        except ImportError:
            skipped["keras"] = "TensorFlow is not installed"
        else:
            for name in KERAS_NETS:
                model = keras_model(name)
                runners[("keras", "tflite-xnnpack", name)] = tflite_runner(model)
                try:
                    runners[("keras", "onnxruntime", name)] = ort_runner(
                        keras_onnx(model), (1, 224, 224, 3))
                except Exception as exc:  # tf2onnx and Keras versions drift
                    skipped[f"keras/onnxruntime/{name}"] = f"tf2onnx: {exc}"[:200]
    if "daemon" in suites:
        runners[("daemon", "onnxruntime", "shipped_model")] = daemon_runner()
    return runners


def measure(runners: dict, runs: int, rounds: int, warmup: int) -> tuple[dict, list]:
    for fn in runners.values():
        for _ in range(warmup):
            fn()
    samples = {key: {"wall": [], "cpu": [], "round_cpu_p50": [], "round_wall_p50": []}
               for key in runners}
    loads = []
    for r in range(rounds):
        loads.append(round(os.getloadavg()[0], 2))
        for key, fn in runners.items():
            wall, cpu = time_calls(fn, runs)
            s = samples[key]
            s["wall"] += wall
            s["cpu"] += cpu
            s["round_cpu_p50"].append(statistics.median(cpu))
            s["round_wall_p50"].append(statistics.median(wall))
        print(f"round {r + 1}/{rounds} done, load {loads[-1]}", file=sys.stderr)
    out = {}
    for (suite, runtime, net), s in samples.items():
        out[f"{suite}/{runtime}/{net}"] = {
            "suite": suite, "runtime": runtime, "network": net, "calls": len(s["cpu"]),
            "cpu_ms_min_of_round_medians": round(min(s["round_cpu_p50"]), 3),
            "cpu_ms_p50": round(statistics.median(s["cpu"]), 3),
            "wall_ms_p50": round(statistics.median(s["wall"]), 3),
            "wall_ms_min": round(min(s["wall"]), 3),
            "wall_ms_min_of_round_medians": round(min(s["round_wall_p50"]), 3),
            "cpu_ms_round_medians": [round(v, 3) for v in s["round_cpu_p50"]],
        }
    return out, loads


def daemon_cost(path: Path | None, override: float | None) -> dict:
    if override is not None:
        return {"source": "--daemon-ms", "mqtt_off": override, "mqtt_on": None}
    path = path or RESULTS / "process_cost_onset.json"
    if not path.is_file():
        raise SystemExit(f"pi_estimate: {path.name} not found; pass --daemon-ms")
    med = json.loads(path.read_text())["median"]
    return {"source": f"bench/results/{path.name} (median, after, whole process)",
            "mqtt_off": med["after/mqtt_off"]["whole_ms_per_audio_second"],
            "mqtt_on": med.get("after/mqtt_on", {}).get("whole_ms_per_audio_second")}


def _scenario(ms: float, central: float, low: float, high: float, pi5: list) -> dict:
    pi4 = {"ratio_central": round(central, 2), "ratio_range": [round(low, 2), round(high, 2)],
           "ms_per_audio_second_central": round(ms * central, 1),
           "ms_per_audio_second_range": [round(ms * low, 1), round(ms * high, 1)]}
    pi4["headroom_central"] = round(1000 / pi4["ms_per_audio_second_central"], 1)
    pi4["headroom_range"] = [round(1000 / (ms * high), 1), round(1000 / (ms * low), 1)]
    pi4["pi5_speedup_needed_for_50_ms"] = round(ms * central / 50.0, 2)
    slow, fast = min(pi5), max(pi5)
    p5 = {"ms_per_audio_second_central": round(ms * central / slow, 1),
          "ms_per_audio_second_range": [round(ms * low / fast, 1), round(ms * high / slow, 1)]}
    p5["headroom_central"] = round(1000 / p5["ms_per_audio_second_central"], 1)
    p5["headroom_range"] = [round(1000 * slow / (ms * high), 1),
                            round(1000 * fast / (ms * low), 1)]
    return {"pi4": pi4, "pi5": p5}


def estimate(local: dict, daemon: dict) -> dict:
    """Ratios from PUBLISHED against the local figures, and the daemon on a Pi 4 / 5.

    Two scenarios. ``onnxruntime`` (the daemon's runtime): ncnn's published one-thread
    A72 time of a network, times the published factor by which onnxruntime is slower
    than ncnn on a Pi core, over onnxruntime's CPU time here on the same network (this
    needs no ncnn here). ``ncnn_class`` (needs the ncnn wheel): the Pi runs the daemon
    as fast, relative to here, as ncnn runs the MobileNets."""
    src = {s["id"]: s for s in PUBLISHED}
    ratios, bounds, checks = [], [], []
    for s in PUBLISHED:
        if s["use"] not in ("ratio", "bound"):
            continue
        for net, pub in s["ms"].items():
            key = next((k for k, v in local.items() if v["network"] == net
                        and v["runtime"] == s["runtime"]), None)
            if key is None:
                continue
            here = local[key]["cpu_ms_min_of_round_medians"]
            row = {"source": s["id"], "network": net, "runtime": s["runtime"],
                   "published_ms": pub, "threads": s["threads"], "clock_ghz": s["clock_ghz"],
                   "local_ms": here, "local": key}
            if s["use"] == "ratio":
                row["ratio"] = round(pub / here, 2)
                row["ratio_at_1.5_ghz"] = round(pub / here * s["clock_ghz"] / 1.5, 2)
                ratios.append(row)
            else:
                row["ratio_low"] = round(pub / here, 2)
                row["ratio_high"] = round(s["threads"] * pub / here, 2)
                bounds.append(row)
    for name, pub in src["ncnn-x86-1t"]["ms"].items():
        net = name.split("_", 1)[1]
        key = f"spec/ncnn/{net}"
        if key in local:
            checks.append({"published": name, "published_ms": pub,
                           "local_ms": local[key]["cpu_ms_min_of_round_medians"],
                           "here_over_published": round(
                               local[key]["cpu_ms_min_of_round_medians"] / pub, 2)})
    tf = src["tf-pi4-pi5-fp32"]["ms"]
    pi5 = [round(tf["pi4_ssd_mobilenet_v2"] / tf["pi5_ssd_mobilenet_v2"], 2),
           round(tf["pi4_ssd_mobilenet_v1"] / tf["pi5_ssd_mobilenet_v1"], 2)]
    result = {"ratios": ratios, "bounds": bounds, "x86_checks": checks,
              "pi5_speedup_published": pi5}
    a72 = src["ncnn-rk3399-a72-1t"]
    f = src["ncnn-vs-ort-pi5"]["ms"]
    g_pi = {"low": f["ncnn_speedup_min_picodet_s"],
            "central": statistics.mean([f["ncnn_speedup_min_picodet_s"],
                                        f["ncnn_speedup_picodet_m"],
                                        f["ncnn_speedup_picodet_l"]]),
            "high": f["ncnn_speedup_max_yolox_x"]}
    result["ort_slower_than_ncnn_on_pi_published"] = {k: round(v, 3) for k, v in g_pi.items()}
    # onnxruntime on the A72 = ncnn's published A72 time x how much slower onnxruntime is
    # than ncnn on a Pi core; over onnxruntime's time here on the same network.
    ort_rows = [{"network": n, "a72_ncnn_ms": a72["ms"][n], "here_onnxruntime_ms":
                 local[f"spec/onnxruntime/{n}"]["cpu_ms_min_of_round_medians"]}
                for n in SPEC_NETS if f"spec/onnxruntime/{n}" in local]
    for r in ort_rows:
        r["a72_ncnn_over_here_onnxruntime"] = round(r["a72_ncnn_ms"] / r["here_onnxruntime_ms"], 2)
    result["onnxruntime_rows"] = ort_rows
    scale = a72["clock_ghz"] / 1.5
    base = [r["a72_ncnn_ms"] / r["here_onnxruntime_ms"] for r in ort_rows]
    if base:  # the same with the median over all calls here (more inflated by other work)
        p50 = [a72["ms"][n] / local[f"spec/onnxruntime/{n}"]["cpu_ms_p50"]
               for n in SPEC_NETS if f"spec/onnxruntime/{n}" in local]
        result["onnxruntime_central_ratio_with_p50_here"] = round(
            statistics.mean(p50) * g_pi["central"], 2)
    spans = {}
    if base:
        spans["onnxruntime"] = {"central": statistics.mean(base) * g_pi["central"],
                                "low": min(base) * g_pi["low"],
                                "high": max(base) * g_pi["high"] * scale}
    if ratios:
        r18 = [r["ratio"] for r in ratios]
        r15 = [r["ratio_at_1.5_ghz"] for r in ratios]
        spans["ncnn_class"] = {"central": statistics.mean(r18), "low": min(r18),
                               "high": max(r15)}
        g_here = [local[f"spec/onnxruntime/{n}"]["cpu_ms_min_of_round_medians"]
                  / local[f"spec/ncnn/{n}"]["cpu_ms_min_of_round_medians"]
                  for n in SPEC_NETS if f"spec/ncnn/{n}" in local]
        result["ort_over_ncnn_here"] = [round(g, 3) for g in g_here]
    if not spans:
        result["why_not"] = ("no network with a published one-thread Pi-class time was "
                             "timed here (run the spec suite)")
        return result
    result["ratio"] = {k: {q: round(v, 2) for q, v in sp.items()} for k, sp in spans.items()}
    rows = {}
    for label, ms in (("mqtt_off", daemon["mqtt_off"]), ("mqtt_on", daemon["mqtt_on"])):
        if ms is None:
            continue
        rows[label] = {"daemon_ms_per_audio_second_here": ms}
        for k, sp in spans.items():
            rows[label][k] = _scenario(ms, sp["central"], sp["low"], sp["high"], pi5)
    result["daemon"] = rows
    return result


SCENARIOS = {"onnxruntime": "onnxruntime (the daemon's runtime): ncnn's published one-thread "
                            "Cortex-A72 time x the published factor by which onnxruntime is "
                            "slower than ncnn on a Pi core, over onnxruntime's time here on "
                            "the same network",
             "ncnn_class": "a runtime as fast on the Pi, relative to here, as ncnn"}


def markdown(result: dict) -> str:
    info, est = result["machine"], result["estimate"]
    lines = ["# Raspberry Pi estimate from published Pi timings of the same networks", "",
             f"Machine: {info['cpu']}, {info['cores']} cores, Python {info['python']}, "
             f"{info['date']}; 1-min load average {info['load_avg_1min_at_start']} at start, "
             f"{result['load_avg_1min_per_round']} per round, {result['load_avg_1min_at_end']} "
             "at end (a shared machine: other work was running).",
             f"Command: `{result['command']}`. Runtimes here: {result['versions']}.", ""]
    d = est.get("daemon")
    if d:
        off = d["mqtt_off"]
        lines += ["## Estimate", "",
                  f"Whole daemon here: **{off['daemon_ms_per_audio_second_here']} ms CPU per "
                  f"second of audio** with MQTT off ({result['daemon']['source']}). "
                  "Target: <= 50 ms per audio second (>= 20x headroom) on a Pi-class core.", "",
                  "| daemon | scenario | ratio Pi 4 / here | Pi 4 ms per audio s | Pi 4 "
                  "headroom | Pi 5 ms per audio s | Pi 5 headroom |",
                  "|---|---|---|---|---|---|---|"]
        for label, row in d.items():
            for sc in [k for k in ("onnxruntime", "ncnn_class") if k in row]:
                p4, p5 = row[sc]["pi4"], row[sc]["pi5"]
                lines.append(
                    f"| {label.replace('_', ' ')} ({row['daemon_ms_per_audio_second_here']} "
                    f"ms/s here) | {sc} | {p4['ratio_central']}x ({p4['ratio_range'][0]} - "
                    f"{p4['ratio_range'][1]}) | **{p4['ms_per_audio_second_central']}** "
                    f"({p4['ms_per_audio_second_range'][0]} - "
                    f"{p4['ms_per_audio_second_range'][1]}) | {p4['headroom_central']}x "
                    f"({p4['headroom_range'][0]} - {p4['headroom_range'][1]}) | "
                    f"**{p5['ms_per_audio_second_central']}** "
                    f"({p5['ms_per_audio_second_range'][0]} - "
                    f"{p5['ms_per_audio_second_range'][1]}) | {p5['headroom_central']}x "
                    f"({p5['headroom_range'][0]} - {p5['headroom_range'][1]}) |")
        g = est["ort_slower_than_ncnn_on_pi_published"]
        lines += ["", "Scenarios: " + "; ".join(f"**{k}** = {v}" for k, v in SCENARIOS.items()
                                                if k in est["ratio"]) + ".", ""]
        for r in est["onnxruntime_rows"]:
            lines.append(f"- {r['network']}: ncnn on the Cortex-A72 (1.8 GHz, one thread, "
                         f"published) {r['a72_ncnn_ms']} ms / onnxruntime here "
                         f"{r['here_onnxruntime_ms']} ms = {r['a72_ncnn_over_here_onnxruntime']}x.")
        lines.append(f"- onnxruntime slower than ncnn on a Pi 5 core (published, FP32, "
                     f"detection models): {g['low']} - {g['high']}x; {g['central']}x for the "
                     "depthwise-separable PicoDet family (used as central).")
        if "ncnn_class" in est["ratio"]:
            nc = est["ratio"]["ncnn_class"]
            lines.append(f"- ncnn ratio (Cortex-A72 one thread / ncnn here, same networks): "
                         f"central {nc['central']}x at 1.8 GHz, range {nc['low']} - "
                         f"{nc['high']}x; onnxruntime / ncnn time here: "
                         f"{est['ort_over_ncnn_here']}.")
        ort4 = off["onnxruntime"]["pi4"]
        lines += ["- Ranges: low end at 1.8 GHz with the smallest factor, high end at 1.5 GHz "
                  "with the largest.",
                  f"- Sensitivity to the load here: with the median over all calls instead of "
                  f"the minimum of round medians, the onnxruntime central ratio is "
                  f"{est['onnxruntime_central_ratio_with_p50_here']}x (instead of "
                  f"{ort4['ratio_central']}x).",
                  f"- Pi 5 break-even: with onnxruntime (central) the daemon meets 50 ms per "
                  f"audio s on a core {ort4['pi5_speedup_needed_for_50_ms']}x as fast as a "
                  "1.8 GHz Pi 4 core.",
                  f"- Pi 5 = the Pi 4 figures divided by the published Pi 4 -> Pi 5 speed-ups "
                  f"{est['pi5_speedup_published']} (TensorFlow fp32, SSD MobileNet v2 / v1, all "
                  "cores; central uses the smaller).", ""]
    else:
        lines += ["## Estimate", "", f"None: {est.get('why_not')}.", ""]
    lines += ["## Ratios (published Pi ms / CPU ms here, same network and runtime)", "",
              "| source | runtime | network | threads | published ms | here ms | ratio | "
              "ratio at 1.5 GHz |", "|---|---|---|---|---|---|---|---|"]
    for r in est["ratios"]:
        lines.append(f"| {r['source']} | {r['runtime']} | {r['network']} | {r['threads']} | "
                     f"{r['published_ms']} | {r['local_ms']} | {r['ratio']}x | "
                     f"{r['ratio_at_1.5_ghz']}x |")
    lines += ["", "Sources with more than one thread bound the one-thread ratio (T4 <= T1 <= "
              "4 T4 on four cores):", "", "| source | runtime | network | threads | published "
              "ms | here ms (1 thread) | one-thread ratio within |",
              "|---|---|---|---|---|---|---|"]
    for r in est["bounds"]:
        lines.append(f"| {r['source']} | {r['runtime']} | {r['network']} | {r['threads']} | "
                     f"{r['published_ms']} | {r['local_ms']} | {r['ratio_low']}x - "
                     f"{r['ratio_high']}x |")
    if est["x86_checks"]:
        lines += ["", "ncnn here against published one-thread x86 runs of the same networks "
                  "(a check of the here-time): " + ", ".join(
                      f"{c['published']} {c['published_ms']} ms vs {c['local_ms']} ms here "
                      f"({c['here_over_published']}x)" for c in est["x86_checks"]) + "."]
    lines += ["", "## Timed here (one thread; CPU = `time.process_time`)", "",
              "| suite / runtime / network | calls | CPU ms, min of round medians | CPU ms p50 "
              "| wall ms p50 | wall ms min |", "|---|---|---|---|---|---|"]
    for key, v in result["local"].items():
        lines.append(f"| {key} | {v['calls']} | {v['cpu_ms_min_of_round_medians']} | "
                     f"{v['cpu_ms_p50']} | {v['wall_ms_p50']} | {v['wall_ms_min']} |")
    for key, why in result["skipped"].items():
        lines.append(f"| {key} | skipped: {why} | | | | |")
    lines += ["", "## Sources", "", "| id | used as | device | runtime, threads | what | "
              "published | address |", "|---|---|---|---|---|---|---|"]
    for s in PUBLISHED:
        nums = ", ".join(f"{k} {v}" for k, v in s["ms"].items())
        lines.append(f"| {s['id']} | {s['use']} | {s['device']} | {s['runtime']}, "
                     f"{s['threads']} | {s['command']}; {s['precision']}; {s['ms_kind']}; "
                     f"{s['note']} | {nums} | {s['url']} |")
    lines += ["", "## Caveats", ""] + [f"- {c}" for c in CAVEATS] + [""]
    return "\n".join(lines)


CAVEATS = [
    "No one-thread onnxruntime timing on a Pi of any network was found. The direct ratio is "
    "ncnn's (same network, same runtime, one thread, Cortex-A72 at 1.8 GHz); the "
    "onnxruntime scenario carries ncnn's A72 time over to onnxruntime with a published "
    "ncnn-vs-onnxruntime factor that was measured on a Pi 5 (Cortex-A76, not A72), on "
    "detection models, with the thread count not stated. onnxruntime's Arm (NEON) kernels "
    "are other code than its x86 (AVX2/FMA) ones and than ncnn's: that factor is the "
    "largest uncertainty here.",
    "The daemon's model is a MobileNetV3-like trunk (depthwise and pointwise convolutions, "
    "hard-swish, squeeze-excitation) and an LSTM head on a 97x128 log-mel window, much "
    "smaller than a 224x224 ImageNet network: its layers are small, so per-operator "
    "overhead weighs more, and that scales with the core's scalar speed rather than with "
    "its SIMD width. The MobileNets' ops (depthwise/pointwise convolutions, ReLU) are the "
    "same kinds as the trunk's; hard-swish, squeeze-excitation and the LSTM are not covered "
    "by the ncnn MobileNet v1/v2 ratio (MobileNetV3 is timed here, keras suite, but no "
    "one-thread Pi figure exists for it).",
    "The ratio is applied to the whole process, features and Python included; numpy FFTs "
    "and interpreter overhead scale with another ratio than NEON convolutions.",
    "Clock: the A72 source ran at 1.8 GHz; a 1.5 GHz Pi 4 is taken as 1.2x slower (the "
    "high end of each range). Thermal throttling is not modelled (one busy core of four).",
    "The published ncnn A72 run is an older ncnn than the wheel timed here; nihui (ncnn) "
    "noted that the Pi 4 data in the README is old and the latest ncnn is faster "
    "(https://github.com/Qengineering/RPi-image/issues/9): the ratio leans pessimistic.",
    "This machine was shared with other work while timing; the minimum of round medians "
    "of CPU time is the least inflated figure here. The estimate is proportional to the "
    "daemon's own CPU here, which was measured on a shared machine too: if that figure is "
    "more inflated than the minimum of round medians, the estimate leans pessimistic.",
    "Pi 5: no one-thread Pi 5 timing of a network run here was found; the Pi 5 rows divide "
    "the Pi 4 figures by a multi-threaded TensorFlow Pi 4 -> Pi 5 speed-up (3.2-4.0x), "
    "which may overstate what one core gains.",
]


def versions() -> str:
    from importlib import metadata

    out = []
    for dist in ("onnxruntime", "ncnn", "tensorflow", "tf2onnx"):
        try:
            out.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            pass
    return ", ".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100, help="timed calls per network per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--suites", nargs="+", default=["spec", "keras", "daemon"],
                        choices=["spec", "keras", "daemon"])
    parser.add_argument("--daemon-ms", type=float, default=None,
                        help="daemon CPU ms per audio second here (default: the committed "
                             "process_cost_onset results)")
    parser.add_argument("--daemon-results", type=Path, default=None)
    parser.add_argument("--name", default="pi_estimate")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.runs < 1 or args.rounds < 1 or args.warmup < 0:
        print("pi_estimate: --runs and --rounds must be >= 1, --warmup >= 0", file=sys.stderr)
        return 2
    info = machine()
    daemon = daemon_cost(args.daemon_results, args.daemon_ms)
    skipped: dict = {}
    runners = build_runners(args.suites, skipped)
    local, loads = measure(runners, args.runs, args.rounds, args.warmup)
    for fn in runners.values():
        getattr(fn, "close", lambda: None)()
    command = f"python bench/pi_estimate.py --runs {args.runs} --rounds {args.rounds} " \
              f"--suites {' '.join(args.suites)}" \
              + (f" --daemon-ms {args.daemon_ms:g}" if args.daemon_ms is not None else "") \
              + (f" --name {args.name}" if args.name != "pi_estimate" else "")
    result = {"machine": info, "command": command.strip(), "versions": versions(),
              "runs": args.runs, "rounds": args.rounds, "load_avg_1min_per_round": loads,
              "load_avg_1min_at_end": round(os.getloadavg()[0], 2), "daemon": daemon,
              "published": PUBLISHED, "local": local, "skipped": skipped}
    result["estimate"] = estimate(local, daemon)
    text = markdown(result)
    save(args.name, result, text, args.out)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
