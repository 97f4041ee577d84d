"""Convert a checkpoint: to NIR (neuromorphic hardware), to ONNX (onnxruntime on CPUs, phones,
edge boards), or the original SpikeCLIP LRN's file into a SpikeCLIP-SNN checkpoint.

    python convert.py --checkpoint weights/normal.pth --to onnx --output normal.onnx
    python convert.py --checkpoint weights/normal.pth --to nir --output normal.nir --frame 64x64
    python convert.py --checkpoint models/LRN_CALTECH.pth --to checkpoint \\
        --output exp/spikeclip_caltech/ckpts/checkpoint_best.pth --dataset caltech

onnx: both architectures, fp32. Input `voxel` [N, C, H, W] (the binned window, as the networks
take it; N, H and W are free), output `image` [N, 1, H, W] (analog, not clamped). The SNN's T
steps are unrolled: conv + BatchNorm, LIF (mem = beta*mem + I - theta*spk_prev; spk = mem >
theta) per step, the readout on the mean spike map, plus the linear skip.

nir: spiking networks only, for one frame size (--frame; NIR neurons are a fixed population and
their parameters are stored per neuron). One NIR time step is one of the network's T steps: feed
the voxel (direct encoding) or step t's 50-bin slice (temporal) at each of T steps from rest,
and average the T outputs: that is the network's image. BatchNorm is folded into each conv. A
LIF layer is the subgraph  LI -> Threshold,  Threshold -> Scale(-theta) -> LI:
  LI (tau dv/dt = v_leak - v + r*I, Euler with dt = 1 step): tau = 1/(1-beta), r = tau, v_leak = 0
     gives v_t = beta*v_{t-1} + I_t (beta = 1: an I node, dv/dt = r*I, r = 1);
  Threshold(theta): spk_t = v_t > theta;
  Scale(-theta) back into the LI: the next step's input carries -theta*spk_{t-1}, the reset by
     subtraction (NIR's LIF/IF nodes reset *to* v_reset, which is another neuron).
The readout and the linear skip are analog Conv2d nodes summed into the output (a Scale(1)
node): the target must run convolutions on spikes and on the multi-valued input and emit
analog values, as well as LI neurons with a recurrent edge.

A network with a lens input (train.py --lens_input) is exported for one lens, --lens_px (default
its reference lens): the lens term is folded into the readout (SpikingLRN.fix_lens).

checkpoint: the original SpikeCLIP LRN (the authors' bare state_dict, e.g. LRN_CALTECH.pth)
into our format, recording its class set (--dataset), the source file and its SHA-256.
evaluate.py, test.py and train.py --teacher also read the original file directly.

Exit status 2: unusable input (unreadable or foreign checkpoint, an architecture the target
cannot hold, an existing output without --overwrite).
"""
import argparse
import io
import os
import sys

import numpy as np
import torch

from dataset import one_dataset
from models import (SpikingLRN, check_lens_px, fold_batchnorm, has_lens_input, is_original, load_checkpoint,
                    model_from_checkpoint, model_name)
from utils import InputError, atomic_torch_save, atomic_write, non_negative_float, report_input_error

ONNX_OPSET = 17


def frame_size(text):
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 64x64, got {text!r}") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"expected positive sizes, got {text!r}")
    return h, w


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a SpikeCLIP-SNN checkpoint (or, for --to checkpoint, "
                                                       "the original SpikeCLIP LRN's state_dict)")
    p.add_argument("--to", required=True, choices=["nir", "onnx", "checkpoint"], help="what to write")
    p.add_argument("--output", required=True, help="the file to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    p.add_argument("--frame", type=frame_size, metavar="HxW",
                   help="--to nir: the frame size the graph is built for (default 64x64)")
    p.add_argument("--lens_px", type=non_negative_float,
                   help="nir/onnx of a network with a lens input: the camera's lens blur (std px) the exported "
                        "graph is fixed to (default: the network's reference lens)")
    p.add_argument("--dataset", "--data_type", dest="data_type", type=one_dataset, metavar="{cifar,caltech}",
                   help="--to checkpoint: class set the weights were trained on (LRN_CALTECH.pth: caltech)")
    args = p.parse_args(argv)
    if args.frame is not None and args.to != "nir":
        p.error("--frame is for --to nir (ONNX graphs take any frame size)")
    if args.lens_px is not None and args.to == "checkpoint":
        p.error("--lens_px is for --to nir and --to onnx (a converted checkpoint keeps what it has)")
    if args.data_type is not None and args.to != "checkpoint":
        p.error("--dataset is for --to checkpoint")
    return args


