"""`bot data instruments`, `bot data backfill`, `bot data record`: the exchange edge from the shell."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from bot.cli.args import (
    Problems,
    check_known,
    database_tokens,
    positive_float,
    timeframes,
    token_list,
)
from bot.config import BotConfig

log = logging.getLogger(__name__)


def register_data(data: Any) -> None:
    inst = data.add_parser("instruments", help="fetch every linear instrument from Bybit into the instruments table")
    inst.set_defaults(func=cmd_instruments)

    bf = data.add_parser("backfill", help="fetch 1h and 5m klines from Bybit into the bars table (resumable)")
    bf.add_argument("--days", type=float, required=True, help="how far back from now")
    bf.add_argument("--symbols", default=None,
                    help="comma-separated tokens or symbols (default: the candidates file, the pairs table "
                         "and the reference symbols)")
    bf.add_argument("--tf", default="1h,5m", help="comma-separated timeframes (default 1h,5m)")
    bf.set_defaults(func=cmd_backfill)

    rec = data.add_parser("record", help="record top of book of the selected pairs into quotes (until Ctrl-C)")
    rec.add_argument("--seconds", type=float, default=None, help="stop after this long (default: run until stopped)")
    rec.set_defaults(func=cmd_record)


async def candidate_symbols(db: Any, cfg: BotConfig) -> list[str]:
    """Tokens of the candidates file, of the pairs table and the reference symbols."""
    from bot.core.db.market import symbol_of
    from bot.core.db.selection import read_pairs as read_pair_rows
    from bot.research.pairs_file import read_pairs

    out = {symbol_of(t) for t in cfg.data.reference_symbols}
    path = Path(cfg.selection.candidates_file)
    if path.exists():
        for a, b in read_pairs(path):
            out |= {symbol_of(a), symbol_of(b)}
    async with db.pool.acquire() as conn:
        for r in await read_pair_rows(conn):
            out |= {symbol_of(r["token_1"]), symbol_of(r["token_2"])}
    return sorted(out)


def cmd_instruments(args: argparse.Namespace, cfg: BotConfig) -> int:
    from bot.core.backfill import refresh_instruments
    from bot.core.db.pool import open_database
    from bot.core.exchange.factory import market_client

    async def run() -> int:
        db = await open_database(cfg.database)
        try:
            n = await refresh_instruments(db, market_client(cfg))
        finally:
            await db.close()
        print(f"instruments: {n} upserted")
        return 0

    return asyncio.run(run())


def cmd_backfill(args: argparse.Namespace, cfg: BotConfig) -> int:
    from bot.core.backfill import BackfillResult, backfill
    from bot.core.db.market import symbol_of
    from bot.core.db.pool import open_database
    from bot.core.exchange.factory import market_client

    p = Problems()  # every bad argument is a usage error before anything connects
    tfs = p.check(timeframes, args.tf, "--tf")
    p.check(positive_float, args.days, "--days")
    tokens = p.check(token_list, args.symbols, "--symbols") if args.symbols is not None else None
    p.raise_if_any()
    assert tfs is not None

    def show(r: BackfillResult) -> None:
        span = f"{r.first:%Y-%m-%d %H:%M} .. {r.last:%Y-%m-%d %H:%M}" if r.first and r.last else "nothing new"
        print(f"{r.symbol:>14} {r.tf:>3}: {r.fetched:>7,} bars in {r.requests:>3} requests, "
              f"{r.written:>7,} new or changed ({span})", flush=True)

    async def run() -> int:
        db = await open_database(cfg.database)
        try:
            if tokens is not None:
                known, where = await database_tokens(db)
                if known:  # nothing fetched for a symbol the exchange does not list
                    check_known(tokens, known, "--symbols", where, "`bot data instruments` refreshes it")
                else:
                    log.warning("instruments table empty: --symbols not checked (run `bot data instruments`)")
            symbols = [symbol_of(t) for t in tokens] if tokens is not None else await candidate_symbols(db, cfg)
            print(f"backfill {len(symbols)} symbols x {tfs}, {args.days:g} days", flush=True)
            await backfill(db, market_client(cfg), symbols, args.days, tfs, progress=show)
        finally:
            await db.close()
        return 0

    return asyncio.run(run())


def cmd_record(args: argparse.Namespace, cfg: BotConfig) -> int:
    from bot.core.db.pool import open_database
    from bot.core.exchange.factory import quote_stream
    from bot.core.recorder import QuoteRecorder

    positive_float(args.seconds, "--seconds")

    async def run() -> int:
        db = await open_database(cfg.database)
        stream = quote_stream(cfg)
        rec = QuoteRecorder(db.pool, stream, interval_s=cfg.data.quote_interval_s,
                            reference=cfg.data.reference_symbols, max_age_s=cfg.data.max_quote_age_s,
                            buffer_max=cfg.data.recorder_buffer_rows, dsn=db.dsn)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, rec.stop)
        if args.seconds:
            loop.call_later(args.seconds, rec.stop)
        try:
            await stream.start(rec.symbols)
            await rec.run()
        finally:
            await stream.close()
            await db.close()
        st = rec.stats
        print(f"recorded {st.written:,} quotes ({st.dropped:,} dropped, {st.stale_skipped:,} stale skipped, "
              f"{rec.buffered:,} unwritten)", file=sys.stderr)
        return 0 if rec.buffered == 0 else 1

    return asyncio.run(run())
