"""``lstm-serve --help``: every setting as a person types it, grouped by what it is for.

pydantic-settings parses the flags (``app.__main__``), but its own help prints Python types
(``dict[str,list[int]]``, ``{SecretStr,null}``) and ``null``. This help is built from the same
``Settings`` fields, so it cannot drift: the value to type (a number of seconds, a path, a JSON
object, one of a few words), the default as it would be typed (``none`` for unset) and the
first sentence of the field's documentation. Every field belongs to exactly one group (tested).
"""

from __future__ import annotations

import textwrap
import types
import typing
from pathlib import Path

from pydantic import SecretStr
from pydantic.fields import FieldInfo

from app.config import ENV_PREFIX, NONE, Settings

PROG = "lstm-serve"

GROUPS: dict[str, tuple[str, ...]] = {
    "serving": ("model_repository", "host", "port", "grpc_port", "providers", "intra_op_threads", "small_batch_max_size",
                "allow_spinning", "cpu_mem_arena", "warmup", "gzip_min_bytes"),
    "batching": ("max_batch_size", "max_queue_delay_ms", "dispatch_when_idle", "max_length_ratio", "max_queue_size",
                 "max_batches_in_flight"),
    "limits": ("max_sequence_length", "max_request_bytes", "request_timeout_s", "body_timeout_s",
               "keep_alive_timeout_s", "max_connections", "grpc_max_concurrent_streams",
               "sequence_idle_timeout_s", "max_live_sequences"),
    "models at run time": ("model_versions", "model_control_mode", "repository_poll_s"),
    "processes": ("workers", "engine", "drain_timeout_s"),
    "security": ("api_key", "api_key_file"),
    "logging": ("log_level", "access_log"),
}

# Defaults that are not a value one would type.
_SHOWN_DEFAULTS = {"model_repository": "the models/ directory shipped with lstm-serve (the demo model)"}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _args(annotation: object) -> tuple[object, ...]:
    return typing.get_args(annotation) if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union else (annotation,)


def metavar(name: str, field: FieldInfo) -> str:
    """What to type after the flag, in words a user reads."""
    kinds = [a for a in _args(field.annotation) if a is not type(None)]
    kind = kinds[0] if kinds else str
    if typing.get_origin(kind) is typing.Literal:
        return "|".join(str(v) for v in typing.get_args(kind))
    if kind is bool:
        return "true|false"
    if kind is Path:
        return "PATH"
    if kind is SecretStr:
        return "TOKEN"
    if typing.get_origin(kind) is dict:
        return "JSON-OBJECT"
    if kind is float:
        return "SECONDS" if name.endswith("_s") else "MILLISECONDS" if name.endswith("_ms") else "NUMBER"
    if kind is int:
        return "BYTES" if name.endswith("_bytes") else "PORT" if name.endswith("port") else "N"
    return "ADDRESS" if name == "host" else "TEXT"


def shown_default(name: str, field: FieldInfo) -> str:
    if name in _SHOWN_DEFAULTS:
        return _SHOWN_DEFAULTS[name]
    value = field.default_factory() if field.default_factory is not None else field.default  # type: ignore[call-arg]
    if value is None:
        return NONE
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        return "{}" if not value else str(value)
    return str(value)


def _first_sentence(text: str) -> str:
    text = " ".join(text.split()).replace("``", "").replace("*", "")
    end = text.find(". ")
    return text if end < 0 else text[: end + 1]


def help_text(width: int = 100) -> str:
    fields = Settings.model_fields
    out = [
        f"usage: {PROG} [--setting VALUE ...]",
        "",
        "Serve stacked LSTMs from a model repository over the KServe v2 / Open Inference Protocol.",
        f"Every flag is also an environment variable {ENV_PREFIX}<NAME> (--max-batch-size 32 or",
        f"{ENV_PREFIX}MAX_BATCH_SIZE=32); the flag wins. '{NONE}' leaves an optional setting unset.",
        "All settings, in full: docs/configuration.md.",
        "",
        "  -h, --help  show this help and exit",
    ]
    for group, names in GROUPS.items():
        out += ["", f"{group}:"]
        for name in names:
            f = fields[name]
            out.append(f"  {flag(name)} {metavar(name, f)}")
            body = f"{_first_sentence(f.description or '')} (default: {shown_default(name, f)}; {ENV_PREFIX}{name.upper()})"
            out += textwrap.wrap(body, width=width, initial_indent=" " * 6, subsequent_indent=" " * 6,
                             break_on_hyphens=False)
    return "\n".join(out) + "\n"


def settings_table() -> str:
    """The configuration table of docs/configuration.md, generated from the settings (a test
    keeps the page in step: ``python -c 'from app.cli import settings_table; print(settings_table())'``)."""
    rows = ["| setting | environment variable | default | meaning |", "|---|---|---|---|"]
    for group, names in GROUPS.items():
        rows.append(f"| **{group}** | | | |")
        for name in names:
            f = Settings.model_fields[name]
            text = " ".join((f.description or "").split()).replace("``", "`").replace("|", "\\|")
            cell = f"`{flag(name)} {metavar(name, f)}`".replace("|", "\\|")
            rows.append(f"| {cell} | `{ENV_PREFIX}{name.upper()}` | {shown_default(name, f)} | {text} |")
    return "\n".join(rows)
