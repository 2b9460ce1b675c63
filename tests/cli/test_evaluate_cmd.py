"""`bot evaluate` end to end: on a built dataset, on candle files (a throw-away database),
and every bad input refused before any work with all its problems listed."""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl
import pytest

from bot.cli.main import main
from tests.selection.test_evaluate import frame


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BOT_CONFIG", raising=False)
    monkeypatch.delenv("BOT_DATABASE_DSN", raising=False)
    (tmp_path / "config.yaml").write_text("model:\n  iterations: 30\n  depth: 3\n  target: pr_test\n"
                                          "selection:\n  max_pairs: 3\n")
    return tmp_path


def test_on_a_dataset_writes_the_table_the_rows_and_the_plot(here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    frame(n_windows=7).write_parquet(here / "ds.parquet")
    rc = main(["--config", "config.yaml", "evaluate", "--dataset", "ds.parquet", "--draws", "30",
               "--min-train-windows", "2", "--holdout-after", "2025-06-01", "--out", "ev"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    for name in ("rows.parquet", "windows.parquet", "summary.parquet", "report.txt", "cumulative.png"):
        assert (here / "ev" / name).stat().st_size > 0, name
    assert (here / "ev" / "cumulative.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = pl.read_parquet(here / "ev" / "rows.parquet")
    assert rows.height == 7 * 28 and {"pick_bot", "pick_hindsight", "split", "pred"} <= set(rows.columns)
    summary = pl.read_parquet(here / "ev" / "summary.parquet")
    assert set(summary["split"].to_list()) == {"tuning", "holdout", "all"}
    assert {"bot", "random", "lowest_pvalue", "coint_filter", "train_pr_rat", "hindsight"} <= set(summary["method"])
    report = (here / "ev" / "report.txt").read_text()
    assert report.strip() in out and "tuning: the bot's selection" in report and "holdout:" in report
    assert "bot rule per window" in report and "the fallback rule (pr_rat_all) against random" in report


@pytest.mark.parametrize("argv, says", [
    ([], "--start and --end are required (or --dataset)"),
    (["--start", "2025-02-01", "--end", "2025-01-01"], "--end must be after --start"),
    (["--start", "2025-01-01", "--end", "2025-03-01", "--files", "nope.parquet", "--draws", "0"],
     "--files: no such file: nope.parquet"),
    (["--dataset", "x.parquet", "--files", "y.parquet"], "--files and --pairs do not apply"),
    (["--dataset", "x.parquet", "--iters", "5"], "--iters and --workers do not apply"),
    (["--start", "2025-01-01", "--end", "2025-01-20"], "shorter than one window of model.train_days"),
])
def test_bad_arguments_are_refused_before_any_work(here: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                                                   says: str) -> None:
    rc = main(["--config", "config.yaml", "evaluate", *argv, "--out", "ev"])
    err = capsys.readouterr().err
    assert rc == 2 and says in err
    if "--draws" in argv:
        assert "--draws" in err  # every problem listed at once
    assert not (here / "ev").exists()


def test_a_dataset_that_is_not_one_is_refused(here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pl.DataFrame({"a": [1]}).write_parquet(here / "bad.parquet")
    assert main(["--config", "config.yaml", "evaluate", "--dataset", "bad.parquet", "--out", "ev"]) == 2
    assert "lacks the dataset's columns" in capsys.readouterr().err and not (here / "ev").exists()
    frame(n_windows=3).with_columns(pl.lit(None, pl.Float64).alias("pr_test")).write_parquet(here / "null.parquet")
    assert main(["--config", "config.yaml", "evaluate", "--dataset", "null.parquet", "--out", "ev"]) == 2
    assert "no row has a test profit" in capsys.readouterr().err and not (here / "ev").exists()


def test_on_candle_files_in_a_throw_away_database(here: Path, shared_data: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Six real perpetuals, 1 h bars, 20 + 7 day windows: the bars-only path end to end. The
    database is a scratch one (on BOT_TEST_DSN's server when set, else an embedded
    PostgreSQL) and is dropped afterwards."""
    src = pl.read_parquet(shared_data / "ohlcv" / "binance_usdm_futures_1h_40pairs.parquet")
    toks = ["ADA", "DOGE", "LINK", "XRP", "LTC", "DOT"]
    part = src.filter(pl.col("pair").is_in([f"{t}/USDT:USDT" for t in toks])
                      & (pl.col("date") >= pl.datetime(2025, 5, 1, time_zone="UTC"))
                      & (pl.col("date") < pl.datetime(2025, 7, 10, time_zone="UTC")))
    part.write_parquet(here / "candles.parquet")
    dsn = os.environ.get("BOT_TEST_DSN")
    (here / "config.yaml").write_text(
        (f"database:\n  dsn: {dsn}\n" if dsn else "") +
        "strategy:\n  fee_rate: 0.00055\n  min_order_size: 0.0\n  sl_method: cooldown\n"
        "research:\n  iters: 3\nmodel:\n  iterations: 20\n  depth: 3\n  train_days: 20\n  test_days: 7\n"
        "selection:\n  max_pairs: 2\n")
    rc = main(["--config", "config.yaml", "evaluate", "--files", "candles.parquet", "--start", "2025-05-01",
               "--end", "2025-07-10", "--workers", "1", "--draws", "20", "--min-train-windows", "2", "--out", "ev"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "symbols with 1h bars over the whole range: 6" in out and "15 pairs, 7 windows" in out
    rows = pl.read_parquet(here / "ev" / "rows.parquet")
    assert rows["window_id"].n_unique() == 7 and rows.height == 7 * 15
    assert rows["fees_test"].drop_nulls().min() >= 0 and rows["zero_cross"].drop_nulls().min() >= 0
