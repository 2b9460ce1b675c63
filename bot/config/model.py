"""Typed, frozen configuration objects.

Every section rejects unknown keys (a typo must never pass silently) and every
object is immutable once loaded. Field names carry their units (`_s`, `_days`,
`_bp`). Secrets are never fields here: they come from the environment (see
:mod:`bot.config.secrets`).
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

OpenMethod = Literal["direct", "reverse_static", "reverse_dynamic"]
CloseMethod = Literal["direct", "reverse_static", "reverse_dynamic"]
SpreadMethod = Literal["dist", "lr"]
QtyMethod = Literal["usdt_neutral", "vol_neutral", "beta_neutral"]
SlMethod = Literal["leave", "cooldown"]
TIMEFRAMES = ("1m", "5m", "15m", "30m", "1h", "4h", "1d")
Timeframe = Literal["1m", "5m", "15m", "30m", "1h", "4h", "1d"]
ModelTarget = Literal["pr_rat_test", "pr_test"]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


class StrategyConfig(_Section):
    """Default parameters of the signal state machine (strategy.md sections 2-5)."""

    tf: Timeframe = "1h"
    wind: int = Field(72, ge=2, description="bars in the z-score window")
    spr_method: SpreadMethod = "lr"
    median_length: int = Field(6, ge=1)
    thresh_in: float = Field(2.0, gt=0)
    thresh_out: float = Field(0.25, ge=0)
    open_method: OpenMethod = "direct"
    close_method: CloseMethod = "direct"
    dist_in: float = Field(0.3, ge=0)
    dist_out: float = Field(0.3, ge=0)
    long_possible: bool = True
    short_possible: bool = True
    leverage: float = Field(2.0, gt=0)
    maintenance_margin_rate: float | None = Field(
        0.01, ge=0, lt=1, description="liquidation when a pair trade's equity <= this x its close notional; null: off")
    balance: float = Field(100.0, gt=0)
    order_size: float = Field(50.0, gt=0)
    min_order_size: float = Field(42.0, ge=0)
    max_order_size: float = Field(50.0, gt=0)
    fee_rate: float = Field(0.001, ge=0, lt=0.1)
    sl_std: float | None = Field(5.0, gt=0)
    sl_dist: float | None = Field(1.0, gt=0)
    sl_method: SlMethod = "leave"
    sl_seconds: float = Field(60.0, ge=0)
    qty_method: QtyMethod = "usdt_neutral"
    force_close: bool = False
    latency_s: float = Field(0.0, ge=0)
    half_spread_bp: float = Field(1.0, ge=0, description="bars-only mode: half spread in bp")

    @model_validator(mode="after")
    def _sizes(self) -> StrategyConfig:
        if self.thresh_out >= self.thresh_in:
            raise ValueError(f"thresh_out must be below thresh_in (got {self.thresh_out} >= {self.thresh_in})")
        if self.min_order_size > self.max_order_size:
            raise ValueError(
                f"min_order_size must not exceed max_order_size (got {self.min_order_size} > {self.max_order_size})"
            )
        return self


class ResearchConfig(_Section):
    """The research notebook's windows and sweep ranges (selection.md sections 1, 4)."""

    train_start: dt.datetime | None = None
    valid_time: dt.datetime = dt.datetime(2024, 11, 1, tzinfo=dt.UTC)
    end_time: dt.datetime = dt.datetime(2024, 12, 1, tzinfo=dt.UTC)
    train_days: int = Field(60, ge=1)
    winds: tuple[int, ...] = (64, 72, 96)
    spr_methods: tuple[SpreadMethod, ...] = ("dist", "lr")
    open_methods: tuple[OpenMethod, ...] = ("direct", "reverse_static", "reverse_dynamic")
    in_range: tuple[float, float] = (1.6, 2.75)
    out_range: tuple[float, float] = (0.0, 0.5)
    dist_range: tuple[float, float] = (0.05, 1.0)
    iters: int = Field(200, ge=1)
    seed: int = 42
    trades_log: str = "logs/backtest_trades.jsonl"

    _utc_dates = field_validator("train_start", "valid_time", "end_time")(_utc)

    @field_validator("in_range", "out_range", "dist_range")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if v[0] > v[1]:
            raise ValueError(f"range must be [low, high] (got {list(v)})")
        return v

    @model_validator(mode="after")
    def _window(self) -> ResearchConfig:
        if self.end_time <= self.valid_time:
            raise ValueError(
                f"end_time must be after valid_time (got {self.end_time.isoformat()} <= {self.valid_time.isoformat()})"
            )
        return self


