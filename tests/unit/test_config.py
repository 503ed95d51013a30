"""Configuration: file plus environment, the original config.json, and one
clear line per bad key with a non-zero exit."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from aigc_gateway.config import ConfigError, load


def test_defaults_and_env_overrides(tmp_path: Path) -> None:
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text("domain: aigc.example.com\nservers:\n  template:\n    listen: 0.0.0.0:7000\n")
    settings = load(cfg, environ={"AIGC_GATEWAY__SERVERS__TEMPLATE__LISTEN": "0.0.0.0:7001",
                                  "AIGC_GATEWAY__NAMESPACES": "[aigc, games]",
                                  "AIGC_GATEWAY__AUDIT__DENIED_PER_MINUTE": "5",
                                  "AIGC_TESTBED_STATE": "/ignored/not/ours"})
    assert settings.domain == "aigc.example.com"
    assert settings.servers.template.listen == "0.0.0.0:7001"
    assert settings.servers.template.dial_target() == "127.0.0.1:7001"
    assert settings.namespaces == ["aigc", "games"]
    assert settings.audit.denied_per_minute == 5
    assert settings.database_url().startswith("sqlite+aiosqlite:///")


def test_original_config_json_is_accepted(tmp_path: Path) -> None:
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"namespaces": ["xxx"], "gss_labels": {"app": "aigc"}}))
    settings = load(cfg, environ={})
    assert settings.namespaces == ["xxx"] and settings.gss_labels == {"app": "aigc"}


@pytest.mark.parametrize("text, problem", [
    ("nmespaces: []\n", "nmespaces: unknown key"),
    ("servers:\n  template:\n    target: a:1\n", "servers.template.listen: missing required key"),
    ("database:\n  pool_size: many\n", "database.pool_size: input should be a valid integer"),
    ("gss_labels: [a]\n", "gss_labels: input should be a valid dictionary"),
    ("oidc:\n  algorithms: [none]\n", "oidc.algorithms: value error, algorithms not allowed"),
    ("service_identity:\n  token: short\n", "service_identity.token: value error, must be at least 32"),
    ("- a\n- b\n", "the top level must be a mapping"),
    ("a: [\n", "not valid YAML or JSON"),
])
def test_bad_keys_are_named(tmp_path: Path, text: str, problem: str) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as err:
        load(cfg, environ={})
    assert any(problem in p for p in err.value.problems), err.value.problems


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("foo: 1\nbar: 2\ndomain: [x]\n")
    with pytest.raises(ConfigError) as err:
        load(cfg, environ={})
    assert len(err.value.problems) == 3


def test_secret_values_are_not_echoed(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("service_identity:\n  token: hunter2hunter2\n")
    with pytest.raises(ConfigError) as err:
        load(cfg, environ={})
    assert "hunter2" not in str(err.value)


def test_cli_exits_non_zero_naming_the_bad_key(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("servers:\n  tempalte:\n    listen: 1.2.3.4:5\n")
    result = subprocess.run([sys.executable, "-m", "aigc_gateway.cli", "config", "check", "-c", str(cfg)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "servers.tempalte: unknown key" in result.stderr
    ok = tmp_path / "ok.yaml"
    ok.write_text("database:\n  url: postgresql+asyncpg://u:topsecret@db/aigc\n")
    result = subprocess.run([sys.executable, "-m", "aigc_gateway.cli", "config", "check", "-c", str(ok)],
                            capture_output=True, text=True)
    assert result.returncode == 0 and "topsecret" not in result.stdout and "**********" in result.stdout


def test_configuration_reference_is_current() -> None:
    from aigc_gateway.config import reference_markdown

    docs = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
    assert docs.read_text() == reference_markdown(), "run: aigc-gateway config reference > docs/configuration.md"
