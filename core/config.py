"""One typed settings object, built once at start-up and passed down.

Precedence: defaults < TOML file named by METAROUTER_CONFIG < environment. Third-party variables keep
their ecosystems' names (OPENAI_API_KEY, OLLAMA_HOST, DATABASE_URL, REDIS_URL, SLACK_*, DISCORD_*); every
other setting is `METAROUTER_<NAME>` in the environment and `<name>` in the TOML file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from core.errors import ConfigError


def _env(*names: str) -> Any:
    """A field read from third-party variable names as well as its own (TOML) name."""
    return AliasChoices(*names)


class Price(BaseModel):
    """USD per million tokens."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)


# Public list prices per million tokens (openai.com/api/pricing, read 2026-11).
DEFAULT_PRICES: dict[str, Price] = {
    "gpt-4o-mini": Price(input=0.15, output=0.60),
    "gpt-4o": Price(input=2.50, output=10.00),
    "gpt-4.1-mini": Price(input=0.40, output=1.60),
    "gpt-4.1-nano": Price(input=0.10, output=0.40),
    "gpt-5-mini": Price(input=0.25, output=2.00),
}

DEFAULT_REACTIONS: dict[str, int] = {
    "+1": 1,
    "thumbsup": 1,
    "👍": 1,
    "heart": 1,
    "❤️": 1,
    "tada": 1,
    "🎉": 1,
    "star": 1,
    "⭐": 1,
    "-1": -1,
    "thumbsdown": -1,
    "👎": -1,
    "confused": -1,
    "😕": -1,
}

DEFAULT_SYSTEM_PROMPT = (
    "You are MetaRouter, a helpful assistant in a team chat. Answer the latest user message, using "
    "the earlier messages of the thread as context. Be accurate and concise; use Markdown, and put "
    "code in fenced code blocks with a language tag."
)


def http_url(v: str) -> str:
    v = v.strip()
    if not v.startswith(("http://", "https://")):
        if "://" in v:
            raise ValueError("must be an http:// or https:// URL")
        v = "http://" + v  # the ollama library accepts a bare host:port too
    return v