class SelectionThresholds(_Section):
    pr_rat_ind: float = 0.4
    pr_rat_all: float = 0.4
    pr_rat_best: float = 0.4
    pred: float = 0.4


# what a sort key may name (statistics columns of bot.research.pair_job.STATS_COLUMNS that
# are features, and the model's pred; a test keeps the two lists equal); `-name` sorts ascending
SORTABLE = ("std_1", "std_2", "corr", "dist", "std", "pv_1", "pv_2", "pr_ind", "pr_rat_ind", "avg_pr_all",
            "pr_rat_all", "pr_best", "pr_rat_best", "loss_best", "max_drdn_best", "dur_best", "trades_best",
            "coverage", "zero_cross", "half_life_h", "hurst", "pos_share_all", "pred")


def _sort_key(v: str) -> str:
    if v.removeprefix("-") not in SORTABLE:
        raise ValueError(f"must name a statistics column or pred, optionally with a leading - for ascending "
                         f"(got {v!r}; one of {', '.join(SORTABLE)})")
    return v


class SelectionConfig(_Section):
    """The re-selection job (selection.md section 6)."""

    candidates_file: str = "candidates.txt"
    token_pairs_file: str = "token_pairs.txt"
    train_days: int = Field(60, ge=1)
    max_pairs: int = Field(8, ge=1)
    sort_key: str = "pr_rat_all"
    thresholds: SelectionThresholds = SelectionThresholds()
    # input guards, checked before anything is committed (docs/selection.md, "Refusals")
    max_data_age_h: float = Field(6.0, gt=0)
    min_evaluated_share: float = Field(0.5, ge=0, le=1)
    allow_empty: bool = False

    _sort = field_validator("sort_key")(_sort_key)


class ModelConfig(_Section):
    """CatBoost scoring model (selection.md section 5)."""

    loss_function: str = "Expectile:alpha=0.7"
    learning_rate: float = Field(0.01, gt=0)
    iterations: int = Field(800, ge=1)
    depth: int = Field(8, ge=1, le=16)
    random_seed: int = 42
    train_days: int = Field(60, ge=1)
    test_days: int = Field(14, ge=1)
    min_skill_se: float = 2.0
    keep_last: int = Field(5, ge=1)
    fallback_sort: str = "pr_rat_all"
    dir: str = "models"
    # what the model learns (the walk-forward always judges picks by realised pr_test)
    target: ModelTarget = "pr_rat_test"

    @field_validator("fallback_sort")
    @classmethod
    def _fallback(cls, v: str) -> str:
        if v.removeprefix("-") == "pred":
            raise ValueError("the fallback rule runs without a model: it cannot sort by pred")
        return _sort_key(v)


class ScheduleConfig(_Section):
    """APScheduler jobs (service.md Scheduler); cron strings are UTC crontab lines."""

    reselect_cron: str = "0 0 * * 1"
    bars_cron: str = "*/5 * * * *"
    instruments_cron: str = "30 0 * * *"
    retrain_cron: str | None = None
    misfire_grace_s: int = Field(3600, ge=1)

    @field_validator("reselect_cron", "bars_cron", "instruments_cron", "retrain_cron")
    @classmethod
    def _cron(cls, v: str | None) -> str | None:
        if v is not None and len(v.split()) != 5:
            raise ValueError(f"must be a 5-field crontab line (got {v!r})")
        return v


class DatabaseConfig(_Section):
    """Postgres. No dsn: the bot runs its own embedded PostgreSQL in `embedded_dir`.

    The password is never written here: put it in BOT_DATABASE_DSN or PGPASSWORD.
    """

    dsn: str | None = None
    embedded_dir: str = "var/pgdata"
    pool_min_size: int = Field(1, ge=1)
    pool_max_size: int = Field(8, ge=1)
    connect_timeout_s: float = Field(10.0, gt=0)

    @field_validator("dsn")
    @classmethod
    def _no_password(cls, v: str | None) -> str | None:
        from bot.config.secrets import dsn_has_password

        if v is not None and dsn_has_password(v):
            raise ValueError("a password must not be stored in config.yaml; use BOT_DATABASE_DSN or PGPASSWORD")
        return v


