"""`bot data import` of instruments (a saved Bybit instruments-info answer), the commands
that need instruments, and `bot data info` (issue 12 items 3 and 7), against a real
PostgreSQL. The commands run in-process (`bot.cli.main.main`, on a thread: they run
their own event loop) in an empty work directory with the example config.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import json
from decimal import Decimal
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from bot.cli.main import main
from bot.core.db.market import copy_bars, copy_quotes, read_instruments
from bot.core.db.pool import Database

pytestmark = [pytest.mark.db, pytest.mark.asyncio(loop_scope="session")]

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "bybit_instruments_linear.json"
T0 = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
BARS = 24 * 30  # 30 days of 1h candles
START, END = "2025-01-05", "2025-01-30"


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db: Database) -> Path:
    w = tmp_path / "work"
    w.mkdir()
    monkeypatch.chdir(w)
    monkeypatch.delenv("BOT_CONFIG", raising=False)
    monkeypatch.setenv("BOT_DATABASE_DSN", db.dsn)
    return w


async def bot(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def usage_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run `bot argv`, assert exit 2 with one error line and no traceback; that line."""
    code, _out, err = await bot(capsys, *argv)
    assert code == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip() and " level=" not in ln]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


async def clean(db: Database) -> None:
    async with db.pool.acquire() as conn:
        await conn.execute("TRUNCATE instruments, bars, quotes")


def write_candles(directory: Path, prices: dict[str, float], seed: int = 3) -> list[Path]:
    """Freqtrade-style 1h candle CSVs (`BTC_USDT-1h.csv`): the first symbol a random walk,
    the others cointegrated with it (its log price plus mean-reverting noise)."""
    rng = np.random.default_rng(seed)
    lead = np.cumsum(rng.normal(0, 0.01, BARS))
    out = []
    for k, (sym, level) in enumerate(prices.items()):
        noise = np.zeros(BARS)
        if k:
            for i in range(1, BARS):
                noise[i] = 0.85 * noise[i - 1] + rng.normal(0, 0.01)
        close = level * np.exp(lead + noise)
        open_ = np.concatenate([[close[0]], close[:-1]])
        frame = pl.DataFrame({
            "date": [(T0 + dt.timedelta(hours=i)).isoformat() for i in range(BARS)],
            "open": open_, "high": np.maximum(open_, close) * 1.001, "low": np.minimum(open_, close) * 0.999,
            "close": close, "volume": np.full(BARS, 10.0)})
        path = directory / f"{sym.removesuffix('USDT')}_USDT-1h.csv"
        frame.write_csv(path)
        out.append(path)
    return out


async def table(db: Database) -> list[dict[str, object]]:
    return (await read_instruments(db)).to_dicts()


def multiple_of(x: float, step: str) -> bool:
    q = Decimal(repr(x)) / Decimal(step)
    return q == q.to_integral_value()


# ---------------------------------------------------------------- item 3: instruments offline

