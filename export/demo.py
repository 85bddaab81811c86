"""The demo model: a small stacked-LSTM forecaster trained on real data shipped in a package.

Data: ``vega_datasets.local_data.seattle_weather()`` (daily Seattle weather 2012-2015, shipped
inside the vega_datasets wheel: no download). Features per day: precipitation (mm), temp_max,
temp_min (deg C), wind (m/s). Target: the next day's temp_max. Train on 2012-2014, test on 2015.

Each training row is the last ``L`` days before the target, ``L`` drawn from 3..WINDOW and
right-padded, so the model is trained through ``forward(x, lengths)`` to work at any history
length a client sends. Feature normalisation is baked into the graph (clients send raw values)
and the target's de-normalisation is folded into the head (the output is deg C).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from app import contract as C

from . import ortrun
from .exporter import export_model
from .graph import Normalization, build_graph
from .model import StackedLSTM
from .precision import quantize_int8

FEATURES = ("precipitation", "temp_max", "temp_min", "wind")
TARGET = "temp_max"
WINDOW = 14
MIN_LENGTH = 3
DEFAULTS = {"epochs": 60, "hidden_size": 32, "num_layers": 2, "dropout": 0.1, "lr": 3e-3, "batch": 32}


def load_data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features [days, 4] float32, target column [days], dates) in date order."""
    from vega_datasets import local_data

    df = local_data.seattle_weather().sort_values("date").reset_index(drop=True)
    return (df[list(FEATURES)].to_numpy(np.float32), df[TARGET].to_numpy(np.float32),
            df["date"].to_numpy())


