"""Settings: one class, environment variables with the LSTM_SERVE_ prefix, CLI flags, and a
README table that cannot drift from the code."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from pydantic import ValidationError

from app.config import Settings, settings_table
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
    parsed = Settings(_cli_parse_args=["--max-batch-size", "5", "--max-queue-delay-ms", "0"], _cli_kebab_case=True)
    assert parsed.max_batch_size == 5 and parsed.max_queue_delay_ms == 0


def test_readme_settings_table_matches_the_code() -> None:
    readme = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- settings-table:start[^>]*-->\n(.*?)<!-- settings-table:end -->", readme, re.S)
    assert m, "README lost its settings-table markers"
    assert m.group(1).strip() == settings_table().strip(), (
        "README configuration table is stale; regenerate it from app.config.settings_table()"
    )