class ExchangeConfig(_Section):
    """Bybit. Keys come only from the environment variables named here."""

    mode: Literal["paper", "live"] = "paper"
    testnet: bool = False
    base_url: str | None = None
    api_key_env: str = "BYBIT_API_KEY"
    api_secret_env: str = "BYBIT_API_SECRET"
    recv_window_ms: int = Field(5000, ge=1)
    http_timeout_s: float = Field(10.0, gt=0)
    ws_public_url: str | None = None
    rate_limit_per_s: float = Field(10.0, gt=0)
    max_attempts: int = Field(5, ge=1)
    stale_stream_s: float = Field(10.0, gt=0)


class ExecutorConfig(_Section):
    """The live executor (docs/executor.md): leg risk, reconciliation, stale data."""

    leg_timeout_s: float = Field(10.0, gt=0, description="a leg order unanswered this long is cancelled and unwound")
    incident_cooldown_s: float = Field(3600.0, ge=0, description="no new entry on a pair this long after an incident")
    reconcile_every_s: float = Field(60.0, gt=0)
    max_quote_age_s: float = Field(30.0, gt=0, description="an older last quote of either leg blocks entries and exits")
    stale_exit_s: float = Field(300.0, gt=0, description="an open position without fresh data this long: incident")
    adopt_orphans: bool = False
    max_balance: float | None = Field(None, gt=0, description="live: the wallet balance used for sizing is capped "
                                                              "here (null: strategy.balance)")
    leg_order: Literal["thinner_first", "as_listed"] = "thinner_first"
    db_retry_s: float = Field(1.0, gt=0, description="wait between attempts of a ledger write while Postgres is down")
    unknown_grace_s: float = Field(30.0, ge=0, description="an order sent this recently that the venue does not know "
                                   "(yet) is unresolved, not 'never placed': its request may still arrive")
    close_retry_s: float = Field(5.0, gt=0, description="a failed close is retried after this, doubling to 60 s")


class DataConfig(_Section):
    quote_interval_s: float = Field(5.0, gt=0)
    quotes_retention_days: int = Field(200, ge=1)
    reference_symbols: tuple[str, ...] = ("BTC", "ETH", "SOL")
    max_quote_age_s: float = Field(30.0, gt=0)
    recorder_buffer_rows: int = Field(200_000, ge=1)


class ComputeConfig(_Section):
    workers: int | None = Field(None, ge=1)
    dask_scheduler: str | None = None
    cache_dir: str | None = Field(None, description="where a job caches each symbol's quotes (raw float64 files, "
                                  "24 bytes a quote, removed after the job; null: the system temp directory)")


class PathsConfig(_Section):
    data_dir: str = "var"
    logs_dir: str = "logs"


class ServiceConfig(_Section):
    """`bot run` (service.md "Service and deploy"; docs/service.md)."""

    shutdown_timeout_s: float = Field(30.0, gt=0, description="SIGTERM: in-flight orders get this long to resolve")
    heartbeat_s: float = Field(10.0, gt=0, description="service_runs heartbeat and the STATUS= line, seconds")
    db_check_s: float = Field(5.0, gt=0, description="the watchdog's database probe period, seconds")
    max_loop_lag_s: float = Field(5.0, gt=0, description="event-loop lag above which WATCHDOG=1 is withheld")


class BotConfig(_Section):
    """The whole config.yaml."""

    strategy: StrategyConfig = StrategyConfig()
    research: ResearchConfig = ResearchConfig()
    selection: SelectionConfig = SelectionConfig()
    model: ModelConfig = ModelConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    database: DatabaseConfig = DatabaseConfig()
    exchange: ExchangeConfig = ExchangeConfig()
    executor: ExecutorConfig = ExecutorConfig()
    data: DataConfig = DataConfig()
    compute: ComputeConfig = ComputeConfig()
    paths: PathsConfig = PathsConfig()
    service: ServiceConfig = ServiceConfig()
