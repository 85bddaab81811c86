"""The model card: what the model costs, layer by layer, and what was measured on export.

FLOPs are counted per time step and per sequence, a multiply-add as 2: per LSTM direction
``8 H (in + H)`` for the input and recurrent products, ``8 H`` for the two bias adds, ``12 H`` for
the gate activations and the cell/hidden updates. Every layer after the first reads ``H`` (or
``2H``) features, so each extra layer costs about as much as the first or more: the cost of
depth, made visible in ``layers[].flops_share``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from app import contract as C

from .model import StackedLSTM


def lstm_layer_cost(in_features: int, hidden: int, directions: int) -> tuple[int, int]:
    """(parameters, FLOPs per step) of one LSTM layer."""
    params = directions * (4 * hidden * (in_features + hidden) + 8 * hidden)
    flops = directions * (8 * hidden * (in_features + hidden) + 8 * hidden + 12 * hidden)
    return params, flops


def head_cost(head: nn.Module) -> tuple[int, int]:
    """(parameters, FLOPs per application) of the per-step head."""
    layers = list(head) if isinstance(head, nn.Sequential) else [head]
    params = sum(p.numel() for p in head.parameters())
    flops = 0
    for layer in layers:
        if isinstance(layer, nn.Linear):
            flops += 2 * layer.in_features * layer.out_features + layer.out_features
    return params, flops


def cost(model: StackedLSTM) -> dict[str, Any]:
    dirs = model.num_directions
    layers = []
    for i in range(model.num_layers):
        in_features = model.input_size if i == 0 else model.hidden_size * dirs
        params, flops = lstm_layer_cost(in_features, model.hidden_size, dirs)
        layers.append({"layer": i, "in_features": in_features, "parameters": params,
                       "flops_per_step": flops})
    head_params, head_flops = head_cost(model.head)
    lstm_flops = sum(layer["flops_per_step"] for layer in layers)
    # many_to_many applies the head at every step, many_to_one once per sequence.
    per_step = lstm_flops + (head_flops if model.task == C.MANY_TO_MANY else 0)
    for layer in layers:
        layer["flops_share"] = round(layer["flops_per_step"] / per_step, 4)
    return {
        "parameters": {
            "total": sum(p.numel() for p in model.parameters()),
            "lstm": sum(p.numel() for p in model.lstm.parameters()),
            "head": head_params,
        },
        "flops_per_step": per_step,
        "head_flops": {"per_application": head_flops,
                       "applied": "every step" if model.task == C.MANY_TO_MANY else "once per sequence"},
        "layers": layers,
    }


def format_card(card: dict[str, Any]) -> str:
    """A short human-readable rendering of the card (what the CLI prints)."""
    spec = card["spec"]
    lines = [
        f"model {card['name']} version {card['version']} ({card['precision']})  -> {card.get('path', '')}",
        f"  {spec['num_layers']}-layer {'bidirectional ' if spec['bidirectional'] else ''}LSTM, "
        f"input {spec['input_size']}, hidden {spec['hidden_size']}, output {spec['output_size']}, "
        f"{spec['task']}",
        f"  parameters {card['parameters']['total']:,}   FLOPs/step {card['flops_per_step']:,}",
    ]
    for layer in card["layers"]:
        lines.append(f"    layer {layer['layer']}: {layer['parameters']:>9,} params  "
                     f"{layer['flops_per_step']:>10,} FLOPs/step  {100 * layer['flops_share']:5.1f} %")
    ver = card["verification"]
    chunk = ver.get("chunked_state_max_error")
    lines.append(f"  fp32 parity vs PyTorch: max abs error {ver['max_abs_error']:.2e} (tolerance "
                 f"{ver['tolerance']:g})" + ("" if chunk is None else f", chunked state {chunk:.2e}"))
    lat = card.get("latency")
    if lat and lat.get("measurements"):
        for m in lat["measurements"]:
            lines.append(f"  ORT latency batch {m['batch']:>3} x {m['length']} steps: "
                         f"{m['median_ms']:.3f} ms  ({m['sequences_per_s']:,.0f} seq/s, "
                         f"{lat['intra_op_threads']} thread)")
    elif lat:
        lines.append(f"  ORT latency: {lat.get('skipped', 'not measured')}")
    prec = card.get("precision_comparison")
    if prec:
        if prec.get("measured"):
            lines.append(f"  {card['precision']} vs fp32: max abs error {prec['max_abs_error_vs_torch']:.3g}, "
                         f"rel L2 {prec['rel_l2_error_vs_fp32']:.3g}, speedup "
                         + ", ".join(f"b{k} {v}x" for k, v in prec.get("speedup", {}).items()))
        else:
            lines.append(f"  {card['precision']}: not measured here ({prec.get('reason')})")
    for key, value in (card.get("evaluation") or {}).items():
        lines.append(f"  {key}: {value}")
    return "\n".join(lines)
