"""Config: the shipped example, strict validation, env overrides, masking, the notebook view."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import yaml

from bot.cli.main import main
from bot.config import ConfigError, dump_effective, load, parse_config
from bot.config.loader import example_path
from bot.config.secrets import Secret, mask_dsn
from bot.utils.files import load_config


def test_example_is_complete_and_seeded_with_the_notebook_values() -> None:
    cfg = load(example_path())
    s, r = cfg.strategy, cfg.research
    assert (s.tf, s.leverage, s.balance, s.order_size, s.min_order_size, s.max_order_size) == ("1h", 2, 100, 50, 42, 50)
    assert (s.fee_rate, s.sl_std, s.sl_dist, s.sl_method, s.sl_seconds) == (0.001, 5.0, 1.0, "leave", 60)
    assert (s.close_method, s.qty_method, s.force_close) == ("direct", "usdt_neutral", False)
    assert r.winds == (64, 72, 96) and r.spr_methods == ("dist", "lr")
    assert r.open_methods == ("direct", "reverse_static", "reverse_dynamic")
    assert r.in_range == (1.6, 2.75) and r.out_range == (0.0, 0.5) and r.dist_range == (0.05, 1.0)
    assert cfg.model.loss_function == "Expectile:alpha=0.7" and cfg.model.iterations == 800
    assert cfg.model.depth == 8 and cfg.model.learning_rate == 0.01 and cfg.model.random_seed == 42
    assert cfg.selection.thresholds.pred == 0.4 and cfg.exchange.mode == "paper"
    # every key of the model appears in the example file (it documents them all)
    doc = yaml.safe_load(example_path().read_text())
    assert set(doc) == set(type(cfg).model_fields)
    for section, fields in doc.items():
        assert set(fields) == set(type(getattr(cfg, section)).model_fields), section


def test_every_problem_is_listed_with_its_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("strategy:\n  wind: lots\n  fee_rat: 0.1\nexchange:\n  mode: yolo\nextra: 1\n")
    with pytest.raises(ConfigError) as err:
        load(bad)
    text = "\n".join(err.value.problems)
    assert "strategy.wind:" in text and "(got 'lots')" in text
    assert "strategy.fee_rat: unknown key (got 0.1)" in text
    assert "exchange.mode:" in text and "(got 'yolo')" in text
    assert "extra: unknown key (got 1)" in text
    assert len(err.value.problems) == 4


def test_cross_field_rules() -> None:
    with pytest.raises(ConfigError, match="thresh_out must be below thresh_in"):
        parse_config({"strategy": {"thresh_in": 1.0, "thresh_out": 1.5}}, env={})
    with pytest.raises(ConfigError, match="end_time must be after valid_time"):
        parse_config({"research": {"valid_time": "2025-01-02T00:00:00Z", "end_time": "2025-01-01T00:00:00Z"}}, env={})


def test_maintenance_margin_rate() -> None:
    assert load(example_path()).strategy.maintenance_margin_rate == 0.01
    assert parse_config({"strategy": {"maintenance_margin_rate": None}}, env={}).strategy.maintenance_margin_rate is None
    for bad in (-0.01, 1.0):
        with pytest.raises(ConfigError, match="strategy.maintenance_margin_rate"):
            parse_config({"strategy": {"maintenance_margin_rate": bad}}, env={})


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("strategy:\n  wind: [1, 2\n")
    with pytest.raises(ConfigError, match="line 3"):
        load(p)


def test_password_never_in_config_but_env_dsn_may_carry_it() -> None:
    with pytest.raises(ConfigError, match="password must not be stored"):
        parse_config({"database": {"dsn": "postgresql://bot:hunter2@db:5432/bot"}}, env={})
    cfg = parse_config({}, env={"BOT_DATABASE_DSN": "postgresql://bot:hunter2@db:5432/bot"})
    assert cfg.database.dsn == "postgresql://bot:hunter2@db:5432/bot"
    printed = dump_effective(cfg)
    assert "hunter2" not in printed and "***" in printed
    assert "hunter2" not in repr(Secret("hunter2"))
    assert mask_dsn("host=db password=hunter2 dbname=bot") == "host=db password=*** dbname=bot"


def test_objects_are_frozen() -> None:
    cfg = load(example_path())
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="frozen"):
        cfg.strategy.wind = 3  # type: ignore[misc]


def test_notebook_mapping(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("research:\n  valid_time: 2024-10-01 00:00:00\n  end_time: 2024-10-15T00:00:00+02:00\n")
    config = load_config(p)
    assert config["valid_time"] == dt.datetime(2024, 10, 1, tzinfo=dt.UTC)
    assert config["valid_time"].tzinfo is not None
    assert config["end_time"] == dt.datetime(2024, 10, 14, 22, tzinfo=dt.UTC)
    assert config["winds"] == [64, 72, 96] and config["tf"] == "1h" and config["leverage"] == 2
    assert config["selection"]["thresholds"]["pr_rat_all"] == 0.4


def test_cli_config_check(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOT_DATABASE_DSN", "postgresql://u:s3cret@h:5432/d")
    assert main(["config", "check", str(example_path())]) == 0
    out = capsys.readouterr().out
    assert "s3cret" not in out and "u:***@h" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("strategy:\n  wind: 1\n  sl_method: stay\n")
    assert main(["config", "check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "strategy.wind:" in err and "strategy.sl_method:" in err
    live = tmp_path / "live.yaml"
    live.write_text("exchange:\n  mode: live\n")
    monkeypatch.delenv("BYBIT_API_KEY", raising=False)
    monkeypatch.delenv("BYBIT_API_SECRET", raising=False)
    assert main(["config", "check", str(live)]) == 2
    assert "exchange.mode: live needs API keys" in capsys.readouterr().err
    monkeypatch.setenv("BYBIT_API_KEY", "k-visible-only-as-set")
    monkeypatch.setenv("BYBIT_API_SECRET", "very-secret-value")
    assert main(["config", "check", str(live)]) == 0
    captured = capsys.readouterr()
    assert "very-secret-value" not in captured.out + captured.err


def test_global_config_option_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("strategy:\n  wind: 96\n")
    monkeypatch.setenv("BOT_CONFIG", str(p))
    monkeypatch.chdir(tmp_path)
    assert load().strategy.wind == 96
    monkeypatch.delenv("BOT_CONFIG")
    assert load().strategy.wind == 72  # falls back to the example
