"""`bot run` (the service, or a replay through the live path) and `bot status`."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from bot.cli.args import UsageError
from bot.config import BotConfig


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    r = sub.add_parser("run", help="the service: recorder, executor and scheduler in one process (systemd: "
                                   "deploy/bot.service); --replay feeds recorded quotes through the live path")
    r.add_argument("--replay", action="store_true", help="replay recorded quotes (paper, its own ledger mode)")
    r.add_argument("--from", dest="start", metavar="TIME", help="replay start (ISO date/time, UTC)")
    r.add_argument("--to", dest="end", metavar="TIME", help="replay end, exclusive (ISO date/time, UTC)")
    r.add_argument("--speed", type=float, default=None,
                   help="replay pace: X times real time (default: as fast as it goes)")
    r.set_defaults(func=cmd_run)
    s = sub.add_parser("status", help="mode, pairs, open positions (z, unrealised PnL), today's trades, balance, "
                                      "incidents, recorder lag, jobs")
    s.add_argument("--json", action="store_true", help="machine-readable")
    s.set_defaults(func=cmd_status)


def cmd_run(args: argparse.Namespace, cfg: BotConfig) -> int:
    if args.speed is not None and not args.speed > 0:
        raise UsageError(f"--speed must be > 0 (got {args.speed})")
    if args.replay:
        return _replay(args, cfg)
    if args.start or args.end or args.speed is not None:
        raise UsageError("--from, --to and --speed go with --replay")
    from bot.core.exchange.factory import check_live_keys
    from bot.core.service import Service

    check_live_keys(cfg.exchange)  # live without keys: refused before anything connects (exit 2)
    from bot.config.secrets import LOG_MASK

    LOG_MASK.add_env(cfg.exchange.api_key_env, cfg.exchange.api_secret_env)  # the names this config uses
    return asyncio.run(Service(cfg, args.config).run())


def _replay(args: argparse.Namespace, cfg: BotConfig) -> int:
    from bot.cli.args import parse_time
    from bot.core.db.pool import open_database
    from bot.core.replay import metrics, replay

    if not args.start or not args.end:
        raise UsageError("--replay needs --from and --to")
    start, end = parse_time(args.start, "--from"), parse_time(args.end, "--to")

    async def run() -> int:
        db = await open_database(cfg.database)
        try:
            res = await replay(db, cfg, start, end, speed=args.speed)
        finally:
            await db.close()
        m = metrics(res.trades)
        print(f"replay {res.mode}: {res.quotes:,} quotes, {res.ticks:,} pair ticks in {res.wall_s:.1f} s "
              f"({res.ticks_per_s:,.0f} ticks/s); {m['trades']} trades, {res.open_positions} still open at the end")
        print(f"{'pair':<14}{'open (UTC)':<18}{'close (UTC)':<18}{'side':>5}{'reason':>7}{'profit':>12}{'fees':>10}")
        for t in res.trades:
            pair = f"{t['token_1'].removesuffix('_USDT')}/{t['token_2'].removesuffix('_USDT')}"
            print(f"{pair:<14}{t['open_time']:%Y-%m-%d %H:%M}  {t['close_time']:%Y-%m-%d %H:%M}  "
                  f"{t['pos_side']:>5}{t['reason']:>7}{float(t['total_profit']):>12.4f}{float(t['fees']):>10.4f}")
        print(f"total profit {float(m['total_profit']):+.4f} USDT, mean {float(m['mean_profit']):+.4f}, win rate "
              f"{100 * m['win_rate']:.0f} %, fees {float(m['fees']):.4f}, profit factor {m['profit_factor']:.2f}, "
              f"max drawdown {float(m['max_drawdown']):.4f}")
        return 0

    return asyncio.run(run())


def cmd_status(args: argparse.Namespace, cfg: BotConfig) -> int:
    from bot.core.db.pool import open_database
    from bot.core.status import gather, render, to_json

    async def run() -> int:
        db = await open_database(cfg.database)
        try:
            st = await gather(db, cfg)
        finally:
            await db.close()
        if args.json:
            json.dump(to_json(st), sys.stdout, indent=1, default=str)
            print()
        else:
            print(render(st))
        return 0

    return asyncio.run(run())
