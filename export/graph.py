"""Build the padding-aware ONNX graph of a :class:`StackedLSTM` directly from its weights.

No tracing: each ``nn.LSTM`` layer becomes one ONNX ``LSTM`` node whose 5th input is the
graph's ``sequence_lens``, so every layer stops at each row's own length. Building from the
weights keeps the graph exact for every batch size and length (nothing is specialised to an
example) and makes the wiring explicit:

* PyTorch's gate order is i, f, g, o; ONNX's is i, o, f, c. The ONNX bias is ``[Wb, Rb]``.
* ONNX Runtime's CPU LSTM supports only ``layout=0`` (time-major), so the graph transposes
  the batch-major input once and the last layer's output once.
* many_to_one reads the head at each row's last valid step; many_to_many applies the head to
  every step and then zeroes the steps past each row's length (after the head, whose bias
  would otherwise leak into the padding).

All names come from :mod:`app.contract`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from app import contract as C

from .errors import UnsupportedModelError
from .model import StackedLSTM, check_head

OPSET = 17
IR_VERSION = 8  # the oldest IR that carries opset 17: loads in every ONNX Runtime >= 1.14


@dataclass(frozen=True)
class Normalization:
    """Per-feature ``(x - mean) / std``, applied inside the graph before the first LSTM layer."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def coerce(cls, value: object, input_size: int) -> Normalization | None:
        """Accept ``None``, a Normalization, ``(mean, std)`` or ``{"mean": ..., "std": ...}``."""
        if value is None or isinstance(value, Normalization):
            norm = value
        elif isinstance(value, dict):
            try:
                norm = cls(np.asarray(value["mean"], np.float32), np.asarray(value["std"], np.float32))
            except KeyError as exc:
                raise ValueError(f"normalization needs keys 'mean' and 'std', missing {exc}") from None
        else:
            mean, std = value  # type: ignore[misc]
            norm = cls(np.asarray(mean, np.float32), np.asarray(std, np.float32))
        if norm is None:
            return None
        mean = np.asarray(norm.mean, np.float32).reshape(-1)
        std = np.asarray(norm.std, np.float32).reshape(-1)
        if mean.shape != (input_size,) or std.shape != (input_size,):
            raise ValueError(
                f"normalization mean/std need {input_size} values each (one per feature), "
                f"got {mean.size} and {std.size}"
            )
        if not np.all(np.isfinite(mean)) or not np.all(np.isfinite(std)) or np.any(std <= 0):
            raise ValueError("normalization std must be positive and mean/std finite")
        return cls(mean, std)

    def apply(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.std).astype(np.float32)

    def to_json(self) -> dict[str, list[float]]:
        return {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]}


def onnx_lstm_weights(
    lstm: nn.LSTM, layer: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """W [D, 4H, in], R [D, 4H, H], B [D, 8H] of one layer, in ONNX gate order (i, o, f, c)."""
    hidden = lstm.hidden_size

    def reorder(t: np.ndarray) -> np.ndarray:
        i, f, g, o = np.split(t, 4, axis=0)
        return np.concatenate([i, o, f, g], axis=0)

    ws, rs, bs = [], [], []
    for suffix in ("", "_reverse")[: 2 if lstm.bidirectional else 1]:
        w = getattr(lstm, f"weight_ih_l{layer}{suffix}").detach().cpu().float().numpy()
        r = getattr(lstm, f"weight_hh_l{layer}{suffix}").detach().cpu().float().numpy()
        if lstm.bias:
            wb = getattr(lstm, f"bias_ih_l{layer}{suffix}").detach().cpu().float().numpy()
            rb = getattr(lstm, f"bias_hh_l{layer}{suffix}").detach().cpu().float().numpy()
        else:
            wb = rb = np.zeros(4 * hidden, np.float32)
        ws.append(reorder(w))
        rs.append(reorder(r))
        bs.append(np.concatenate([reorder(wb), reorder(rb)]))
    return np.stack(ws), np.stack(rs), np.stack(bs)


class _Builder:
    """Collects nodes and initializers; names intermediate tensors uniquely."""

    def __init__(self, float_type: int) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.float_type = float_type
        self.np_float = np.float16 if float_type == TensorProto.FLOAT16 else np.float32
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, hint: str, value: np.ndarray) -> str:
        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def fconst(self, hint: str, value: np.ndarray | float) -> str:
        """A constant in the graph's compute precision."""
        return self.const(hint, np.asarray(value, dtype=np.float32).astype(self.np_float))

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, n_out: int = 1,
           outputs: list[str] | None = None, **attrs: object) -> list[str]:
        outs = outputs or [self.name(hint or op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=self.name(op_type), **attrs))
        return outs

    def op1(self, op_type: str, inputs: list[str], hint: str | None = None, **attrs: object) -> str:
        return self.op(op_type, inputs, hint, **attrs)[0]


