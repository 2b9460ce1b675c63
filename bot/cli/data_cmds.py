"""`bot data demo|import|info` and `bot demo` (`bot data backfill|instruments|record`: exchange_cmds)."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

from bot.cli.args import Problems, UsageError, output_file, positive_float, timeframe
from bot.config import BotConfig
from bot.config.model import DatabaseConfig


def register(sub: Any) -> None:
    data = sub.add_parser("data", help="market data").add_subparsers(dest="data_cmd", required=True)

    demo = data.add_parser("demo", help="generate the deterministic demo market into the database")
    _demo_args(demo, quote_interval=5.0)
    demo.set_defaults(func=cmd_data_demo)

    imp = data.add_parser("import", help="import candles or quotes (CSV/parquet) and instruments (a saved Bybit "
                          "instruments-info answer, JSON); the kind is read from the content")
    imp.add_argument("paths", nargs="+", metavar="PATH")
    imp.add_argument("--tf", help="timeframe of candle files (default: inferred from the bar spacing)")
    imp.set_defaults(func=cmd_data_import)

    info = data.add_parser("info", help="what the database holds: per symbol and timeframe the first and last "
                           "bar, the count and the missing bars; the quotes' range per symbol")
    info.add_argument("--json", action="store_true", help="print it as one JSON object")
    info.set_defaults(func=cmd_data_info)

    from bot.cli import exchange_cmds

    exchange_cmds.register_data(data)

    top = sub.add_parser("demo", help="the whole loop on an embedded Postgres and a generated market")
    _demo_args(top, quote_interval=60.0)
    top.add_argument("--dir", default=None, help="working directory (default: <paths.data_dir>/demo)")
    top.add_argument("--use-config-db", action="store_true", help="use the configured database, not an embedded one")
    top.add_argument("--no-loop", action="store_true", help="only the market: no research, model or re-selection")
    top.set_defaults(func=cmd_demo)


def _demo_args(p: argparse.ArgumentParser, quote_interval: float) -> None:
    p.add_argument("--days", type=float, default=30.0, help="days of market (default 30)")
    p.add_argument("--symbols", type=int, default=30, help="number of symbols, >= 8 (default 30)")
    p.add_argument("--seed", type=int, default=7, help="RNG seed (same seed, same market)")
    p.add_argument("--quote-interval", type=float, default=quote_interval, dest="quote_interval",
                   help=f"seconds between quotes (default {quote_interval:g})")
    p.add_argument("--manifest", default=None, help="where to write the manifest JSON")


async def write_demo_market(db: Any, market: Any, tfs: tuple[str, ...] = ("1h", "5m")) -> dict[str, int]:
    from bot.analysis.zscore import tf_seconds
    from bot.core.db.market import copy_bars, copy_quotes, upsert_instruments
    from bot.core.demo_market import bars_from_quotes

    counts = {"instruments": await upsert_instruments(db, market.instruments)}
    chunk = 2_000_000
    n = 0
    q = market.quotes
    for start in range(0, q.height, chunk):
        n += await copy_quotes(db, q.slice(start, chunk), ignore_duplicates=True)
    counts["quotes"] = n
    for tf in tfs:
        counts[f"bars_{tf}"] = await copy_bars(db, bars_from_quotes(q, tf_seconds(tf)), tf, source="demo")
    return counts


def check_demo_args(args: argparse.Namespace) -> None:
    """The demo market's arguments, all checked before a server starts or a file is written."""
    from bot.core.demo_market import _NAMES, REFERENCE

    p = Problems()
    p.check(positive_float, args.days, "--days")
    p.check(positive_float, args.quote_interval, "--quote-interval")
    most = len(_NAMES) + len(REFERENCE)
    if not 8 <= args.symbols <= most:
        p.add(f"--symbols: from 8 to {most} symbols (got {args.symbols})")
    if args.manifest:
        p.check(output_file, args.manifest, "--manifest")
    p.raise_if_any()


def _generate(args: argparse.Namespace) -> Any:
    from bot.core.demo_market import generate

    return generate(n_symbols=args.symbols, days=args.days, quote_interval_s=args.quote_interval, seed=args.seed)


