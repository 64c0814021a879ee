"""Settings: defaults < TOML (METAROUTER_CONFIG) < environment; bad values name the variable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from core.config import load_settings
from core.errors import ConfigError


def test_precedence_defaults_then_toml_then_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "metarouter.toml"
    cfg.write_text(
        'meta_router_model = "gpt-4.1-mini"\nmax_requests_per_hour = 7\nconfidence_threshold = 0.5\n'
        'ollama_host = "http://10.0.0.1:11434"\n[router_prices.my-router]\ninput = 1.0\noutput = 2.0\n'
    )
    monkeypatch.setenv("METAROUTER_CONFIG", str(cfg))
    monkeypatch.setenv("METAROUTER_MAX_REQUESTS_PER_HOUR", "9")
    monkeypatch.setenv("OLLAMA_HOST", "127.0.0.1:5000")
    s = load_settings()
    assert s.meta_router_model == "gpt-4.1-mini"  # from the file
    assert s.max_requests_per_hour == 9  # the environment wins over the file
    assert s.confidence_threshold == 0.5
    assert s.decision_timeout_s == 4.0  # default
    assert s.hosts == ["http://127.0.0.1:5000"]  # bare host:port gets http://, like the ollama library
    assert s.price_for("my-router") is not None and s.price_for("gpt-4o-mini-2024-07-18") is not None


def test_several_ollama_hosts_override_ollama_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_HOST", "http://a:1")
    monkeypatch.setenv("METAROUTER_OLLAMA_HOSTS", "http://b:2/, http://c:3")
    assert load_settings().hosts == ["http://b:2", "http://c:3"]


@pytest.mark.parametrize(
    "var",
    ["METAROUTER_SLACK_ADMIN_USERS", "METAROUTER_SLACK_ADMIN_USER_IDS"],  # as Discord spells it
)
def test_slack_admins_under_either_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, var: str) -> None:
    monkeypatch.setenv(var, "U1, U2")
    assert load_settings().slack_admin_users == ["U1", "U2"]
    cfg = tmp_path / "c.toml"
    cfg.write_text('slack_admin_user_ids = ["U3"]\n')
    monkeypatch.setenv("METAROUTER_CONFIG", str(cfg))
    assert load_settings().slack_admin_users == ["U1", "U2"]  # the environment still wins
    monkeypatch.delenv(var)
    assert load_settings().slack_admin_users == ["U3"]


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("METAROUTER_DECISION_TIMEOUT_S", "soon"),
        ("METAROUTER_CONFIDENCE_THRESHOLD", "1.5"),
        ("DATABASE_URL", "mysql://x"),
        ("REDIS_URL", "127.0.0.1:6379"),
        ("OLLAMA_HOST", "ftp://host"),
    ],
)
def test_invalid_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch, var: str, value: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert str(err.value).startswith(var)


def test_unknown_key_in_config_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("max_request_per_hour = 3\n")  # a typo must not be silently ignored
    monkeypatch.setenv("METAROUTER_CONFIG", str(cfg))
    with pytest.raises(ConfigError, match="max_request_per_hour"):
        load_settings()


def route_hello(env: dict[str, str]) -> tuple[int, list[str]]:
    """`metarouter route hello` with exactly `env`: its exit code and the lines it wrote to stderr."""
    proc = subprocess.run(
        [sys.executable, "-m", "bot.cli", "route", "hello"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc.returncode, proc.stderr.strip().splitlines()


def test_cli_exits_2_with_one_line_naming_the_setting(tmp_path: Path) -> None:
    env = {"PATH": "", "HOME": str(tmp_path), "METAROUTER_MAX_REQUESTS_PER_HOUR": "many"}
    code, lines = route_hello(env)
    assert code == 2
    assert len(lines) == 1 and "METAROUTER_MAX_REQUESTS_PER_HOUR" in lines[0]


def test_secrets_do_not_show_in_repr_or_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-very-secret-value")
    s = load_settings()
    assert "sk-very-secret-value" not in repr(s) and "sk-very-secret-value" not in str(s.model_dump())
    monkeypatch.setenv("METAROUTER_DECISION_TIMEOUT_S", "x")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert "sk-very-secret-value" not in str(err.value)


ENSEMBLE_TOML = """
[[meta_routers]]
name = "claude"
base_url = "https://llm-gateway.example/v1"
model = "claude-haiku"
api_key = "sk-ant-member-secret-123"
weight = 2

[[meta_routers]]
base_url = "localhost:11434/v1"
model = "qwen2.5:7b"
"""


def test_meta_routers_from_the_file_follow_the_keyed_primary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(ENSEMBLE_TOML)
    monkeypatch.setenv("METAROUTER_CONFIG", str(cfg))
    assert [r.name for r in load_settings().router_specs] == ["claude", "qwen2.5:7b"]

    monkeypatch.setenv("OPENAI_API_KEY", "sk-primary-secret-456")
    s = load_settings()
    primary, claude, local = s.router_specs
    assert (primary.name, primary.model, primary.base_url) == ("gpt-4o-mini", "gpt-4o-mini", None)
    assert (claude.weight, local.weight, local.base_url) == (2, 1, "http://localhost:11434/v1")
    assert local.api_key is None  # a local server needs no key
    assert "sk-ant-member-secret-123" not in repr(s) and "sk-ant-member-secret-123" not in str(s.model_dump())
    assert load_settings(meta_router_enabled=False).router_specs == []


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ('model = "gpt-4.1-nano"', "api_key is required"),  # the OpenAI API, no key
        ('model = "m"\nbase_url = "ftp://x"', "http"),
        ('model = "m"\nbase_url = "http://x"\nweight = 0', "greater than 0"),
        ('base_url = "http://x"', "model"),
        ('model = "m"\nbase_url = "http://x"\ntemperature = 1', "unknown field"),
        ('model = "gpt-4o-mini"\nbase_url = "http://x"', "two meta-routers are named 'gpt-4o-mini'"),
    ],
    ids=["no-key", "bad-url", "zero-weight", "no-model", "unknown-field", "same-name-as-primary"],
)
def test_a_bad_meta_router_entry_names_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, entry: str, problem: str
) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[[meta_routers]]\n{entry}\n")
    monkeypatch.setenv("METAROUTER_CONFIG", str(cfg))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-primary-secret-456")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert str(err.value).startswith("METAROUTER_META_ROUTERS (meta_routers")
    assert problem in str(err.value) and "sk-primary-secret-456" not in str(err.value)


def test_cli_exits_2_on_a_bad_meta_router_entry(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[[meta_routers]]\nmodel = "claude-haiku"\nbase_url = "http://gw/v1"\nweight = -1\n')
    env = {"PATH": "", "HOME": str(tmp_path), "METAROUTER_CONFIG": str(cfg)}
    code, lines = route_hello(env)
    assert code == 2
    assert len(lines) == 1 and "METAROUTER_META_ROUTERS (meta_routers.0.weight)" in lines[0]
