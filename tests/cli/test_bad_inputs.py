"""Bad input on the command line: exit 2, one line per problem naming the argument or
file, no traceback, and nothing connected to or written. One test per class of input.

The commands run in-process (`bot.cli.main.main`). The database DSN points at a closed
port unless a test needs the database: a command that connected before refusing would
exit 1, not 2.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
from pathlib import Path

import polars as pl
import pytest

from bot.cli import args as cli_args
from bot.cli.args import Problems, UsageError, parse_time, positive_float, positive_int, window
from bot.cli.main import main, run_command
from bot.core.db.pool import Database
from bot.research.dataset import FEATURES

UNREACHABLE = "postgresql://u@127.0.0.1:1/x"


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """cwd = an empty work dir (the example config, data_dir inside it), an unreachable database."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("BOT_CONFIG", raising=False)
    monkeypatch.setenv("BOT_DATABASE_DSN", UNREACHABLE)
    return work


def bad(argv: list[str], capsys: pytest.CaptureFixture[str]) -> list[str]:
    """Run `bot argv`, assert exit 2 without a traceback; the stderr lines."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines and all(ln.startswith("error: ") for ln in lines), err
    return lines


def written(work: Path) -> list[Path]:
    return sorted(p for p in work.rglob("*"))


@pytest.fixture
def pairs(tmp_path: Path) -> Path:
    p = tmp_path / "pairs.txt"
    p.write_text("AAA BBB\n")
    return p


# ---------------------------------------------------------------- data files of train and score

def test_a_file_that_is_not_parquet(offline: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.parquet"
    junk.write_text("coin1,coin2\nA,B\n")
    for argv in (["train", "--dataset", str(junk)], ["score", str(junk)]):
        (line,) = bad(argv, capsys)
        assert str(junk) in line and "not a parquet file" in line
    assert written(offline) == []  # no model saved


def test_a_parquet_without_the_columns(offline: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    part = tmp_path / "part.parquet"
    pl.DataFrame({"coin1": ["A"], "coin2": ["B"], **{f: [1.0] for f in FEATURES if f != "corr"}}).write_parquet(part)
    (line,) = bad(["train", "--dataset", str(part)], capsys)
    assert str(part) in line and "lacks the dataset's columns" in line
    for col in ("window_id", "train_start", "corr", "pr_test", "pr_rat_test"):
        assert repr(col) in line
    assert "'std_1'" not in line  # present columns are not listed
    (line,) = bad(["score", str(part), "--model", str(tmp_path / "m.json")], capsys)
    assert str(part) in line and "lacks the statistics columns ['corr']" in line
    typed = tmp_path / "typed.parquet"
    pl.DataFrame({"coin1": ["A"], "coin2": ["B"], **{f: [1.0] for f in FEATURES}}).with_columns(
        pl.lit("x").alias("corr")).write_parquet(typed)
    (line,) = bad(["score", str(typed)], capsys)
    assert "columns not numeric: corr (String)" in line
    assert written(offline) == []


def test_a_missing_input_file(offline: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stats = tmp_path / "stats.parquet"
    pl.DataFrame({"coin1": ["A"], "coin2": ["B"], **{f: [1.0] for f in FEATURES}}).write_parquet(stats)
    (line,) = bad(["train", "--dataset", str(tmp_path / "nope.parquet")], capsys)
    assert "nope.parquet: no such file" in line
    (line,) = bad(["score", str(stats), "--model", str(tmp_path / "model-x.json")], capsys)
    assert line == f"error: --model: no such model file: {tmp_path / 'model-x.json'}"


# ---------------------------------------------------------------- numbers

@pytest.mark.parametrize(("argv", "message"), [
    (["data", "record", "--seconds", "-1"], "--seconds: must be a positive number (got -1)"),
    (["data", "record", "--seconds", "0"], "--seconds: must be a positive number (got 0)"),
    (["data", "backfill", "--days", "0"], "--days: must be a positive number (got 0)"),
    (["data", "backfill", "--days", "nan"], "--days: must be a positive number (got nan)"),
    (["data", "demo", "--days", "-2"], "--days: must be a positive number (got -2)"),
    (["data", "demo", "--quote-interval", "0"], "--quote-interval: must be a positive number (got 0)"),
    (["data", "demo", "--symbols", "3"], "--symbols: from 8 to"),
    (["stats", "--pairs", "{pairs}", "--iters", "0"], "--iters: must be a positive integer (got 0)"),
    (["sweep", "--pairs", "{pairs}", "--workers", "-1"], "--workers: must be a positive integer (got -1)"),
    (["dataset", "--pairs", "{pairs}", "--start", "2024-01-01", "--end", "2025-01-01", "--workers", "0"],
     "--workers: must be a positive integer (got 0)"),
    (["dataset", "--pairs", "{pairs}", "--start", "2024-01-01", "--end", "2025-01-01", "--iters", "-5"],
     "--iters: must be a positive integer (got -5)"),
    (["train", "--min-train-windows", "0"], "--min-train-windows: must be a positive integer (got 0)"),
])
def test_non_positive_numbers(argv: list[str], message: str, offline: Path, pairs: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    (line,) = bad([a.replace("{pairs}", str(pairs)) for a in argv], capsys)
    assert line.startswith(f"error: {message}"), line
    assert written(offline) == []


# ---------------------------------------------------------------- times and windows

@pytest.mark.parametrize("argv", [
    ["stats", "--pairs", "{pairs}", "--start", "2025-13-01"],
    ["sweep", "--pairs", "{pairs}", "--valid", "yesterday"],
    ["dataset", "--pairs", "{pairs}", "--start", "2025-01-01", "--end", "2025-02-30"],
])
def test_a_bad_iso_time(argv: list[str], offline: Path, pairs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    flag, value = argv[-2], argv[-1]
    (line,) = bad([a.replace("{pairs}", str(pairs)) for a in argv], capsys)
    assert line.startswith(f"error: {flag}: not an ISO date/time") and line.endswith(f"(got {value!r})")


def test_a_window_that_ends_before_it_starts(offline: Path, pairs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (line,) = bad(["dataset", "--pairs", str(pairs), "--start", "2025-03-01", "--end", "2025-01-01"], capsys)
    assert line == ("error: --end must be after --start "
                    "(got --start 2025-03-01T00:00:00+00:00, --end 2025-01-01T00:00:00+00:00)")
    (line,) = bad(["dataset", "--pairs", str(pairs), "--start", "2025-01-01", "--end", "2025-01-20"], capsys)
    assert "shorter than one window" in line and "--start 2025-01-01" in line and "--end 2025-01-20" in line
    lines = bad(["stats", "--pairs", str(pairs), "--start", "2025-04-01", "--valid", "2025-03-01",
                 "--end", "2025-02-01"], capsys)
    assert lines == [
        "error: --valid must be after --start (got --start 2025-04-01T00:00:00+00:00, "
        "--valid 2025-03-01T00:00:00+00:00)",
        "error: --end must be at or after --valid (got --valid 2025-03-01T00:00:00+00:00, "
        "--end 2025-02-01T00:00:00+00:00)",
    ]
    assert written(offline) == []


# ---------------------------------------------------------------- files named by arguments

def test_a_missing_or_malformed_pairs_file(offline: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (line,) = bad(["stats", "--pairs", str(tmp_path / "none.txt")], capsys)
    assert line == f"error: --pairs: {tmp_path / 'none.txt'}: cannot read (No such file or directory)"
    mal = tmp_path / "mal.txt"
    mal.write_text("AAA BBB\nCCC\n")
    (line,) = bad(["dataset", "--pairs", str(mal), "--start", "2024-01-01", "--end", "2025-01-01"], capsys)
    assert line == f"error: --pairs: {mal}, line 2: expected two tokens 'T1 T2' (got 'CCC')"
    assert written(offline) == []


def test_an_output_that_cannot_be_written(offline: Path, pairs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (offline / "afile").write_text("")
    (line,) = bad(["stats", "--pairs", str(pairs), "--out", str(offline / "afile" / "x.parquet")], capsys)
    assert line == f"error: --out: cannot create {offline / 'afile' / 'x.parquet'}: {offline / 'afile'} is not a directory"
    (line,) = bad(["sweep", "--pairs", str(pairs), "--log", str(offline)], capsys)
    assert line == f"error: --log: is a directory, not a file: {offline}"


def test_every_bad_import_file_is_named(offline: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "X_USDT-1h.parquet"
    junk.write_text("not parquet")
    lines = bad(["data", "import", str(tmp_path / "nope.csv"), str(junk)], capsys)
    assert len(lines) == 2 and "nope.csv: no such file" in lines[0] and str(junk) in lines[1]
    (line,) = bad(["data", "import", str(junk), "--tf", "7m"], capsys)
    assert line.startswith("error: --tf: unknown timeframe '7m' (expected one of 1m, 5m")


def test_every_problem_is_listed_at_once(offline: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = bad(["stats", "--pairs", str(tmp_path / "none.txt"), "--start", "xx", "--iters", "0", "--workers", "0"],
                capsys)
    assert [ln.split(":")[1].strip() for ln in lines] == ["--start", "--iters", "--workers", "--pairs"]
    lines = bad(["data", "backfill", "--days", "-1", "--tf", "1h,7m", "--symbols", "BT$C,ETH"], capsys)
    assert lines == ["error: --tf: unknown timeframe '7m' (expected one of 1m, 5m, 15m, 30m, 1h, 4h, 1d)",
                     "error: --days: must be a positive number (got -1)",
                     "error: --symbols: not a token or symbol: 'BT$C'"]


def test_bad_demo_arguments_start_no_server(offline: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = bad(["demo", "--days", "0", "--symbols", "2", "--dir", str(offline / "demo")], capsys)
    assert len(lines) == 2
    assert written(offline) == []  # no work dir, no pgdata


# ---------------------------------------------------------------- symbols the database does not know

async def three_instruments(db: Database) -> None:
    from bot.core.db.market import upsert_instruments

    await upsert_instruments(db, pl.DataFrame({
        "symbol": ["KAVAUSDT", "KASUSDT", "BTCUSDT"], "qty_step": ["0.1", "1", "0.001"],
        "min_qty": ["0.1", "1", "0.001"], "tick_size": ["0.0001", "0.00001", "0.1"], "price_scale": [4, 5, 1]}))


@pytest.mark.db
@pytest.mark.asyncio(loop_scope="session")
async def test_backfill_of_an_unknown_symbol(db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    await three_instruments(db)
    cfg = tmp_path / "config.yaml"  # an exchange that is not there: a fetch would be exit 1
    cfg.write_text("exchange:\n  base_url: http://127.0.0.1:9\n  max_attempts: 1\n")
    monkeypatch.setenv("BOT_DATABASE_DSN", db.dsn)
    code = await asyncio.to_thread(main, ["--config", str(cfg), "data", "backfill", "--days", "1",
                                          "--symbols", "BTC,KAVS,NOPE_USDT"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.strip() == ("error: --symbols: unknown symbols KAVS (did you mean KAS or KAVA?), NOPE; "
                           "the instruments table holds 3: BTC, KAS, KAVA (`bot data instruments` refreshes it)")
    async with db.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM bars") == 0


@pytest.mark.db
@pytest.mark.asyncio(loop_scope="session")
async def test_known_tokens_from_instruments_and_bars(db: Database) -> None:
    from bot.core.db.market import copy_bars

    await three_instruments(db)
    t0 = dt.datetime(2025, 1, 1, tzinfo=dt.UTC).timestamp()
    await copy_bars(db, pl.DataFrame({"symbol": ["ZZZUSDT"], "open_time": [t0], "open": [1.0], "high": [1.0],
                                      "low": [1.0], "close": [1.0], "volume": [0.0]}), "1h")
    await cli_args.require_known_tokens(db, ["zzz", "BTCUSDT"], "T1", bars_tf="1h")
    with pytest.raises(UsageError, match=r"^T2: unknown symbol ZZZ; the instruments table holds 3: BTC, KAS, KAVA$"):
        await cli_args.require_known_tokens(db, ["ZZZ"], "T2")
    with pytest.raises(UsageError, match=r"the database \(instruments and 1h bars\) holds 4: BTC, KAS, KAVA, ZZZ"):
        await cli_args.require_known_tokens(db, ["QQQ"], "T1", bars_tf="1h")


# ---------------------------------------------------------------- the helpers and the last resort

def test_parse_time_forms() -> None:
    utc = dt.UTC
    assert parse_time("2025-01-05", "--start") == dt.datetime(2025, 1, 5, tzinfo=utc)
    assert parse_time("2025-01-05T12:30Z", "--start") == dt.datetime(2025, 1, 5, 12, 30, tzinfo=utc)
    assert parse_time("2025-01-05 14:30+02:00", "--start") == dt.datetime(2025, 1, 5, 12, 30, tzinfo=utc)
    assert parse_time("2025-01-05 14:30+02:00", "--start").tzinfo is utc
    assert parse_time(None, "--start", dt.datetime(2025, 2, 1)) == dt.datetime(2025, 2, 1, tzinfo=utc)
    with pytest.raises(UsageError, match="^--end: required"):
        parse_time(None, "--end")


def test_checks_collect_and_pass_through() -> None:
    assert positive_int(None, "--iters") is None and positive_int(3, "--iters") == 3
    assert positive_float(0.5, "--days") == 0.5
    for v in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(UsageError):
            positive_float(v, "--days")
    p = Problems()
    a = p.check(parse_time, "2025-02-01", "--start")
    b = p.check(parse_time, "nope", "--end")
    p.check(window, a, b)  # skipped: --end did not parse
    p.check(positive_int, 0, "--iters")
    with pytest.raises(UsageError) as info:
        p.raise_if_any()
    assert [m.split(":")[0] for m in info.value.problems] == ["--end", "--iters"]
    window(a, a, allow_equal=True)
    with pytest.raises(UsageError, match="--end must be after --start"):
        window(a, a)


def test_an_unexpected_failure_is_one_line_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    def broken(_args: argparse.Namespace, _cfg: object) -> int:
        raise KeyError("surprise")

    code = run_command(broken, argparse.Namespace(needs_config=False, verbose=0))
    err = capsys.readouterr().err
    assert code == 1 and err == "error: unexpected KeyError: 'surprise' (-vv shows the traceback)\n"


def test_good_files_still_train_and_score(offline: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The checks accept what `bot dataset` and `bot stats` write (datetimes, ints, nulls)."""
    from tests.research.test_model import synthetic

    data = synthetic(n_windows=4, n_tokens=6).with_columns(
        pl.when(pl.col("coin1") == "T0").then(None).otherwise(pl.col("dist")).alias("dist"))
    data.write_parquet(offline / "dataset.parquet")
    data.drop("window_id", "train_start", "valid_time", "end_time").write_parquet(offline / "stats.parquet")
    cfg = offline / "config.yaml"
    cfg.write_text("model:\n  iterations: 20\n  depth: 3\n  dir: models\n")
    assert main(["--config", str(cfg), "train", "--dataset", "dataset.parquet"]) == 0, capsys.readouterr().err
    assert "saved models/model-" in capsys.readouterr().out
    assert main(["--config", str(cfg), "score", "stats.parquet", "--any"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert out.startswith("model model-") and "pred" in out