def windows(features: np.ndarray, target: np.ndarray, ends: np.ndarray, lengths: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Right-padded rows: row i holds days ends[i]-lengths[i]+1 .. ends[i]; target day ends[i]+1."""
    x = np.zeros((len(ends), WINDOW, features.shape[1]), np.float32)
    for i, (end, n) in enumerate(zip(ends, lengths)):
        x[i, :n] = features[end - n + 1 : end + 1]
    return x, lengths.astype(np.int64), target[ends + 1]


def train_demo(*, epochs: int | None = None, max_steps: int | None = None,
               hidden_size: int | None = None, num_layers: int | None = None, seed: int = 0,
               progress: bool = True) -> tuple[StackedLSTM, Normalization, dict[str, Any]]:
    """Train the forecaster; return the model (head outputs deg C), the input normalisation and
    the evaluation (test MAE vs the persistence baseline)."""
    epochs = DEFAULTS["epochs"] if epochs is None else epochs
    hidden_size = hidden_size or DEFAULTS["hidden_size"]
    num_layers = num_layers or DEFAULTS["num_layers"]
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    # A model this small gains nothing from intra-op threads, and spinning threads suffer on a
    # shared machine; one thread also makes the result independent of the core count.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(epochs, max_steps, hidden_size, num_layers, seed, progress, rng)
    finally:
        torch.set_num_threads(threads)


def _train(epochs: int, max_steps: int | None, hidden_size: int, num_layers: int, seed: int,
           progress: bool, rng: np.random.Generator
           ) -> tuple[StackedLSTM, Normalization, dict[str, Any]]:
    from tqdm import tqdm


    features, target, dates = load_data()
    years = dates.astype("datetime64[Y]").astype(int) + 1970
    last_train = int(np.nonzero(years <= 2014)[0].max())  # target day must be in 2012-2014
    train_ends = np.arange(WINDOW - 1, last_train)  # end day e, target e + 1 <= last_train
    test_ends = np.arange(last_train, len(target) - 1)  # targets in 2015

    mean = features[: last_train + 1].mean(axis=0)
    std = features[: last_train + 1].std(axis=0)
    norm = Normalization(mean.astype(np.float32), std.astype(np.float32))
    y_mean, y_std = float(target[: last_train + 1].mean()), float(target[: last_train + 1].std())

    model = StackedLSTM(len(FEATURES), hidden_size, num_layers, 1, dropout=DEFAULTS["dropout"])
    opt = torch.optim.Adam(model.parameters(), lr=DEFAULTS["lr"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
    loss_fn = nn.MSELoss()
    steps = 0
    bar = tqdm(range(epochs), desc="training demo", unit="epoch", disable=not progress)
    for _ in bar:
        model.train()
        order = rng.permutation(train_ends)
        lengths = rng.integers(MIN_LENGTH, WINDOW + 1, size=len(order))
        total, count = 0.0, 0
        for start in range(0, len(order), DEFAULTS["batch"]):
            x, lens, y = windows(features, target, order[start : start + DEFAULTS["batch"]],
                                 lengths[start : start + DEFAULTS["batch"]])
            pred = model(torch.from_numpy(norm.apply(x)), torch.from_numpy(lens))
            loss = loss_fn(pred[:, 0], torch.from_numpy((y - y_mean) / y_std))
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            total, count, steps = total + loss.item() * len(y), count + len(y), steps + 1
            if max_steps is not None and steps >= max_steps:
                break
        sched.step()
        bar.set_postfix(loss=f"{total / max(count, 1):.4f}")
        if max_steps is not None and steps >= max_steps:
            break
    bar.close()

    # Fold the target's de-normalisation into the head: the model now outputs deg C.
    model.eval()
    with torch.no_grad():
        model.head.weight.mul_(y_std)
        model.head.bias.mul_(y_std).add_(y_mean)

    x_test, lens_test, y_test = windows(features, target, test_ends,
                                        np.full(len(test_ends), WINDOW))
    with torch.no_grad():
        pred = model(torch.from_numpy(norm.apply(x_test)), torch.from_numpy(lens_test))[:, 0].numpy()
    x_short, lens_short, _ = windows(features, target, test_ends, np.full(len(test_ends), 7))
    with torch.no_grad():
        pred7 = model(torch.from_numpy(norm.apply(x_short)), torch.from_numpy(lens_short))[:, 0].numpy()
    persistence = target[test_ends]  # tomorrow's max = today's max
    evaluation = {
        "dataset": "vega_datasets seattle-weather (daily, Seattle, 2012-2015; shipped in the package)",
        "features": list(FEATURES),
        "target": "next day's temp_max (deg C)",
        "split": f"train: targets 2012-2014 ({len(train_ends)} rows); test: targets in 2015 "
                 f"({len(test_ends)} rows)",
        "window_days": WINDOW,
        "test_mae_c": round(float(np.abs(pred - y_test).mean()), 4),
        "test_mae_c_7_days_history": round(float(np.abs(pred7 - y_test).mean()), 4),
        "persistence_baseline_mae_c": round(float(np.abs(persistence - y_test).mean()), 4),
        "training": {"epochs": epochs, "steps": steps, "seed": seed, **{k: v for k, v in DEFAULTS.items()
                     if k != "epochs"}, "hidden_size": hidden_size, "num_layers": num_layers},
    }
    evaluation["_test"] = (x_test, lens_test.astype(np.int32), y_test)
    return model, norm, evaluation


def _onnx_eval(model: StackedLSTM, norm: Normalization, test: tuple[np.ndarray, np.ndarray, np.ndarray]
               ) -> dict[str, Any]:
    """Test MAE of the fp32 graph on raw features, and of its int8 variant, with speed."""
    x, lens, y = test
    spec = C.ModelSpec(task=model.task, input_size=model.input_size,  # type: ignore[arg-type]
                       hidden_size=model.hidden_size, num_layers=model.num_layers,
                       output_size=model.output_size)
    fp32 = build_graph(model, spec, norm)
    int8 = quantize_int8(fp32, C.ModelSpec(**{**spec.__dict__, "precision": "int8"}))
    result: dict[str, Any] = {}
    for label, graph in (("fp32", fp32), ("int8", int8)):
        sess = ortrun.session(graph.SerializeToString())
        pred = ortrun.run(sess, spec, x, lens)[C.OUTPUT][:, 0]
        result[label] = {
            "test_mae_c": round(float(np.abs(pred - y).mean()), 4),
            "latency_ms_batch_1": ortrun.latency(sess, spec, length=WINDOW, batch=1, runs=50)["median_ms"],
            "latency_ms_batch_64": ortrun.latency(sess, spec, length=WINDOW, batch=64, runs=20)["median_ms"],
            "_pred": pred,
        }
    diff = result["int8"].pop("_pred") - result["fp32"].pop("_pred")
    result["int8"]["max_abs_diff_vs_fp32_c"] = round(float(np.abs(diff).max()), 5)
    result["int8"]["speedup"] = {
        str(b): round(result["fp32"][f"latency_ms_batch_{b}"] / result["int8"][f"latency_ms_batch_{b}"], 2)
        for b in (1, 64)
    }
    return result


def run_demo(repository: str | Path = "models", name: str = "demo", version: int | None = None, *,
             epochs: int | None = None, max_steps: int | None = None, hidden_size: int | None = None,
             num_layers: int | None = None, train_seed: int = 0, int8: bool = False,
             progress: bool = True, **options: Any) -> list[Path]:
    """Train and export the demo (fp32; plus int8 as the next version with ``int8``)."""
    model, norm, evaluation = train_demo(epochs=epochs, max_steps=max_steps, hidden_size=hidden_size,
                                         num_layers=num_layers, seed=train_seed, progress=progress)
    evaluation["onnx_runtime_on_real_data"] = _onnx_eval(model, norm, evaluation.pop("_test"))
    common = dict(normalization=norm, feature_names=FEATURES,
                  card_extra={"evaluation": evaluation}, **options)
    paths = [export_model(model, repository, name, version, **common)]
    if int8:
        paths.append(export_model(model, repository, name, precision="int8", **common))
    return paths