# ----------------------------------------------------------------------------------------------
# ONNX: the graph written node by node, so that it computes what the PyTorch modules compute,
# in the same order

class _OnnxBuilder:
    def __init__(self):
        self.nodes, self.initializers = [], []

    def const(self, name, value, dtype=np.float32):
        """An initializer, stored once however many steps use it."""
        from onnx import numpy_helper
        if name not in {i.name for i in self.initializers}:
            self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type, *inputs, **attrs):
        from onnx import helper
        out = f"{op_type.lower()}_{len(self.nodes)}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def conv(self, x, conv, name):
        if conv.kernel_size != (3, 3) or conv.padding != (1, 1) or conv.stride != (1, 1) or conv.groups != 1:
            raise ValueError(f"{name}: only 3x3 convolutions with padding 1 are exported")
        weight = self.const(f"{name}.weight", conv.weight.detach().cpu())
        bias = self.const(f"{name}.bias", conv.bias.detach().cpu())
        return self.op("Conv", x, weight, bias, kernel_shape=[3, 3], pads=[1, 1, 1, 1])

    def batch_norm(self, x, bn, name):
        args = [self.const(f"{name}.{k}", getattr(bn, k).detach().cpu())
                for k in ("weight", "bias", "running_mean", "running_var")]
        return self.op("BatchNormalization", x, *args, epsilon=float(bn.eps))

    def mean(self, tensors):
        if len(tensors) == 1:
            return tensors[0]
        return self.op("Div", self.op("Sum", *tensors), self.const(f"count_{len(self.nodes)}", float(len(tensors))))


def _onnx_snn(b, model, voxel):
    beta, theta = b.const("beta", model.beta), b.const("threshold", model.threshold)
    if model.encoding == "direct":
        step_inputs = [voxel]
    else:
        step_inputs = [b.op("Slice", voxel, b.const(f"start{t}", [t * model.in_bins], np.int64),
                            b.const(f"end{t}", [(t + 1) * model.in_bins], np.int64), b.const("axis", [1], np.int64))
                       for t in range(model.time_steps)]
    currents = [b.batch_norm(b.conv(x, model.convs[0], "conv1"), model.bns[0], "bn1") for x in step_inputs]
    for l in range(len(model.convs)):
        spikes, mem = [], None
        for t in range(model.time_steps):
            current = currents[t if len(currents) > 1 else 0]
            if mem is None:
                mem = current                                  # from rest: beta * 0 + I
            else:
                leaked = b.op("Add", b.op("Mul", mem, beta), current)
                mem = b.op("Sub", leaked, b.op("Mul", spikes[-1], theta))
            spikes.append(b.op("Cast", b.op("Greater", mem, theta), to=1))      # 1 = FLOAT
        if l + 1 < len(model.convs):
            currents = [b.batch_norm(b.conv(s, model.convs[l + 1], f"conv{l + 2}"), model.bns[l + 1], f"bn{l + 2}")
                        for s in spikes]
    image = b.conv(b.mean(spikes), model.readout, "readout")
    if model.skip is not None:
        image = b.op("Add", image, b.conv(voxel, model.skip, "skip"))     # over the whole window
    return image