class MetaRouterSpec(BaseModel):
    """One member of the routing ensemble (`[[meta_routers]]`): an OpenAI-compatible endpoint and model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field("", max_length=40)  # shown in the routing details and logs; default: the model
    model: str = Field(min_length=1)
    base_url: str | None = None  # None: the OpenAI API
    api_key: SecretStr | None = None  # a local server may need none
    weight: float = Field(1.0, gt=0, le=100)  # how much its vote counts, times its confidence

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        return http_url(v) if v is not None else None

    @model_validator(mode="before")
    @classmethod
    def _default_name(cls, data: Any) -> Any:
        if isinstance(data, dict) and not str(data.get("name") or "").strip():
            data = {**data, "name": str(data.get("model") or "").strip()[:40]}
        return data

    @model_validator(mode="after")
    def _keyed(self) -> MetaRouterSpec:
        if self.base_url is None and not _secret(self.api_key):
            raise ValueError("api_key is required for the OpenAI API (or set base_url)")
        return self


def _secret(value: SecretStr | None) -> str:
    return value.get_secret_value().strip() if value is not None else ""


def default_data_dir() -> Path:
    return Path(os.path.expanduser("~/.local/share/metarouter"))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="METAROUTER_",
        extra="forbid",
        populate_by_name=True,
        validate_default=True,
    )

    # --- meta-router (OpenAI-compatible) ---------------------------------------------------------
    openai_api_key: SecretStr | None = Field(None, validation_alias=_env("openai_api_key", "OPENAI_API_KEY"))
    openai_base_url: str | None = Field(None, validation_alias=_env("openai_base_url", "OPENAI_BASE_URL"))
    meta_router_enabled: bool = True
    meta_router_model: str = "gpt-4o-mini"
    decision_timeout_s: float = Field(4.0, gt=0, le=120)
    max_requests_per_hour: int = Field(100, ge=0)
    # True: a 429 falls back to the local router at once. False: honour Retry-After within the
    # decision timeout first.
    fallback_on_rate_limit: bool = True
    confidence_threshold: float = Field(0.7, ge=0, le=1)
    monthly_budget_usd: float = Field(5.0, ge=0)
    router_prices: dict[str, Price] = Field(default_factory=lambda: dict(DEFAULT_PRICES))
    # more meta-routers, asked in parallel with the primary one (OPENAI_API_KEY + meta_router_model,
    # always the first member when keyed); their picks are combined by confidence-weighted vote
    meta_routers: list[MetaRouterSpec] = Field(default_factory=list)
    # --- privacy (issue 6): what the meta-router may see ------------------------------------------
    # extra redaction patterns: placeholder name -> regex ("ticket": "TCK-\\d{6}" gives "[TICKET]")
    redact_patterns: dict[str, str] = Field(default_factory=dict)
    # channels (Slack channel, Discord channel or thread parent) and workspaces/guilds whose questions
    # never go to the meta-router (fallback_reason "privacy")
    local_only_channels: Annotated[list[str], NoDecode] = Field(default_factory=list)
    local_only_workspaces: Annotated[list[str], NoDecode] = Field(default_factory=list)
    router_query_chars: int = Field(2000, ge=100, le=20000)  # of the question, after redaction
    router_thread_turns: int = Field(4, ge=0, le=20)  # earlier messages the meta-router sees
    router_turn_chars: int = Field(200, ge=20, le=2000)  # of each earlier message

    # --- decision cache -------------------------------------------------------------------------
    cache_decisions: bool = True
    cache_duration_hours: float = Field(1.0, ge=0)
    cache_max_entries: int = Field(2048, ge=1)

    # --- local router ---------------------------------------------------------------------------
    use_local_for_simple_queries: bool = True
    # calibrated probability above which the local router decides without asking the meta-router
    local_confidence_threshold: float = Field(0.9, ge=0, le=1)

    # --- learning -------------------------------------------------------------------------------
    # ratings steer routing: the local router's model choice and exploration, and the ratings in the
    # meta-router's prompt; off, reactions are still recorded and shown (reports, /models) but ignored
    user_feedback_integration: bool = True
    # the meta-router's prompt lists each model's share of good ratings per query type (with
    # user_feedback_integration; off saves the prompt tokens and leaves the local router's use alone)
    track_success_rates: bool = True
    # the meta-router's prompt carries similar past decisions (decision_memory keeps them either way)
    improve_prompts: bool = True
    # a rating's weight halves every this many days (core/feedback.py)
    feedback_halflife_days: float = Field(30.0, gt=0)
    # the local router sometimes picks a close second whose ratings are still uncertain (Thompson
    # sampling), only among models scoring within explore_margin of the best, and only once any of them
    # has ratings for the query type
    explore: bool = True
    explore_margin: float = Field(0.05, ge=0, le=0.5)
    # similar past questions, with the model chosen and its ratings, go into the meta-router's prompt
    decision_memory: bool = True
    memory_examples: int = Field(3, ge=0, le=10)
    memory_min_similarity: float = Field(0.6, ge=-1, le=1)
    memory_days: float = Field(90.0, gt=0)  # how far back past decisions are searched

    # --- Ollama and generation --------------------------------------------------------------------
    ollama_host: str = Field("http://127.0.0.1:11434", validation_alias=_env("ollama_host", "OLLAMA_HOST"))
    ollama_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias=_env("ollama_hosts", "METAROUTER_OLLAMA_HOSTS")
    )
    auto_pull: bool = True
    disk_budget_gb: float = Field(100.0, ge=0)
    per_host_concurrency: int = Field(2, ge=1)
    stream_idle_timeout_s: float = Field(120.0, gt=0)
    pull_idle_timeout_s: float = Field(300.0, gt=0)
    inventory_ttl_s: float = Field(15.0, ge=0)
    # connect timeout, and the whole budget of one inventory probe (/api/tags + /api/ps) per host
    ollama_probe_timeout_s: float = Field(3.0, gt=0)
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    default_context_tokens: int = Field(8192, ge=512)

    # --- storage --------------------------------------------------------------------------------
    database_url: str | None = Field(None, validation_alias=_env("database_url", "DATABASE_URL"))
    data_dir: Path = Field(default_factory=default_data_dir)
    store_question_text: bool = True
    # through a database outage (issue 6): writes queued at most (then dropped, counted), the time a
    # write may take before it is queued instead, and how often a serve process says it is alive
    # (its unfinished answers are taken over by others after 3 missed heartbeats)
    db_buffer_max_ops: int = Field(10_000, ge=100)
    db_write_timeout_s: float = Field(5.0, gt=0, le=60)
    replica_heartbeat_s: float = Field(10.0, gt=0, le=300)
    # decision cache and rate limits shared by replicas (else PostgreSQL's tables, else per process)
    redis_url: str | None = Field(None, validation_alias=_env("redis_url", "REDIS_URL"))
    redis_prefix: str = Field("metarouter:", min_length=1)  # of every key: bots sharing one Redis differ

    # --- abuse limits (issue 6) -------------------------------------------------------------------
    user_rate_per_minute: float = Field(6.0, ge=0)  # questions a person may ask per minute; 0: no limit
    channel_rate_per_minute: float = Field(20.0, ge=0)  # questions per channel per minute; 0: no limit
    max_question_chars: int = Field(16000, ge=200)  # longer questions are cut (and the user told so)

    # --- platforms ------------------------------------------------------------------------------
    slack_bot_token: SecretStr | None = Field(
        None, validation_alias=_env("slack_bot_token", "SLACK_BOT_TOKEN")
    )
    slack_app_token: SecretStr | None = Field(
        None, validation_alias=_env("slack_app_token", "SLACK_APP_TOKEN")
    )
    slack_signing_secret: SecretStr | None = Field(
        None, validation_alias=_env("slack_signing_secret", "SLACK_SIGNING_SECRET")
    )
    slack_api_url: str = Field(
        "https://slack.com/api/", validation_alias=_env("slack_api_url", "SLACK_API_URL")
    )
    # Slack: user ids allowed to /models pull and remove; channels the bot answers in (empty: every
    # channel it is in; DMs always); the least seconds between two edits of a streaming message
    # also read as slack_admin_user_ids, the spelling of its Discord counterpart
    slack_admin_users: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        validation_alias=_env(
            "slack_admin_users",
            "slack_admin_user_ids",
            "METAROUTER_SLACK_ADMIN_USERS",
            "METAROUTER_SLACK_ADMIN_USER_IDS",
        ),
    )
    slack_allowed_channels: Annotated[list[str], NoDecode] = Field(default_factory=list)
    slack_update_interval_s: float = Field(1.0, ge=0, le=60)
    slack_rerun_buttons: bool = True  # "Try <alternative>" buttons under each answer
    discord_bot_token: SecretStr | None = Field(
        None, validation_alias=_env("discord_bot_token", "DISCORD_BOT_TOKEN")
    )
    discord_api_url: str = Field(
        "https://discord.com/api/v10", validation_alias=_env("discord_api_url", "DISCORD_API_URL")
    )
    # Discord: who may /models pull and remove (user or role ids), guilds that get the slash commands at
    # once (else they are synced globally, which Discord takes up to an hour to show), and whether a
    # mention in a channel opens a thread for the answer
    discord_admin_user_ids: Annotated[list[str], NoDecode] = Field(default_factory=list)
    discord_admin_role_ids: Annotated[list[str], NoDecode] = Field(default_factory=list)
    discord_guild_ids: Annotated[list[str], NoDecode] = Field(default_factory=list)
    discord_thread_per_mention: bool = False
    discord_history_limit: int = Field(30, ge=0, le=100)  # earlier messages read for the conversation
    # least time between two edits of a streaming answer, per message and per channel
    discord_edit_interval_s: float = Field(1.5, ge=0.1, le=30)
    reactions: dict[str, int] = Field(default_factory=lambda: dict(DEFAULT_REACTIONS))

    log_level: str = Field("WARNING", pattern="^(?i)(DEBUG|INFO|WARNING|ERROR|CRITICAL)$")

    # --- HTTP endpoint ------------------------------------------------------------------------
    http_port: int = Field(8080, ge=0, le=65535)
    http_host: str = "127.0.0.1"

    # --- scheduler, pre-pull and reports (cron strings: 5 fields, or 6 with seconds first) -------
    scheduler_enabled: bool = True
    scheduler_timezone: str = "UTC"
    # a firing later than this (the process was down or busy) is reported as missed and run once
    misfire_grace_s: float = Field(300.0, ge=1)
    report_cron: str = "0 9 * * 1"
    report_channels: Annotated[list[str], NoDecode] = Field(default_factory=list)  # "slack:C123"
    report_since_days: float = Field(7.0, gt=0)
    prepull_enabled: bool = True
    prepull_cron: str = "0 * * * *"
    prepull_window_h: float = Field(2.0, gt=0, le=168)
    prepull_min_expected: float = Field(0.5, ge=0)  # forecast requests in the window worth a pull
    forecast_halflife_days: float = Field(14.0, gt=0)
    evict_enabled: bool = False
    prewarm_cron: str = ""  # e.g. "45 8 * * 1-5"; empty: no pre-warming
    # --- the distilled local router (core/routing/distill.py) --------------------------------------
    train_router_cron: str = "30 3 * * *"  # empty: no nightly retraining
    train_router_min_new: int = Field(50, ge=1)  # new labelled decisions since the last run, to retrain
    train_router_keep: int = Field(10, ge=1)  # runs kept in the database (the active one always)
    train_router_hidden: int = Field(256, ge=0, le=4096)  # hidden units; 0: logistic regression (faster)
    train_router_examples: Path | None = None  # {type}.jsonl + threads.jsonl; default: the shipped ones
    router_reload_s: float = Field(60.0, ge=0)  # how often serve looks for a newly activated version

    @field_validator("report_channels")
    @classmethod
    def _platform_channels(cls, v: list[str]) -> list[str]:
        for c in v:
            platform, _, channel = c.partition(":")
            if platform not in ("slack", "discord") or not channel:
                raise ValueError(f"{c!r} must be slack:CHANNEL_ID or discord:CHANNEL_ID")
        return v

    @field_validator("report_cron", "prepull_cron", "prewarm_cron", "train_router_cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        # only the shape here: parsing needs APScheduler, which `route`'s cold start must not import;
        # the scheduler parses every expression at start-up and names the setting if one is bad
        v = " ".join(v.split())
        if v and len(v.split()) not in (5, 6):
            raise ValueError("a cron expression has 5 fields (minute hour day month weekday) or 6")
        return v

    @field_validator("redact_patterns")
    @classmethod
    def _patterns(cls, v: dict[str, str]) -> dict[str, str]:
        for name, pattern in v.items():
            if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name):
                raise ValueError(f"pattern name {name!r} must be a word")
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"pattern {name!r} is not a valid regex: {exc}") from None
        return v

    @field_validator(
        "ollama_hosts",
        "report_channels",
        "slack_admin_users",
        "slack_allowed_channels",
        "discord_admin_user_ids",
        "discord_admin_role_ids",
        "discord_guild_ids",
        "local_only_channels",
        "local_only_workspaces",
        mode="before",
    )
    @classmethod
    def _comma_list(cls, v: Any) -> Any:
        """Lists come comma-separated from the environment; ids may come as TOML numbers."""
        if isinstance(v, str | int):
            return [i.strip() for i in str(v).split(",") if i.strip()]
        return [str(i) for i in v] if isinstance(v, list) else v

    @field_validator("ollama_host", "openai_base_url", "slack_api_url", "discord_api_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        return http_url(v) if v is not None else None

    @field_validator("meta_routers")
    @classmethod
    def _distinct_routers(cls, v: list[MetaRouterSpec], info: ValidationInfo) -> list[MetaRouterSpec]:
        # a vote is shown by its router's name: two of the same name could not be told apart
        names = [m.name for m in v]
        if _secret(info.data.get("openai_api_key")):
            names.insert(0, info.data.get("meta_router_model", ""))
        for i, name in enumerate(names):
            if name in names[:i]:
                raise ValueError(
                    f"two meta-routers are named {name!r} (the primary is named after "
                    "meta_router_model); give each a distinct name"
                )
        return v

    @field_validator("ollama_hosts")
    @classmethod
    def _urls(cls, v: list[str]) -> list[str]:
        return [http_url(h) for h in v]

    @field_validator("router_prices")
    @classmethod
    def _merge_prices(cls, v: dict[str, Price]) -> dict[str, Price]:
        # a config that prices one custom router must not make the known ones free
        return {**DEFAULT_PRICES, **v}

    @field_validator("reactions")
    @classmethod
    def _ratings(cls, v: dict[str, int]) -> dict[str, int]:
        for name, rating in v.items():
            if rating not in (-1, 1):
                raise ValueError(f"rating of {name!r} must be 1 or -1")
        return {k.strip(":"): r for k, r in v.items()}

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = os.environ.get("METAROUTER_CONFIG")
        if path:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(path)))
        return tuple(sources)

    # --- derived ------------------------------------------------------------------------------
    @property
    def hosts(self) -> list[str]:
        """Ollama base URLs without trailing slash; METAROUTER_OLLAMA_HOSTS overrides OLLAMA_HOST."""
        hosts = self.ollama_hosts or [self.ollama_host]
        return list(dict.fromkeys(h.rstrip("/") for h in hosts))

    @property
    def primary_router(self) -> MetaRouterSpec | None:
        """The meta-router of OPENAI_API_KEY, OPENAI_BASE_URL and meta_router_model; None without a key."""
        if not _secret(self.openai_api_key):
            return None
        return MetaRouterSpec(
            name=self.meta_router_model,
            model=self.meta_router_model,
            base_url=self.openai_base_url,
            api_key=self.openai_api_key,
        )

    @property
    def router_specs(self) -> list[MetaRouterSpec]:
        """Every meta-router to ask, the primary first; none when meta_router_enabled is off."""
        if not self.meta_router_enabled:
            return []
        primary = self.primary_router
        return ([primary] if primary else []) + list(self.meta_routers)

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.data_dir / 'metarouter.db'}"

    @property
    def cache_ttl_s(self) -> float:
        return self.cache_duration_hours * 3600.0

    def price_for(self, model: str) -> Price | None:
        if model in self.router_prices:
            return self.router_prices[model]
        # dated snapshots ("gpt-4o-mini-2024-07-18") cost what their family costs
        for name in sorted(self.router_prices, key=len, reverse=True):
            if model.startswith(name):
                return self.router_prices[name]
        return None


# Names users see in messages: the variable they would set.
_ENV_NAMES = {
    "openai_api_key": "OPENAI_API_KEY",
    "openai_base_url": "OPENAI_BASE_URL",
    "ollama_host": "OLLAMA_HOST",
    "ollama_hosts": "METAROUTER_OLLAMA_HOSTS",
    "database_url": "DATABASE_URL",
    "redis_url": "REDIS_URL",
    "slack_bot_token": "SLACK_BOT_TOKEN",
    "slack_app_token": "SLACK_APP_TOKEN",
    "slack_signing_secret": "SLACK_SIGNING_SECRET",
    "slack_api_url": "SLACK_API_URL",
    "discord_bot_token": "DISCORD_BOT_TOKEN",
    "discord_api_url": "DISCORD_API_URL",
}


def env_name(field: str) -> str:
    return _ENV_NAMES.get(field, "METAROUTER_" + field.upper())


def load_settings(**overrides: Any) -> Settings:
    """Build the settings or raise ConfigError naming the first bad setting (never its value)."""
    path = os.environ.get("METAROUTER_CONFIG")
    if path and not Path(path).is_file():
        raise ConfigError(f"METAROUTER_CONFIG: no such file: {path}")
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [str(p) for p in err.get("loc", ())]
        field = loc[0] if loc else "?"
        if field.isupper():
            field = field.lower()
        detail = err.get("msg", "invalid value")
        if err.get("type") == "extra_forbidden" and len(loc) > 1:  # inside a table: name the table
            raise ConfigError(f"{env_name(field)} ({'.'.join(loc)}): unknown field") from None
        if err.get("type") == "extra_forbidden":
            raise ConfigError(f"{'.'.join(loc)}: unknown setting in METAROUTER_CONFIG") from None
        raise ConfigError(f"{env_name(field)} ({'.'.join(loc)}): {detail}") from None
    except (OSError, ValueError) as exc:  # unreadable or malformed TOML
        raise ConfigError(f"METAROUTER_CONFIG: {exc}") from None
    if settings.database_url and not settings.database_url.startswith(
        ("sqlite+aiosqlite://", "postgresql+asyncpg://", "postgresql://", "sqlite://")
    ):
        raise ConfigError("DATABASE_URL: use sqlite+aiosqlite:///PATH or postgresql+asyncpg://...")
    if settings.redis_url and not settings.redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError("REDIS_URL: use redis://HOST:PORT/DB, rediss://... or unix://PATH")
    return settings