def _print_market(market: Any, counts: dict[str, int]) -> None:
    print(f"demo market: {len(market.symbols)} symbols, {market.start:%Y-%m-%d %H:%M} -> "
          f"{market.end:%Y-%m-%d %H:%M} UTC, quotes every {market.quote_interval_s:g} s, seed {market.seed}")
    print("stored: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
    print("cointegrated groups (leader: member beta/half-life h):")
    for g in market.groups:
        members = ", ".join(f"{m} {b:.3f}/{h:g}h" for m, b, h in zip(g.members, g.betas, g.half_lives_h, strict=True))
        print(f"  {g.leader}: {members}")
    others = [s for s in market.symbols if not any(s == g.leader or s in g.members for g in market.groups)]
    print(f"independent random walks: {' '.join(others)}")


def cmd_data_demo(args: argparse.Namespace, cfg: BotConfig) -> int:
    from bot.core.db.pool import open_database

    check_demo_args(args)

    async def run() -> int:
        t0 = time.perf_counter()
        market = _generate(args)
        t1 = time.perf_counter()
        db = await open_database(cfg.database)
        try:
            counts = await write_demo_market(db, market)
        finally:
            await db.close()
        t2 = time.perf_counter()
        manifest = Path(args.manifest or Path(cfg.paths.data_dir) / "demo_manifest.json")
        manifest.parent.mkdir(parents=True, exist_ok=True)
        manifest.write_text(json.dumps(market.manifest(), indent=2))
        _print_market(market, counts)
        print(f"manifest: {manifest}")
        print(f"generated in {t1 - t0:.1f} s, stored in {t2 - t1:.1f} s")
        return 0

    return asyncio.run(run())


def cmd_data_import(args: argparse.Namespace, cfg: BotConfig) -> int:
    from bot.core.db.pool import open_database
    from bot.core.importer import ImportFileError, import_files, parse_file

    # validate everything before touching the database, and name every bad file
    problems = Problems()
    tf = problems.check(timeframe, args.tf, "--tf") if args.tf is not None else None
    if args.tf is None or tf is not None:
        for path in args.paths:
            try:
                parse_file(path, tf)
            except ImportFileError as err:
                problems.add(str(err))
    problems.raise_if_any()

    async def run() -> int:
        db = await open_database(cfg.database)
        try:
            written = await import_files(db, args.paths, tf)
        finally:
            await db.close()
        for pf, n in written:
            print(f"{pf.describe()}: {n:,} new or updated rows")
        return 0

    return asyncio.run(run())


async def _info(db: Any) -> None:
    from bot.core.db.market import bar_symbols, quote_counts, read_instruments

    inst = await read_instruments(db)
    print(f"instruments: {inst.height}")
    q = await quote_counts(db)
    print(f"quotes: {int(q['n'].sum()) if q.height else 0:,} rows over {q.height} symbols")
    for tf in ("1m", "5m", "15m", "1h", "4h", "1d"):
        b = await bar_symbols(db, tf)
        if b.height:
            print(f"bars {tf}: {int(b['n'].sum()):,} rows over {b.height} symbols")


def _utc(ts: float | None, seconds: bool = False) -> str:
    import datetime as dt

    if ts is None:
        return ""
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")


def _iso(ts: float | None) -> str | None:
    import datetime as dt

    return None if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).isoformat()