def _onnx_ann(b, model, voxel):
    convs = [m for m in model.net if isinstance(m, torch.nn.Conv2d)]
    h = voxel
    for i, conv in enumerate(convs):
        h = b.conv(h, conv, f"conv{i + 1}")
        if i + 1 < len(convs):
            h = b.op("Relu", h)
    if model.skip is not None:
        h = b.op("Add", h, b.conv(voxel, model.skip, "skip"))
    return h


@torch.no_grad()
def onnx_model(model):
    """An SNN or plain-CNN LRN (fp32, eval) as an onnx.ModelProto with free N, H, W."""
    from onnx import TensorProto, checker, helper
    check_lens_fixed(model)
    model = model.float().eval()
    b = _OnnxBuilder()
    image = (_onnx_snn if isinstance(model, SpikingLRN) else _onnx_ann)(b, model, "voxel")
    assert b.nodes[-1].output[0] == image
    b.nodes[-1].output[0] = "image"
    dims = ["batch", model.input_channels, "height", "width"]
    graph = helper.make_graph(
        b.nodes, model_name(model.config()),
        [helper.make_tensor_value_info("voxel", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, "height", "width"])],
        initializer=b.initializers)
    proto = helper.make_model(graph, producer_name="SpikeCLIP-SNN convert.py",
                              opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
    proto.ir_version = 8        # what onnxruntime releases of the last years read
    helper.set_model_props(proto, {"model_config": repr(model.config())})
    checker.check_model(proto, full_check=True)
    return proto


def export_onnx(model, path):
    proto = onnx_model(model)
    atomic_write(path, lambda f: f.write(proto.SerializeToString()))
    return proto


# ----------------------------------------------------------------------------------------------
# NIR

@torch.no_grad()
def nir_graph(model, height, width):
    """A SpikingLRN (eval) as a nir.NIRGraph for height x width frames, in the weights' dtype."""
    import nir
    check_lens_fixed(model)
    if not isinstance(model, SpikingLRN):
        raise ValueError(f"NIR export takes a SpikingLRN, got {type(model).__name__}")
    model = model.eval()

    def per_neuron(value, channels):
        return np.full((channels, height, width), value, dtype=dtype)

    def conv_node(weight, bias):
        return nir.Conv2d(input_shape=(height, width), weight=weight.cpu().numpy(), stride=1, padding=1,
                          dilation=1, groups=1, bias=bias.cpu().numpy())

    dtype = torch.empty(0, dtype=model.readout.weight.dtype).numpy().dtype

    def membrane(c):    # v_t = beta * v_{t-1} + I_t with dt = 1 step: LI with beta = 1 - dt/tau, r = tau
        if model.beta == 1.0:
            return nir.I(r=per_neuron(1.0, c))          # no leak: dv/dt = r I
        tau = 1.0 / (1.0 - model.beta)
        return nir.LI(tau=per_neuron(tau, c), r=per_neuron(tau, c), v_leak=per_neuron(0.0, c))

    if model.skip is not None and model.encoding == "temporal":
        # NIR graphs run the same weights at every step; this skip weighs each step's bins
        # differently (one conv over the whole window), which no static per-step node expresses
        raise InputError("a temporal-encoding SNN's linear skip spans the whole window (one conv over "
                         f"{model.input_channels} bins): NIR cannot express it; export --to onnx instead")
    nodes = {"input": nir.Input(input_type={"input": np.array([model.in_bins, height, width])})}
    edges, previous = [], "input"
    for l, (conv, bn) in enumerate(zip(model.convs, model.bns), start=1):
        c = conv.out_channels
        nodes[f"conv{l}"] = conv_node(*fold_batchnorm(conv, bn))
        nodes[f"lif{l}_membrane"] = membrane(c)
        nodes[f"lif{l}_threshold"] = nir.Threshold(threshold=per_neuron(model.threshold, c))
        nodes[f"lif{l}_reset"] = nir.Scale(scale=per_neuron(-model.threshold, c))
        edges += [(previous, f"conv{l}"), (f"conv{l}", f"lif{l}_membrane"), (f"lif{l}_membrane", f"lif{l}_threshold"),
                  (f"lif{l}_threshold", f"lif{l}_reset"), (f"lif{l}_reset", f"lif{l}_membrane")]
        previous = f"lif{l}_threshold"
    nodes["readout"] = conv_node(model.readout.weight, model.readout.bias)
    nodes["image"] = nir.Scale(scale=per_neuron(1.0, 1))               # the sum of its inputs
    nodes["output"] = nir.Output(output_type={"output": np.array([1, height, width])})
    edges += [(previous, "readout"), ("readout", "image"), ("image", "output")]
    if model.skip is not None:
        nodes["skip"] = conv_node(model.skip.weight, model.skip.bias)
        edges += [("input", "skip"), ("skip", "image")]
    metadata = {"source": "SpikeCLIP-SNN convert.py", "model": model_name(model.config()),
                "time_steps": model.time_steps, "encoding": model.encoding, "dt": 1.0,
                "usage": f"run {model.time_steps} steps from rest, feeding the voxel ({model.encoding} "
                         f"encoding) each step; the image is the mean of the {model.time_steps} outputs"}
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=metadata)


