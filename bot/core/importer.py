"""`bot data import`: candles and quotes from CSV or parquet files, instruments from JSON.

Candles: a time column (`date`, `time`, `timestamp`, `open_time` or `ts`; datetimes,
ISO strings, or epoch s/ms integers), `open`, `high`, `low`, `close`, optional
`volume`; the symbol from a `pair`/`symbol` column (freqtrade `BTC/USDT:USDT` ->
`BTCUSDT`) or else from the file name (`BTC_USDT-1h.csv` -> `BTCUSDT`). The
timeframe is read from the data (the spacing of the bars) unless given.

Quotes: `bid_price`/`ask_price` (or `bid`/`ask`) with sizes (`bid_qty`/`bid_size`,
...), a time column (`transaction_time_ms`, `event_time_ms`, `timestamp`, `ts`)
and a symbol. Quotes are stored as snapshots at whole seconds: the last quote of
each second per symbol (the recorder samples every 5 s anyway).

Instruments: a saved answer of Bybit's GET /v5/market/instruments-info (category
linear), `{"retCode": 0, "result": {"category": "linear", "list": [...],
"nextPageCursor": ...}}`, e.g. `curl
'https://api.bybit.com/v5/market/instruments-info?category=linear&limit=1000'`.
Every entry goes through the live refresh's parser (`bybit.instrument_from_json`:
qtyStep, minOrderQty, tickSize required and positive, minNotionalValue >= 0, exact
decimals as written) and is upserted into `instruments`, as `bot data instruments`
does. One page per file: an answer whose nextPageCursor is set is imported and the
cursor is reported (import the next pages too).

The kind of a file is read from its content: a file whose first non-blank
character is `{` or `[` (or named `*.json`) is an instruments-info answer; otherwise
CSV/parquet columns decide (bid/ask: quotes, open/high/low/close: candles).

Every file is validated whole before anything is written: columns, types, time
order per symbol (strictly increasing), positive prices, high/low consistency; for
instruments the answer's shape (retCode 0, result.list) and every entry's fields.
One bad row rejects the file, naming the file and the row (1-based, as in the file)
or the field (`result.list[1] (ETHUSDT).lotSizeFilter.qtyStep: missing`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from bot.analysis.zscore import TF_SECONDS

TIME_COLS = ("date", "time", "timestamp", "open_time", "ts")
QUOTE_TIME_COLS = ("transaction_time_ms", "event_time_ms", "timestamp", "ts", "time")


class ImportFileError(ValueError):
    def __init__(self, path: Path, message: str, row: int | None = None):
        where = f"{path}" + (f", row {row}" if row is not None else "")
        super().__init__(f"{where}: {message}")
        self.path = path
        self.row = row


@dataclass
class ParsedFile:
    path: Path
    kind: str  # "candles" | "quotes" | "instruments"
    # candles: symbol, open_time (s), OHLCV; quotes: QUOTE_COLS; instruments: backfill.instruments_frame
    frame: pl.DataFrame
    tf: str | None = None
    next_cursor: str | None = None  # instruments: the answer's nextPageCursor (more pages exist)

    def describe(self) -> str:
        if self.kind == "instruments":
            more = (f" (one page: nextPageCursor {self.next_cursor!r} is set, import the next pages too)"
                    if self.next_cursor else "")
            return f"{self.path.name}: {self.frame.height} instruments{more}"
        syms = self.frame.get_column("symbol").n_unique()
        what = f"{self.tf} candles" if self.kind == "candles" else "quotes"
        return f"{self.path.name}: {self.frame.height} {what} of {syms} symbol(s)"


def symbol_from_pair(pair: str) -> str:
    """'BTC/USDT:USDT' or 'BTC/USDT' or 'BTC_USDT' -> 'BTCUSDT'."""
    base = re.split(r"[/_:\-]", pair.strip().upper())[0]
    quote = "USDT"
    if base.endswith(quote) and "/" not in pair and "_" not in pair:
        return base
    return base + quote


def _map_symbols(names: pl.Series) -> pl.Series:
    """symbol_from_pair over a column, computed once per distinct name."""
    uniq = names.unique().drop_nulls().to_list()
    return names.replace_strict({u: symbol_from_pair(u) for u in uniq}, return_dtype=pl.Utf8)


def symbol_from_filename(path: Path) -> str:
    stem = path.name.split(".")[0]
    return symbol_from_pair(stem.split("-")[0])


def _read(path: Path) -> pl.DataFrame:
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return pl.read_parquet(path)
        if suffix in (".csv", ".txt"):
            return pl.read_csv(path, try_parse_dates=True, infer_schema_length=10000)
    except Exception as err:  # polars raises many kinds; the message is what matters
        raise ImportFileError(path, f"cannot read: {str(err).splitlines()[0]}") from None
    raise ImportFileError(path, f"unsupported file type {suffix!r} (use .csv or .parquet)")


def _epoch_seconds(path: Path, frame: pl.DataFrame, col: str, unit_hint: str | None = None) -> pl.Series:
    s = frame.get_column(col)
    if s.dtype.is_temporal():
        if s.dtype == pl.Date:
            s = s.cast(pl.Datetime("us"))
        return (s.dt.epoch("us").cast(pl.Float64) / 1e6).alias("ts")
    if s.dtype == pl.Utf8:
        parsed = s.str.to_datetime(strict=False, time_zone="UTC")
        bad = parsed.is_null() & s.is_not_null()
        if bad.any():
            row = int(bad.arg_true()[0]) + 1
            raise ImportFileError(path, f"column {col!r}: not a timestamp (got {s[row - 1]!r})", row)
        return (parsed.dt.epoch("us").cast(pl.Float64) / 1e6).alias("ts")
    if s.dtype.is_numeric():
        f = s.cast(pl.Float64)
        if unit_hint == "ms" or (unit_hint is None and f.drop_nulls().abs().max() > 1e11):  # type: ignore[operator]
            f = f / 1000.0
        return f.alias("ts")
    raise ImportFileError(path, f"column {col!r}: unsupported type {s.dtype}")


def _first_bad(path: Path, mask: pl.Series, message: str) -> None:
    if mask.any():
        row = int(mask.arg_true()[0]) + 1
        raise ImportFileError(path, message, row)


def _check_numeric(path: Path, frame: pl.DataFrame, cols: tuple[str, ...]) -> pl.DataFrame:
    out = {}
    for c in cols:
        s = frame.get_column(c)
        if s.dtype == pl.Utf8:
            cast = s.cast(pl.Float64, strict=False)
            _first_bad(path, cast.is_null() & s.is_not_null(), f"column {c!r}: not a number")
            s = cast
        elif not s.dtype.is_numeric():
            raise ImportFileError(path, f"column {c!r}: must be numeric (got {s.dtype})")
        s = s.cast(pl.Float64)
        _first_bad(path, s.is_null(), f"column {c!r}: missing value")
        _first_bad(path, s.is_nan() | s.is_infinite(), f"column {c!r}: not finite")
        out[c] = s
    return frame.with_columns(**out)


def _check_order(path: Path, frame: pl.DataFrame) -> None:
    """Strictly increasing ts within each symbol, in file order."""
    prev = frame.select(pl.col("ts").shift(1).over("symbol").alias("prev")).get_column("prev")
    bad = (frame.get_column("ts") <= prev).fill_null(False)
    if bad.any():
        row = int(bad.arg_true()[0]) + 1
        raise ImportFileError(path, "timestamps must increase within each symbol (duplicate or out of order)", row)


def infer_tf(path: Path, frame: pl.DataFrame) -> str:
    diffs = frame.select(pl.col("ts").diff().over("symbol").alias("d")).get_column("d").drop_nulls()
    if diffs.len() == 0:
        raise ImportFileError(path, "cannot infer the timeframe from a single bar: pass --tf")
    step = int(round(float(diffs.median())))  # type: ignore[arg-type]
    for name, secs in TF_SECONDS.items():
        if secs == step:
            return name
    raise ImportFileError(path, f"bar spacing of {step} s is not a known timeframe: pass --tf")


def parse_candles(path: Path, frame: pl.DataFrame, tf: str | None = None) -> ParsedFile:
    tcol = next((c for c in TIME_COLS if c in frame.columns), None)
    if tcol is None:
        raise ImportFileError(path, f"no time column (one of {list(TIME_COLS)})")
    missing = [c for c in ("open", "high", "low", "close") if c not in frame.columns]
    if missing:
        raise ImportFileError(path, f"missing columns {missing}")
    if "pair" in frame.columns:
        sym = frame.get_column("pair").cast(pl.Utf8)
        _first_bad(path, sym.is_null(), "column 'pair': missing value")
        symbols = _map_symbols(sym)
    elif "symbol" in frame.columns:
        symbols = _map_symbols(frame.get_column("symbol").cast(pl.Utf8))
    else:
        symbols = pl.Series([symbol_from_filename(path)] * frame.height)
    ts = _epoch_seconds(path, frame, tcol)
    _first_bad(path, ts.is_null(), f"column {tcol!r}: missing timestamp")
    cols = ("open", "high", "low", "close") + (("volume",) if "volume" in frame.columns else ())
    body = _check_numeric(path, frame.select(cols), cols)
    out = body.with_columns(symbol=symbols, ts=ts)
    if "volume" not in out.columns:
        out = out.with_columns(pl.lit(0.0).alias("volume"))
    for c in ("open", "high", "low", "close"):
        _first_bad(path, out.get_column(c) <= 0, f"column {c!r}: price must be positive")
    _first_bad(path, out.get_column("volume") < 0, "column 'volume': must be >= 0")
    hi_bad = out.get_column("high") < out.select(pl.max_horizontal("open", "close")).to_series() * (1 - 1e-12)
    _first_bad(path, hi_bad, "high below open/close")
    lo_bad = out.get_column("low") > out.select(pl.min_horizontal("open", "close")).to_series() * (1 + 1e-12)
    _first_bad(path, lo_bad, "low above open/close")
    _check_order(path, out)
    tf = tf or infer_tf(path, out)
    misaligned = (out.get_column("ts") % TF_SECONDS[tf]) != 0
    _first_bad(path, misaligned, f"bar open time not aligned to {tf}")
    frame_out = out.select("symbol", pl.col("ts").alias("open_time"), "open", "high", "low", "close", "volume")
    return ParsedFile(path, "candles", frame_out, tf)


def parse_quotes(path: Path, frame: pl.DataFrame) -> ParsedFile:
    rename = {"bid": "bid_price", "ask": "ask_price", "bid_qty": "bid_size", "ask_qty": "ask_size"}
    frame = frame.rename({k: v for k, v in rename.items() if k in frame.columns and v not in frame.columns})
    missing = [c for c in ("bid_price", "ask_price", "bid_size", "ask_size") if c not in frame.columns]
    if missing:
        raise ImportFileError(path, f"missing columns {missing}")
    tcol = next((c for c in QUOTE_TIME_COLS if c in frame.columns), None)
    if tcol is None:
        raise ImportFileError(path, f"no time column (one of {list(QUOTE_TIME_COLS)})")
    hint = "ms" if tcol.endswith("_ms") else None
    if tcol == "timestamp" and frame.get_column(tcol).dtype.is_integer():
        mx = float(frame.get_column(tcol).max())  # type: ignore[arg-type]
        if mx > 1e17:  # nanoseconds
            frame = frame.with_columns((pl.col(tcol) // 1_000_000).alias(tcol))
            hint = "ms"
    ts = _epoch_seconds(path, frame, tcol, hint)
    if "symbol" in frame.columns:
        symbols = _map_symbols(frame.get_column("symbol").cast(pl.Utf8))
    else:
        symbols = pl.Series([symbol_from_filename(path)] * frame.height)
    cols = ("bid_price", "ask_price", "bid_size", "ask_size")
    body = _check_numeric(path, frame.select(cols), cols)
    out = body.with_columns(symbol=symbols, ts=ts)
    for c in ("bid_price", "ask_price"):
        _first_bad(path, out.get_column(c) <= 0, f"column {c!r}: price must be positive")
    for c in ("bid_size", "ask_size"):
        _first_bad(path, out.get_column(c) < 0, f"column {c!r}: size must be >= 0")
    _first_bad(path, out.get_column("ask_price") < out.get_column("bid_price"), "crossed quote (ask < bid)")
    # time must not go backwards within a symbol (equal stamps are normal for a book feed)
    prev = out.select(pl.col("ts").shift(1).over("symbol").alias("p")).get_column("p")
    _first_bad(path, (out.get_column("ts") < prev).fill_null(False), "timestamps go backwards within a symbol")
    snap = (
        out.with_columns(pl.col("ts").floor().alias("ts"))
        .group_by(["symbol", "ts"], maintain_order=True)
        .last()
        .select("symbol", "ts", *cols)
        .sort(["ts", "symbol"])
    )
    return ParsedFile(path, "quotes", snap)


_ANSWER_SHAPE = '{"retCode": 0, "result": {"category": "linear", "list": [...]}}'


def parse_instruments(path: Path) -> ParsedFile:
    """A saved instruments-info answer -> the instruments table's rows (nothing written)."""
    from decimal import Decimal

    from bot.core.backfill import instruments_frame
    from bot.core.exchange.bybit import InstrumentsAnswerError, instruments_from_result

    try:
        answer = json.loads(path.read_bytes(), parse_float=Decimal)  # numbers as written, never binary floats
    except json.JSONDecodeError as err:
        raise ImportFileError(path, f"not valid JSON: {err.msg} (line {err.lineno}, column {err.colno})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ImportFileError(path, f"cannot read: {err}") from None
    if not isinstance(answer, dict):
        raise ImportFileError(path, f"not a Bybit instruments-info answer: expected a JSON object {_ANSWER_SHAPE}"
                                    f" (got a JSON {'list' if isinstance(answer, list) else type(answer).__name__})")
    if "retCode" not in answer:
        raise ImportFileError(path, f"retCode: missing (not a Bybit v5 answer; expected {_ANSWER_SHAPE})")
    code = answer["retCode"]
    if isinstance(code, bool) or not isinstance(code, int):
        raise ImportFileError(path, f"retCode: not an integer (got {code!r})")
    if code != 0:
        raise ImportFileError(path, f"retCode: {code} ({answer.get('retMsg', '')!r}): the answer of a failed "
                                    "request holds no instruments")
    try:
        instruments, cursor = instruments_from_result(answer.get("result"), "result")
    except InstrumentsAnswerError as err:
        raise ImportFileError(path, str(err)) from None
    if not instruments:
        raise ImportFileError(path, "result.list: empty (no instrument in the answer)")
    return ParsedFile(path, "instruments", instruments_frame(instruments), next_cursor=cursor)


def _is_json(path: Path) -> bool:
    if path.suffix.lower() == ".json":
        return True
    try:
        with path.open("rb") as fh:
            head = fh.read(4096).lstrip()
    except OSError:
        return False
    return head.startswith((b"{", b"["))


def parse_file(path: str | Path, tf: str | None = None) -> ParsedFile:
    p = Path(path)
    if not p.exists():
        raise ImportFileError(p, "no such file")
    if p.is_file() and _is_json(p):
        return parse_instruments(p)
    frame = _read(p)
    if frame.height == 0:
        raise ImportFileError(p, "file has no rows")
    cols = set(frame.columns)
    if {"bid_price", "ask_price"} <= cols or {"bid", "ask"} <= cols:
        return parse_quotes(p, frame)
    if {"open", "high", "low", "close"} <= cols:
        return parse_candles(p, frame, tf)
    raise ImportFileError(p, f"neither candles (open/high/low/close) nor quotes (bid/ask): columns {sorted(cols)[:10]}")


async def import_files(db: Any, paths: list[str | Path], tf: str | None = None) -> list[tuple[ParsedFile, int]]:
    """Validate every file, then write them (bars upserted, quotes de-duplicated).

    Raises the first ImportFileError before writing anything if any file is bad.
    """
    from bot.core.db.market import copy_bars, copy_quotes, upsert_instruments

    parsed = [parse_file(p, tf) for p in paths]
    written = []
    for pf in parsed:
        if pf.kind == "instruments":
            n = await upsert_instruments(db, pf.frame)
        elif pf.kind == "candles":
            assert pf.tf is not None
            n = await copy_bars(db, pf.frame, pf.tf, source=f"import:{pf.path.name}")
        else:
            n = await copy_quotes(db, pf.frame, ignore_duplicates=True)
        written.append((pf, n))
    return written


def funding_from_freqtrade(frame: pl.DataFrame) -> pl.DataFrame:
    """Freqtrade funding rows (`pair`, `date`, `funding_rate`) -> `token`, `ts`, `rate`.

    Timestamps are rounded to the second (some events are +-1 ms off the hour) and
    duplicate (token, ts) rows, which the 1h and 8h source files share, are dropped.
    """
    missing = [c for c in ("pair", "date", "funding_rate") if c not in frame.columns]
    if missing:
        raise ValueError(f"funding: missing columns {missing}")
    return (
        frame.select(
            pl.col("pair").str.split("/").list.first().alias("token"),
            (pl.col("date").dt.epoch("ms") / 1000).round().cast(pl.Int64).alias("ts"),
            pl.col("funding_rate").cast(pl.Float64).alias("rate"),
        )
        .unique(subset=["token", "ts"], keep="first", maintain_order=True)
        .sort(["token", "ts"])
    )