def _head_ops(b: _Builder, head: nn.Module, x: str, in_features: int) -> str:
    """Emit the per-step head on ``x`` ([..., features]); works for 2-D and 3-D ``x``."""
    layers = list(head) if isinstance(head, nn.Sequential) else [head]
    for layer in layers:
        if isinstance(layer, nn.Linear):
            weight = layer.weight.detach().cpu().float().numpy().T
            x = b.op1("MatMul", [x, b.fconst("head_weight", weight)], "head_matmul")
            if layer.bias is not None:
                x = b.op1("Add", [x, b.fconst("head_bias", layer.bias.detach().cpu().float().numpy())],
                          "head_linear")
        elif isinstance(layer, (nn.Dropout, nn.Identity)):
            continue
        elif isinstance(layer, nn.ReLU):
            x = b.op1("Relu", [x])
        elif isinstance(layer, nn.Tanh):
            x = b.op1("Tanh", [x])
        elif isinstance(layer, nn.Sigmoid):
            x = b.op1("Sigmoid", [x])
        elif isinstance(layer, nn.LeakyReLU):
            x = b.op1("LeakyRelu", [x], alpha=float(layer.negative_slope))
        elif isinstance(layer, nn.ELU):
            x = b.op1("Elu", [x], alpha=float(layer.alpha))
        elif isinstance(layer, nn.SiLU):
            x = b.op1("Mul", [x, b.op1("Sigmoid", [x])], "silu")
        elif isinstance(layer, nn.GELU):
            if layer.approximate == "tanh":
                cube = b.op1("Mul", [x, b.op1("Mul", [x, x])])
                inner = b.op1("Add", [x, b.op1("Mul", [cube, b.fconst("c", 0.044715)])])
                t = b.op1("Tanh", [b.op1("Mul", [inner, b.fconst("c", math.sqrt(2 / math.pi))])])
            else:
                t = b.op1("Erf", [b.op1("Div", [x, b.fconst("c", math.sqrt(2.0))])])
            half_x = b.op1("Mul", [x, b.fconst("c", 0.5)])
            x = b.op1("Mul", [half_x, b.op1("Add", [t, b.fconst("one", 1.0)])], "gelu")
        else:  # check_head refuses these first; kept as a guard
            raise UnsupportedModelError(f"head layer {type(layer).__name__} is not supported")
    return x