def export_nir(model, path, height, width):
    import nir
    graph = nir_graph(model, height, width)
    buffer = io.BytesIO()           # HDF5 reads back what it writes: the temp file is write-only
    nir.write(buffer, graph)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))
    return graph


# ----------------------------------------------------------------------------------------------

def original_to_checkpoint(args):
    """The original LRN's state_dict -> our checkpoint, written to args.output."""
    ckpt = load_checkpoint(args.checkpoint)
    # load_checkpoint wraps a bare original state_dict and names the file it read as the source
    source = ckpt.get("source", {}).get("file")
    if not is_original(ckpt["model_config"]) or source != os.path.abspath(args.checkpoint):
        raise InputError(f"{args.checkpoint}: already a SpikeCLIP-SNN checkpoint, nothing to convert")
    model_from_checkpoint(ckpt, args.checkpoint)     # the weights fit the network they claim to be
    ckpt["data_type"] = args.data_type
    atomic_torch_save(ckpt, args.output)
    return (f"{ckpt['source']['name']} from {args.checkpoint} (sha256 {ckpt['source']['sha256'][:12]}…), "
            f"data type {args.data_type or 'not recorded'}")


def check_lens_fixed(model):
    """The graphs hold one readout: a lens input must be folded into it first (fix_lens)."""
    if has_lens_input(model):
        raise ValueError("a network with a lens input is exported for one lens: call fix_lens() first")


def run(args):
    if os.path.exists(args.output) and not args.overwrite:
        raise InputError(f"--output {args.output}: already exists (pass --overwrite to replace it)")
    if args.to == "checkpoint":
        return original_to_checkpoint(args)
    ckpt = load_checkpoint(args.checkpoint)
    model = model_from_checkpoint(ckpt, args.checkpoint).eval()
    check_lens_px(model, args.lens_px, args.checkpoint)
    model.fix_lens(args.lens_px)
    if args.to == "onnx":
        export_onnx(model, args.output)
        return f"{model_name(ckpt['model_config'])} as ONNX (opset {ONNX_OPSET}, fp32, any frame size)"
    if not isinstance(model, SpikingLRN):
        raise InputError(f"{args.checkpoint}: {model_name(ckpt['model_config'])} has no spiking neurons for NIR; "
                         f"export it with --to onnx")
    height, width = args.frame or (64, 64)
    graph = export_nir(model, args.output, height, width)
    return (f"{model_name(ckpt['model_config'])} as NIR ({len(graph.nodes)} nodes, {height}x{width} frames, "
            f"{model.time_steps} steps per image)")


def main(argv=None):
    args = get_args(argv)
    try:
        summary = run(args)
    except InputError as e:
        return report_input_error(e)
    print(f"wrote {args.output}: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