def _table(headers: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    """Rows as aligned text columns (`right`: the columns aligned right, numbers)."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()
    return [line(headers), *(line(r) for r in rows)]


async def data_info(db: Any) -> dict[str, Any]:
    """What the database holds (`bot data info`): instruments, bar coverage per symbol and
    timeframe (market.bar_coverage), quote range per symbol (market.quote_counts)."""
    from bot.core.db.market import bar_coverage, quote_counts, read_instruments

    inst = await read_instruments(db)
    bars = await bar_coverage(db)
    quotes = await quote_counts(db)
    have = set(inst.get_column("symbol").to_list()) if inst.height else set()
    bar_syms = sorted(set(bars.get_column("symbol").to_list())) if bars.height else []
    return {
        "instruments": inst.height,
        "symbols_without_instrument": [s for s in bar_syms if s not in have],
        "bars": [{"symbol": r["symbol"], "tf": r["tf"], "first": _iso(r["first_ts"]), "last": _iso(r["last_ts"]),
                  "bars": r["n"], "missing": r["missing"], "holes": r["holes"], "largest_hole": r["largest_hole"]}
                 for r in bars.iter_rows(named=True)],
        "quotes": [{"symbol": r["symbol"], "first": _iso(r["first_ts"]), "last": _iso(r["last_ts"]), "quotes": r["n"]}
                   for r in quotes.iter_rows(named=True)],
        "_bars": bars, "_quotes": quotes,
    }


def print_data_info(info: dict[str, Any]) -> None:
    bars, quotes = info["_bars"], info["_quotes"]
    print(f"instruments: {info['instruments']}")
    missing_inst = info["symbols_without_instrument"]
    if missing_inst:
        shown = ", ".join(missing_inst[:12]) + (f", ... ({len(missing_inst) - 12} more)" if len(missing_inst) > 12 else "")
        print(f"  symbols with bars but no instrument: {len(missing_inst)} ({shown}); `bot data import "
              "<instruments-info.json>` or `bot data instruments` fills them, or pass --assume-instruments")
    if bars.height:
        gappy = int((bars.get_column("missing").fill_null(0) > 0).sum())
        print(f"bars: {int(bars['n'].sum()):,} rows, {bars.height} series (symbol, timeframe),"
              f" {gappy} with missing bars")
        rows = [[r["symbol"], r["tf"], _utc(r["first_ts"]), _utc(r["last_ts"]), f"{r['n']:,}",
                 "" if r["missing"] is None else f"{r['missing']:,}", "" if r["holes"] is None else f"{r['holes']:,}",
                 "" if r["largest_hole"] is None else f"{r['largest_hole']:,}"]
                for r in bars.iter_rows(named=True)]
        for ln in _table(["symbol", "tf", "first (UTC)", "last (UTC)", "bars", "missing", "holes", "largest hole"],
                         rows, {4, 5, 6, 7}):
            print(f"  {ln}")
    else:
        print("bars: none")
    if quotes.height:
        print(f"quotes: {int(quotes['n'].sum()):,} rows over {quotes.height} symbols")
        rows = [[r["symbol"], _utc(r["first_ts"], True), _utc(r["last_ts"], True), f"{r['n']:,}"]
                for r in quotes.iter_rows(named=True)]
        for ln in _table(["symbol", "first (UTC)", "last (UTC)", "quotes"], rows, {3}):
            print(f"  {ln}")
    else:
        print("quotes: none")


def cmd_data_info(args: argparse.Namespace, cfg: BotConfig) -> int:
    from bot.core.db.pool import open_database

    async def run() -> dict[str, Any]:
        db = await open_database(cfg.database)
        try:
            return await data_info(db)
        finally:
            await db.close()

    info = asyncio.run(run())
    if args.json:
        print(json.dumps({k: v for k, v in info.items() if not k.startswith("_")}, indent=2))
    else:
        print_data_info(info)
    return 0


def cmd_demo(args: argparse.Namespace, cfg: BotConfig) -> int:
    """Start an embedded Postgres, migrate, generate the demo market and show what it holds."""
    from bot.cli.demo_loop import (
        demo_config,
        next_steps,
        print_outcome,
        run_loop,
        write_demo_config,
    )
    from bot.core.db.market import token_of
    from bot.core.db.pool import open_database

    check_demo_args(args)
    work = Path(args.dir or Path(cfg.paths.data_dir) / "demo")
    if work.exists() and not work.is_dir():
        raise UsageError(f"--dir: not a directory: {work}")
    work.mkdir(parents=True, exist_ok=True)
    dbcfg = cfg.database if args.use_config_db else DatabaseConfig(embedded_dir=str(work / "pgdata"))

    async def run() -> int:
        t0 = time.perf_counter()
        print(f"[1/6] database: {'configured' if args.use_config_db else 'embedded PostgreSQL in ' + str(work / 'pgdata')}")
        db = await open_database(dbcfg)
        try:
            print("[2/6] generating the demo market", flush=True)
            market = _generate(args)
            counts = await write_demo_market(db, market)
            (work / "manifest.json").write_text(json.dumps(market.manifest(), indent=2))
            print("[3/6] what the database holds")
            await _info(db)
            _print_market(market, counts)
            print(f"manifest: {work / 'manifest.json'}")
            days = (market.end - market.start).total_seconds() / 86400
            dcfg = demo_config(cfg, work, days, dbcfg)
            conf = write_demo_config(dcfg, work)
            pairs: list[tuple[str, str]] = []
            if not args.no_loop:
                result = await run_loop(db, cfg, market, work, dcfg)
                print_outcome(result, market)
                pairs = [(token_of(r["token_1"]), token_of(r["token_2"])) for r in result["report"].pairs]
        finally:
            await db.close()
        print(f"demo done in {time.perf_counter() - t0:.1f} s")
        print(f"config: {conf} (the demo's effective config; its database holds the market)")
        print("next, on this database as it is:")
        for line in next_steps(conf, market, dcfg, pairs):
            print(f"  {line}")
        return 0

    return asyncio.run(run())

