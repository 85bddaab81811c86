"""Settings: one class, environment variables with the LSTM_SERVE_ prefix, CLI flags, a help a
person reads, and a configuration page that cannot drift from the code."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from pydantic import ValidationError

from app.cli import GROUPS, help_text, settings_table
from app.config import Settings
from tests.conftest import ROOT


def test_environment_variables_set_every_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LSTM_SERVE_MAX_BATCH_SIZE", "7")
    monkeypatch.setenv("LSTM_SERVE_MODEL_VERSIONS", '{"demo": [1, 2]}')
    monkeypatch.setenv("LSTM_SERVE_PROVIDERS", "cpu")
    s = Settings()
    assert s.max_batch_size == 7 and s.model_versions == {"demo": [1, 2]} and s.providers == "cpu"


def test_invalid_settings_are_refused_with_the_field_named() -> None:
    with pytest.raises(ValidationError, match="max_queue_size"):
        Settings(max_batch_size=64, max_queue_size=8)
    with pytest.raises(ValidationError, match="providers"):
        Settings(providers="tpu")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="model_control_mode=explicit needs engine=shared"):
        Settings(workers=2, engine="per_worker", model_control_mode="explicit")
    with pytest.raises(ValidationError, match="model_control_mode"):
        Settings(model_control_mode="auto")  # type: ignore[arg-type]
    assert Settings(workers=2, engine="per_worker", model_control_mode="poll").repository_poll_s == 15.0


def test_cli_flags_override_and_help_lists_every_setting() -> None:
    out = subprocess.run([sys.executable, "-m", "app", "--help"], capture_output=True, text=True, check=True).stdout
    for name in Settings.model_fields:
        assert f"--{name.replace('_', '-')}" in out, name
    parsed = Settings(_cli_parse_args=["--max-batch-size", "5", "--max-queue-delay-ms", "3"], _cli_kebab_case=True)
    assert parsed.max_batch_size == 5 and parsed.max_queue_delay_ms == 3


def test_configuration_page_table_matches_the_code() -> None:
    page = (ROOT / "docs" / "configuration.md").read_text()
    m = re.search(r"<!-- settings-table:start[^>]*-->\n(.*?)<!-- settings-table:end -->", page, re.S)
    assert m, "docs/configuration.md lost its settings-table markers"
    assert m.group(1).strip() == settings_table().strip(), (
        "docs/configuration.md table is stale; regenerate it from app.cli.settings_table()"
    )


def test_every_setting_is_in_exactly_one_help_group() -> None:
    grouped = [name for names in GROUPS.values() for name in names]
    assert sorted(grouped) == sorted(Settings.model_fields), "add the new setting to one group of app.cli.GROUPS"
    assert len(grouped) == len(set(grouped))


def test_help_shows_values_as_a_user_types_them() -> None:
    out = subprocess.run([sys.executable, "-m", "app", "--help"], capture_output=True, text=True, check=True).stdout
    assert out == help_text()
    for word in ("null", "dict[", "SecretStr", "Optional", "list[int]", "NoneType", "{Path"):
        assert word not in out, word
    for expected in ("--model-versions JSON-OBJECT", "--model-repository PATH", "--request-timeout-s SECONDS",
                     "--max-batches-in-flight N", "(default: none;", "--api-key TOKEN",
                     "--engine shared|per_worker", "--warmup true|false", "(default: true;", "LSTM_SERVE_WORKERS"):
        assert expected in out, expected
    headings = [line[:-1] for line in out.splitlines() if line.endswith(":") and not line.startswith(" ")]
    assert headings == list(GROUPS)


def test_none_unsets_an_optional_setting_and_only_those(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed = Settings(_cli_parse_args=["--intra-op-threads", "none", "--max-batches-in-flight", "None",
                                       "--model-control-mode", "none"], _cli_kebab_case=True)
    assert parsed.intra_op_threads is None and parsed.max_batches_in_flight is None
    assert parsed.model_control_mode == "none"  # a word of its own there, not "unset"
    monkeypatch.setenv("LSTM_SERVE_API_KEY_FILE", "none")
    assert Settings().api_key_file is None
    with pytest.raises(ValidationError, match="max_batch_size"):
        Settings(max_batch_size="none")  # type: ignore[arg-type]