async def test_imported_instruments_then_backtest_on_imported_candles(
        db: Database, work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bot.cli.backtest_cmd import run_backtest_from_db
    from bot.config import load
    from bot.config.loader import example_path

    await clean(db)
    candles = write_candles(work, {"BTCUSDT": 600.0, "ETHUSDT": 30.0})
    code, out, err = await bot(capsys, "data", "import", str(FIXTURE), *map(str, candles))
    assert code == 0, err
    assert "bybit_instruments_linear.json: 2 instruments: 2 new or updated rows" in out
    inst = {r["symbol"]: r for r in await table(db)}
    assert sorted(inst) == ["BTCUSDT", "ETHUSDT"]
    # exactly as written in the answer
    assert (inst["BTCUSDT"]["qty_step"], inst["BTCUSDT"]["min_qty"], inst["BTCUSDT"]["tick_size"],
            inst["BTCUSDT"]["min_notional"], inst["BTCUSDT"]["max_mkt_qty"], inst["BTCUSDT"]["max_qty"]) == (
        "0.001", "0.001", "0.5", "5", "50.0", "100.0")
    assert (inst["ETHUSDT"]["qty_step"], inst["ETHUSDT"]["tick_size"], inst["ETHUSDT"]["price_scale"],
            inst["ETHUSDT"]["base_coin"], inst["ETHUSDT"]["status"]) == ("0.01", "0.05", 2, "ETH", "Trading")
    # the import is idempotent: the same rows again
    code, _, err = await bot(capsys, "data", "import", str(FIXTURE))
    assert code == 0, err
    assert {r["symbol"]: r for r in await table(db)} == inst

    code, out, err = await bot(capsys, "backtest", "BTC", "ETH", "--start", START, "--end", END, "--wind", "48",
                               "--in", "1.5", "--out", "0.2")
    assert code == 0, err
    trades = int(next(line.split()[1] for line in out.splitlines() if line.startswith("  trades ")))
    assert trades > 0
    # the same run in-process: quantities on the imported steps (ETH's 0.01, not 0.1 from its price)
    base = load(example_path())
    s = base.strategy.model_dump() | {"wind": 48, "thresh_in": 1.5, "thresh_out": 0.2}
    run = await run_backtest_from_db(db, base, "BTC", "ETH", dt.datetime(2025, 1, 5, tzinfo=dt.UTC),
                                     dt.datetime(2025, 1, 30, tzinfo=dt.UTC), s)
    assert run.trades.height == trades
    q1, q2 = run.trades["qty_1"].to_list(), run.trades["qty_2"].to_list()
    assert all(multiple_of(q, "0.001") for q in q1) and all(multiple_of(q, "0.01") for q in q2)
    assert not all(multiple_of(q, "0.1") for q in q2)
    # --assume-instruments changes nothing when the instruments are there
    assumed = await run_backtest_from_db(db, base, "BTC", "ETH", dt.datetime(2025, 1, 5, tzinfo=dt.UTC),
                                         dt.datetime(2025, 1, 30, tzinfo=dt.UTC), s, assume_instruments=True)
    assert assumed.trades.equals(run.trades)


def _answer() -> dict[str, object]:
    return json.loads(FIXTURE.read_text())


def _without_qty_step() -> dict[str, object]:
    a = _answer()
    del a["result"]["list"][1]["lotSizeFilter"]["qtyStep"]  # type: ignore[index]
    return a


def _with(path: tuple[object, ...], value: object) -> dict[str, object]:
    a = copy.deepcopy(_answer())
    node: object = a
    for key in path[:-1]:
        node = node[key]  # type: ignore[index]
    node[path[-1]] = value  # type: ignore[index]
    return a


BAD_ANSWERS = [
    ("list", json.dumps([{"symbol": "BTCUSDT"}]), "not a Bybit instruments-info answer: expected a JSON object"),
    ("retcode", json.dumps({"retCode": 10001, "retMsg": "params error", "result": {}}),
     "retCode: 10001 ('params error'): the answer of a failed request holds no instruments"),
    ("no-retcode", json.dumps({"result": _answer()["result"]}), "retCode: missing"),
    ("no-qty-step", json.dumps(_without_qty_step()), "result.list[1] (ETHUSDT).lotSizeFilter.qtyStep: missing"),
    ("zero-step", json.dumps(_with(("result", "list", 0, "lotSizeFilter", "qtyStep"), "0")),
     "result.list[0] (BTCUSDT).lotSizeFilter.qtyStep: must be positive (got '0')"),
    ("junk-tick", json.dumps(_with(("result", "list", 0, "priceFilter", "tickSize"), "abc")),
     "result.list[0] (BTCUSDT).priceFilter.tickSize: not a number (got 'abc')"),
    ("no-lot", json.dumps(_with(("result", "list", 1, "lotSizeFilter"), None)),
     "result.list[1] (ETHUSDT).lotSizeFilter: missing"),
    ("no-list", json.dumps(_with(("result", "list"), {"BTCUSDT": {}})), "result.list: not a list (got dict)"),
    ("empty", json.dumps(_with(("result", "list"), [])), "result.list: empty"),
    ("inverse", json.dumps(_with(("result", "list", 0, "contractType"), "InversePerpetual")),
     "result.list[0] (BTCUSDT).contractType: 'InversePerpetual' is not a linear contract"),
    ("spot", json.dumps(_with(("result", "category"), "spot")), "result.category: 'spot', expected 'linear'"),
    ("twice", json.dumps(_with(("result", "list", 1, "symbol"), "BTCUSDT")),
     "result.list[1].symbol: BTCUSDT repeated (first at result.list[0])"),
    ("truncated", FIXTURE.read_text()[:200], "not valid JSON"),
]


@pytest.mark.parametrize(("name", "content", "message"), BAD_ANSWERS, ids=[b[0] for b in BAD_ANSWERS])
async def test_a_bad_instruments_file_names_file_and_field_and_writes_nothing(
        db: Database, work: Path, capsys: pytest.CaptureFixture[str], name: str, content: str, message: str) -> None:
    await clean(db)
    async with db.pool.acquire() as conn:  # a table that holds something: it must stay as it is
        await conn.execute("INSERT INTO instruments (symbol, base_coin, qty_step, min_qty, min_notional, tick_size,"
                           " price_scale, status) VALUES ('SOLUSDT', 'SOL', 0.1, 0.1, 5, 0.01, 2, 'Trading')")
    before = await table(db)
    bad = work / f"{name}.json"
    bad.write_text(content)
    # with a good file beside it: neither is written
    line = await usage_error(capsys, "data", "import", str(FIXTURE), str(bad))
    assert line.startswith(f"error: {bad}: "), line
    assert message in line, line
    assert await table(db) == before


async def test_content_decides_the_kind_of_a_file(db: Database, work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    await clean(db)
    saved = work / "instruments.txt"  # not named .json: the content says what it is
    saved.write_bytes(b"\n  " + FIXTURE.read_bytes())
    code, out, err = await bot(capsys, "data", "import", str(saved))
    assert code == 0, err
    assert "instruments.txt: 2 instruments" in out
    # one page of several: imported, and the cursor is reported
    paged = work / "page1.json"
    paged.write_text(json.dumps(_with(("result", "nextPageCursor"), "abc%3D%3D")))
    code, out, err = await bot(capsys, "data", "import", str(paged))
    assert code == 0, err
    assert "nextPageCursor 'abc%3D%3D' is set, import the next pages too" in out


async def test_commands_needing_instruments_name_the_missing_and_the_remedies(
        db: Database, work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bot.cli.backtest_cmd import run_backtest_from_db
    from bot.config import load
    from bot.config.loader import example_path

    await clean(db)
    candles = write_candles(work, {"BTCUSDT": 600.0, "ETHUSDT": 30.0, "SOLUSDT": 20.0})
    code, _, err = await bot(capsys, "data", "import", *map(str, candles))
    assert code == 0, err
    pairs = work / "pairs.txt"
    pairs.write_text("BTC ETH\nETH SOL\n")
    remedies = ("`bot data import <instruments-info.json>`", "`bot data instruments`", "--assume-instruments")
    async with db.pool.acquire() as conn:
        runs = await conn.fetchval("SELECT count(*) FROM backtest_runs")

    line = await usage_error(capsys, "backtest", "BTC", "ETH", "--start", START, "--end", END, "--wind", "48")
    assert line.startswith("error: T1/T2: no instrument for BTC, ETH (the instruments table is empty); "), line
    assert all(r in line for r in remedies), line
    for cmd in (["dataset", "--start", "2024-10-01", "--end", "2025-01-30"], ["stats"], ["sweep"]):
        line = await usage_error(capsys, *cmd, "--pairs", str(pairs), "--iters", "2", "--workers", "1")
        assert line.startswith("error: --pairs: no instrument for BTC, ETH, SOL (the instruments table is empty); ")
        assert all(r in line for r in remedies), line
    async with db.pool.acquire() as conn:  # refused before any run started
        assert await conn.fetchval("SELECT count(*) FROM backtest_runs") == runs
    assert not (work / "var").exists() and not list(work.rglob("*.parquet"))

    # a symbol the table lacks while it holds others
    code, _, err = await bot(capsys, "data", "import", str(FIXTURE))
    assert code == 0, err
    line = await usage_error(capsys, "backtest", "ETH", "SOL", "--start", START, "--end", END, "--wind", "48")
    assert line.startswith("error: T1/T2: no instrument for SOL (the instruments table holds 2: BTC, ETH); "), line
    line = await usage_error(capsys, "stats", "--pairs", str(pairs))
    assert line.startswith("error: --pairs: no instrument for SOL (the instruments table holds 2: BTC, ETH); ")
    # a token the database does not know at all stays an unknown symbol
    line = await usage_error(capsys, "backtest", "ETH", "SOLL", "--start", START, "--end", END)
    assert "unknown symbol SOLL (did you mean SOL?)" in line, line

    # --assume-instruments: steps from the prices, as research (SOL at ~20: 0.1)
    code, out, err = await bot(capsys, "backtest", "ETH", "SOL", "--start", START, "--end", END, "--wind", "48",
                               "--in", "1.5", "--out", "0.2", "--assume-instruments")
    assert code == 0, err
    base = load(example_path())
    s = base.strategy.model_dump() | {"wind": 48, "thresh_in": 1.5, "thresh_out": 0.2}
    run = await run_backtest_from_db(db, base, "ETH", "SOL", dt.datetime(2025, 1, 5, tzinfo=dt.UTC),
                                     dt.datetime(2025, 1, 30, tzinfo=dt.UTC), s, assume_instruments=True)
    assert run.trades.height > 0
    assert all(multiple_of(q, "0.01") for q in run.trades["qty_1"].to_list())  # ETH: imported
    assert all(multiple_of(q, "0.1") for q in run.trades["qty_2"].to_list())   # SOL: assumed


# ---------------------------------------------------------------- item 7: bot data info

async def test_data_info_lists_ranges_counts_and_holes(db: Database, work: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    await clean(db)
    t0 = T0.timestamp()
    hours = [h for h in range(48) if h not in (10, 11, 12, 30)]  # a 3-bar hole and a 1-bar hole

    def bars(sym: str, step: int, slots: list[int]) -> pl.DataFrame:
        return pl.DataFrame({"symbol": [sym] * len(slots), "open_time": [t0 + k * step for k in slots],
                             "open": 1.0, "high": 1.0, "low": 1.0, "close": 1.0, "volume": 0.0})

    await copy_bars(db, bars("AAAUSDT", 3600, hours), "1h")
    await copy_bars(db, bars("AAAUSDT", 300, list(range(36))), "5m")  # complete: 3 hours of 5m bars
    await copy_bars(db, bars("BBBUSDT", 3600, list(range(5, 25))), "1h")
    await copy_quotes(db, pl.DataFrame({"symbol": ["AAAUSDT"] * 3, "ts": [t0 + 7, t0 + 12, t0 + 3600 + 5],
                                        "bid_price": 1.0, "ask_price": 1.1, "bid_size": 1.0, "ask_size": 1.0}))
    async with db.pool.acquire() as conn:
        await conn.execute("INSERT INTO instruments (symbol, base_coin, qty_step, min_qty, min_notional, tick_size,"
                           " price_scale, status) VALUES ('AAAUSDT', 'AAA', 1, 1, 5, 0.0001, 4, 'Trading')")

    code, out, err = await bot(capsys, "data", "info")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "instruments: 1"
    assert lines[1].startswith("  symbols with bars but no instrument: 1 (BBBUSDT); `bot data import")
    assert lines[2] == "bars: 100 rows, 3 series (symbol, timeframe), 1 with missing bars"
    cells = [ln.split() for ln in lines[3:7]]
    assert cells[0] == ["symbol", "tf", "first", "(UTC)", "last", "(UTC)", "bars", "missing", "holes", "largest",
                        "hole"]
    assert cells[1] == ["AAAUSDT", "5m", "2025-01-01", "00:00", "2025-01-01", "02:55", "36", "0", "0", "0"]
    assert cells[2] == ["AAAUSDT", "1h", "2025-01-01", "00:00", "2025-01-02", "23:00", "44", "4", "2", "3"]
    assert cells[3] == ["BBBUSDT", "1h", "2025-01-01", "05:00", "2025-01-02", "00:00", "20", "0", "0", "0"]
    assert lines[7] == "quotes: 3 rows over 1 symbols"
    assert lines[9].split() == ["AAAUSDT", "2025-01-01", "00:00:07", "2025-01-01", "01:00:05", "3"]

    code, out, err = await bot(capsys, "data", "info", "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["instruments"] == 1 and info["symbols_without_instrument"] == ["BBBUSDT"]
    assert info["bars"][1] == {"symbol": "AAAUSDT", "tf": "1h", "first": "2025-01-01T00:00:00+00:00",
                               "last": "2025-01-02T23:00:00+00:00", "bars": 44, "missing": 4, "holes": 2,
                               "largest_hole": 3}
    assert info["quotes"] == [{"symbol": "AAAUSDT", "first": "2025-01-01T00:00:07+00:00",
                               "last": "2025-01-01T01:00:05+00:00", "quotes": 3}]


async def test_data_info_of_an_empty_database(db: Database, work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    await clean(db)
    code, out, err = await bot(capsys, "data", "info")
    assert code == 0, err
    assert out.splitlines() == ["instruments: 0", "bars: none", "quotes: none"]
    code, out, err = await bot(capsys, "data", "info", "--json")
    assert json.loads(out) == {"instruments": 0, "symbols_without_instrument": [], "bars": [], "quotes": []}
