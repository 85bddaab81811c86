"""``lstm-export``: export a trained stacked LSTM checkpoint, or train and export the demo.

Exit status: 0 exported; 1 verification failed (the max error is printed); 2 the input was
refused (bad checkpoint, unsupported model, bad arguments, existing version).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

EPILOG = """\
checkpoint formats (export):
  {"config": {...}, "state_dict": {...}}   StackedLSTM.save_checkpoint(path) writes this (recommended)
  a StackedLSTM state dict                 architecture read off the shapes; add --task / --config
  torch.save(model)                        a pickled module: needs --allow-pickle (runs code from the file)

every export is verified against PyTorch on ragged batches (max abs error <= --tolerance) and
written atomically as REPOSITORY/NAME/VERSION/model.onnx with its model card model.json beside it.
--fp16/--int8 write each variant as its own next version after the fp32 one. Unversioned
requests keep going to the fp32 version (the exporter pins it as default_version in
REPOSITORY/NAME/settings.json); --variant-default makes the (last) variant the default instead.

examples:
  lstm-export export ckpt.pt --repository models --name traffic --int8
  lstm-export demo --repository models
"""


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repository", "-r", default="models", type=Path,
                   help="model repository directory (default: %(default)s)")
    p.add_argument("--version", type=int, default=None,
                   help="version number to write (default: the next free positive integer); "
                        "an existing version is never overwritten")
    p.add_argument("--tolerance", type=float, default=1e-5,
                   help="max absolute error vs per-sequence PyTorch, float32 (default: %(default)g)")
    p.add_argument("--no-card-latency", action="store_true",
                   help="skip the ONNX Runtime latency measurement in the model card (faster)")
    p.add_argument("--reference-length", type=int, default=50,
                   help="sequence length for the card's latency at batch 1 and 64 (default: %(default)s)")
    p.add_argument("--latency-runs", type=int, default=30,
                   help="timed runs at batch 1 (a third of them at batch 64) (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed for the verification batches")
    p.add_argument("--quiet", "-q", action="store_true", help="do not print the model card")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lstm-export",
        description="Export trained PyTorch stacked LSTMs to padding-aware, verified ONNX "
                    "artifacts for lstm-serve.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{export,demo}")

    ex = sub.add_parser("export", help="export a checkpoint", description="Export a checkpoint.",
                        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    ex.add_argument("checkpoint", type=Path, help="file written by torch.save (see formats below)")
    ex.add_argument("--name", "-n", default=None,
                    help="model name in the repository (default: the checkpoint's file stem)")
    ex.add_argument("--config", default=None,
                    help="StackedLSTM arguments as a JSON file or inline JSON, e.g. "
                         "'{\"task\": \"many_to_many\"}'; overrides the checkpoint's")
    ex.add_argument("--task", choices=["many_to_one", "many_to_many"], default=None,
                    help="the model's task, when the checkpoint does not say (default: many_to_one)")
    ex.add_argument("--normalization", default=None,
                    help="JSON file or inline JSON {\"mean\": [...], \"std\": [...]}, one value per "
                         "feature; baked into the graph so clients send raw features")
    ex.add_argument("--feature-names", default=None,
                    help="comma-separated input feature names, one per feature (stored in metadata)")
    ex.add_argument("--fp16", action="store_true",
                    help="also write an fp16 variant (for GPUs) as the next version, with its error and speed")
    ex.add_argument("--int8", action="store_true",
                    help="also write an int8 variant (ONNX Runtime dynamic quantisation, for CPUs) "
                         "as the next version, with its error and speed")
    ex.add_argument("--variant-default", action="store_true",
                    help="make the variant (with --fp16/--int8; the last one written) what unversioned "
                         "requests get; by default they keep getting the fp32 version")
    ex.add_argument("--allow-pickle", action="store_true",
                    help="allow checkpoints that are pickled modules (torch.save(model)); runs code "
                         "from the file, so only for files you trust")
    _add_common(ex)

    demo = sub.add_parser(
        "demo", help="train the demo forecaster on real data and export it",
        description="Train a small stacked-LSTM forecaster of next-day maximum temperature on "
                    "the Seattle weather data shipped in vega_datasets (no download) and export it.",
    )
    demo.add_argument("--name", "-n", default="demo", help="model name (default: %(default)s)")
    demo.add_argument("--epochs", type=int, default=None, help="training epochs (default: 60)")
    demo.add_argument("--max-steps", type=int, default=None,
                      help="stop after this many optimiser steps (for quick runs)")
    demo.add_argument("--hidden-size", type=int, default=None, help="LSTM hidden size (default: 32)")
    demo.add_argument("--num-layers", type=int, default=None, help="LSTM layers (default: 2)")
    demo.add_argument("--train-seed", type=int, default=0, help="seed for training (default: %(default)s)")
    demo.add_argument("--int8", action="store_true",
                      help="also write the int8 variant as the next version")
    demo.add_argument("--no-progress", action="store_true", help="hide the training progress bar")
    _add_common(demo)
    return parser


def _json_arg(value: str | None, what: str) -> Any:
    if value is None:
        return None
    text = value
    if not value.lstrip().startswith(("{", "[")):
        path = Path(value)
        if not path.is_file():
            raise SystemExit(_fail(f"{what}: {value} is neither inline JSON nor an existing file"))
        text = path.read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SystemExit(_fail(f"{what}: invalid JSON ({exc})")) from None


def _fail(message: str, code: int = 2) -> int:
    print(f"lstm-export: error: {message}", file=sys.stderr)
    return code


def _options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "tolerance": args.tolerance,
        "card_latency": not args.no_card_latency,
        "reference_length": args.reference_length,
        "latency_runs": args.latency_runs,
        "seed": args.seed,
        "verbose": not args.quiet,
    }


def _run(args: argparse.Namespace) -> int:
    from .errors import ExportError, VerificationError

    try:
        if args.command == "demo":
            from .demo import run_demo

            paths = run_demo(
                args.repository, args.name, args.version, epochs=args.epochs,
                max_steps=args.max_steps, hidden_size=args.hidden_size, num_layers=args.num_layers,
                train_seed=args.train_seed, int8=args.int8, progress=not args.no_progress,
                **_options(args),
            )
        else:
            from .checkpoint import load_checkpoint
            from .exporter import export_model

            config = _json_arg(args.config, "--config") or {}
            if args.task:
                config["task"] = args.task
            model = load_checkpoint(args.checkpoint, config, allow_pickle=args.allow_pickle)
            names = [n.strip() for n in args.feature_names.split(",")] if args.feature_names else None
            common = dict(normalization=_json_arg(args.normalization, "--normalization"),
                          feature_names=names, **_options(args))
            name = args.name or args.checkpoint.stem
            paths = [export_model(model, args.repository, name, args.version, **common)]
            variants = [p for p, wanted in (("fp16", args.fp16), ("int8", args.int8)) if wanted]
            for i, precision in enumerate(variants):
                default = args.variant_default and i == len(variants) - 1
                paths.append(export_model(model, args.repository, name, precision=precision, default=default, **common))
    except VerificationError as exc:
        print(f"lstm-export: verification failed: max error {exc.max_error:.3g} > tolerance "
              f"{exc.tolerance:g}\n{exc}", file=sys.stderr)
        return 1
    except (ExportError, ValueError) as exc:
        return _fail(str(exc))
    for path in paths:
        print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return _run(args)


if __name__ == "__main__":
    sys.exit(main())