def build_graph(
    model: StackedLSTM,
    spec: C.ModelSpec,
    normalization: Normalization | None = None,
    *,
    fp16: bool = False,
) -> onnx.ModelProto:
    """The contract's graph for ``model``; ``fp16`` computes in half precision inside the graph
    while keeping the contract's float32 inputs and outputs."""
    check_head(model.head, model.hidden_size * model.num_directions)
    lstm = model.lstm
    float_type = TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT
    b = _Builder(float_type)
    hidden, layers, dirs = spec.hidden_size, spec.num_layers, model.num_directions

    def to_compute(name: str) -> str:
        return b.op1("Cast", [name], f"{name}_fp16", to=float_type) if fp16 else name

    def to_float32(name: str, output: str) -> None:
        if fp16:
            b.op("Cast", [name], outputs=[output], to=TensorProto.FLOAT)
        else:
            b.op("Identity", [name], outputs=[output])

    x = C.INPUT
    if normalization is not None:
        x = b.op1("Sub", [x, b.const("norm_mean", normalization.mean)], "centered")
        x = b.op1("Div", [x, b.const("norm_std", normalization.std)], "normalized")
    x = to_compute(x)
    x = b.op1("Transpose", [x], "time_major", perm=[1, 0, 2])  # [T, B, F]

    direction = "bidirectional" if dirs == 2 else "forward"
    finals_h, finals_c = [], []
    need_last_y = spec.task == C.MANY_TO_MANY or dirs == 2
    for layer in range(layers):
        w, r, bias = onnx_lstm_weights(lstm, layer)
        inputs = [
            x,
            b.fconst(f"lstm{layer}_W", w),
            b.fconst(f"lstm{layer}_R", r),
            b.fconst(f"lstm{layer}_B", bias),
            C.SEQUENCE_LENS,
        ]
        if spec.stateful:
            starts, ends, axes = (b.const("i", np.array([v], np.int64)) for v in (layer, layer + 1, 0))
            h0 = to_compute(b.op1("Slice", [C.INITIAL_H, starts, ends, axes], f"lstm{layer}_h0"))
            c0 = to_compute(b.op1("Slice", [C.INITIAL_C, starts, ends, axes], f"lstm{layer}_c0"))
            inputs += [h0, c0]
        last = layer == layers - 1
        y = "" if last and not need_last_y else f"lstm{layer}_Y"
        yh, yc = f"lstm{layer}_Y_h", f"lstm{layer}_Y_c"
        b.op("LSTM", inputs, outputs=[y, yh, yc], hidden_size=hidden, direction=direction, layout=0)
        finals_h.append(yh)
        finals_c.append(yc)
        if y:
            if dirs == 1:  # [T, 1, B, H] -> [T, B, H]
                x = b.op1("Squeeze", [y, b.const("axes", np.array([1], np.int64))], f"lstm{layer}_out")
            else:  # [T, 2, B, H] -> [T, B, 2, H] -> [T, B, 2H] (forward features first, as PyTorch)
                t = b.op1("Transpose", [y], perm=[0, 2, 1, 3])
                x = b.op1("Reshape", [t, b.const("shape", np.array([0, 0, -1], np.int64))],
                          f"lstm{layer}_out")

    if spec.stateful:
        to_float32(b.op1("Concat", finals_h, "final_h_all", axis=0), C.FINAL_H)
        to_float32(b.op1("Concat", finals_c, "final_c_all", axis=0), C.FINAL_C)

    features = hidden * dirs
    if fp16:
        # The LSTM layers (nearly all the compute) run in fp16; the small head and the mask run
        # in fp32. ONNX Runtime 1.32's CPU graph optimiser crashed (SIGSEGV) on an fp16 head over
        # a 3-D many_to_many output, and fp32 here costs next to nothing.
        b.float_type, b.np_float = TensorProto.FLOAT, np.float32
        if need_last_y:
            x = b.op1("Cast", [x], "lstm_out_fp32", to=TensorProto.FLOAT)
        else:
            finals_h[-1] = b.op1("Cast", [finals_h[-1]], "last_h_fp32", to=TensorProto.FLOAT)
    if spec.task == C.MANY_TO_ONE:
        if dirs == 1:  # the last layer's Y_h is its output at each row's last valid step
            last_step = b.op1("Squeeze", [finals_h[-1], b.const("axes", np.array([0], np.int64))],
                              "last_step")
        else:
            batch_major = b.op1("Transpose", [x], "batch_major", perm=[1, 0, 2])  # [B, T, 2H]
            lens_minus_1 = b.op1("Sub", [C.SEQUENCE_LENS, b.const("one", np.array(1, np.int32))])
            index = b.op1("Cast", [lens_minus_1], to=TensorProto.INT64)
            index = b.op1("Unsqueeze", [index, b.const("axes", np.array([1], np.int64))], "last_index")
            last_step = b.op1("GatherND", [batch_major, index], "last_step", batch_dims=1)
        out = _head_ops(b, model.head, last_step, features)
    else:
        batch_major = b.op1("Transpose", [x], "batch_major", perm=[1, 0, 2])  # [B, T, F']
        out = _head_ops(b, model.head, batch_major, features)
        time = b.op1("Shape", [C.INPUT], "time_len", start=1, end=2)
        time = b.op1("Squeeze", [time, b.const("axes", np.array([0], np.int64))])
        steps = b.op1("Range", [b.const("zero", np.array(0, np.int64)), time,
                                b.const("one", np.array(1, np.int64))], "steps")
        steps = b.op1("Unsqueeze", [steps, b.const("axes", np.array([0], np.int64))])  # [1, T]
        lens = b.op1("Cast", [C.SEQUENCE_LENS], to=TensorProto.INT64)
        lens = b.op1("Unsqueeze", [lens, b.const("axes", np.array([1], np.int64))])  # [B, 1]
        valid = b.op1("Less", [steps, lens], "valid")  # [B, T]
        valid = b.op1("Unsqueeze", [valid, b.const("axes", np.array([2], np.int64))])
        out = b.op1("Where", [valid, out, b.fconst("zero", 0.0)], "masked")
    b.op("Identity", [out], outputs=[C.OUTPUT])

    def value_info(name: str, elem: int, shape: list[int]) -> onnx.ValueInfoProto:
        dims: list[int | str] = []
        dynamic = iter(["batch", "time"])
        for d in shape:
            dims.append(next(dynamic) if d == -1 else d)
        return helper.make_tensor_value_info(name, elem, dims)

    def state_info(name: str) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, [layers, "batch", hidden])

    in_shapes = spec.input_shapes()
    graph_inputs = [
        value_info(C.INPUT, TensorProto.FLOAT, in_shapes[C.INPUT]),
        helper.make_tensor_value_info(C.SEQUENCE_LENS, TensorProto.INT32, ["batch"]),
    ]
    out_shapes = spec.output_shapes()
    graph_outputs = [value_info(C.OUTPUT, TensorProto.FLOAT, out_shapes[C.OUTPUT])]
    if spec.stateful:
        graph_inputs += [state_info(C.INITIAL_H), state_info(C.INITIAL_C)]
        graph_outputs += [state_info(C.FINAL_H), state_info(C.FINAL_C)]

    graph = helper.make_graph(
        b.nodes, "stacked_lstm", graph_inputs, graph_outputs, initializer=b.inits,
        doc_string=f"{layers}-layer {'bidirectional ' if dirs == 2 else ''}LSTM, {spec.task}",
    )
    onnx_model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="lstm-export",
    )
    onnx_model.ir_version = IR_VERSION
    set_metadata(onnx_model, spec)
    return onnx_model


def set_metadata(onnx_model: onnx.ModelProto, spec: C.ModelSpec) -> None:
    """Replace the model's metadata_props with exactly ``spec.to_metadata()``."""
    del onnx_model.metadata_props[:]
    for key, value in sorted(spec.to_metadata().items()):
        entry = onnx_model.metadata_props.add()
        entry.key, entry.value = key, value


def torch_version() -> str:
    return str(torch.__version__)
