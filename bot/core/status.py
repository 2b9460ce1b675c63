"""`bot status`: what an operator looks at first, read from the database (so it works while
`bot run` runs and when it does not): the service's run, mode and balance, the pairs with
their parameters, open positions with entry z, current z and unrealised PnL from the latest
quotes, today's closed trades and PnL, incidents not yet acknowledged, the recorder's lag and
the last run of every job.

Current z: the pair's z-score warmed exactly as the executor warms it at start (the W bars
before the current bar and the last median_length quote ticks), on the latest quotes.
Unrealised PnL (USDT): per leg side_i (exit price_i - open price_i) qty_i, the exit price the
side we would take to close (the bid for a long leg, the ask for a short), minus the open
fees paid; the close fees are not in it.
"""

from __future__ import annotations

import datetime as dt
import math
from decimal import Decimal
from typing import Any

from bot.config import BotConfig
from bot.core.db import incidents as incidents_sql
from bot.core.db import positions as ledger_sql
from bot.core.db import service_runs
from bot.core.db.selection import last_committed_run, read_pairs


def _f(x: Any) -> Any:
    if isinstance(x, Decimal):
        return float(x)
    if isinstance(x, dt.datetime):
        return x.isoformat()
    return x


async def current_z(pool: Any, row: dict[str, Any], cfg: BotConfig, now: float) -> tuple[float, dict[str, Any]]:
    """(z, {symbol: latest quote row}) of a pairs (or position params) row: the tick of both
    legs' latest quotes at or before `now`, after the warm-up the executor does at start
    (the W bars before that tick's bar and the median_length - 1 ticks before it)."""
    from bot.core.executor.executor import _warm_data, spec_from_row, spec_tf_s
    from bot.core.executor.pair import PairRunner

    spec = spec_from_row(row, cfg)
    tf_s = spec_tf_s(spec)
    latest = {}
    async with pool.acquire() as conn:
        for sym in (spec.symbol_1, spec.symbol_2):
            q = await conn.fetchrow("SELECT extract(epoch FROM ts)::float8 AS ts, bid_price, ask_price FROM quotes"
                                    " WHERE symbol = $1 AND ts <= to_timestamp($2) ORDER BY ts DESC LIMIT 1", sym, now)
            if q is not None:
                latest[sym] = dict(q)
    if len(latest) < 2:
        return math.nan, latest
    q1, q2 = latest[spec.symbol_1], latest[spec.symbol_2]
    t = max(q1["ts"], q2["ts"])
    bars, ticks = await _warm_data(pool, spec, math.floor(t / tf_s) * tf_s, tf_s, t)
    from bot.analysis.backtesting import SizingParams

    r = PairRunner(spec, SizingParams(1.0, 1.0, 0.0, 1.0, "usdt_neutral", 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0,
                                      None))
    r.warm(bars, ticks)
    z = r.zs.on_tick(t, (float(q1["bid_price"]) + float(q1["ask_price"])) / 2,
                     (float(q2["bid_price"]) + float(q2["ask_price"])) / 2)
    return z, latest


def unrealised(pos: Any, latest: dict[str, Any]) -> Decimal | None:
    s1, s2 = (f"{t.removesuffix('_USDT')}USDT" for t in (pos.token_1, pos.token_2))
    if s1 not in latest or s2 not in latest or pos.open_price_1 is None or pos.open_price_2 is None:
        return None
    sign1 = Decimal(1) if pos.pos_side == 1 else Decimal(-1)
    out = Decimal(0)
    for sym, sign, qty, px in ((s1, sign1, pos.qty_1, pos.open_price_1), (s2, -sign1, pos.qty_2, pos.open_price_2)):
        q = latest[sym]
        exit_px = Decimal(repr(float(q["bid_price"] if sign > 0 else q["ask_price"])))
        out += sign * (exit_px - px) * qty
    fees = sum((o.fee or Decimal(0) for o in pos.orders if o.action == "open" and o.status == "filled"), Decimal(0))
    return out - fees


async def gather(db: Any, cfg: BotConfig, now: dt.datetime | None = None) -> dict[str, Any]:
    from bot.core.scheduler import job_table

    now = now or dt.datetime.now(dt.UTC)
    pool = db.pool
    mode = cfg.exchange.mode
    async with pool.acquire() as conn:
        run = await service_runs.latest(conn)
        pairs = await read_pairs(conn)
        active = await ledger_sql.active_positions(conn, mode)
        midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
        today = await ledger_sql.trades(conn, mode, midnight)
        incs = await incidents_sql.open_incidents(conn)
        profit = await ledger_sql.closed_profit(conn, mode)
        lag_row = await conn.fetchval("SELECT max(ts) FROM quotes WHERE ts <= $1", now)
        sel = await last_committed_run(conn)
    running = False
    if run is not None and run["stopped_at"] is None and run["heartbeat_at"] is not None:
        running = (now - run["heartbeat_at"]).total_seconds() < 3 * cfg.service.heartbeat_s + 5
    if mode == "live":
        balance = run["balance"] if run is not None and run["balance"] is not None else None
        balance_src = "the wallet at the service's last heartbeat (capped by executor.max_balance)"
    else:
        balance = Decimal(repr(cfg.strategy.balance)) + profit
        balance_src = "strategy.balance + closed paper profits"
    positions = []
    for p in active:
        z, latest = math.nan, dict[str, Any]()
        try:
            z, latest = await current_z(pool, {**p.params, "token_1": p.token_1, "token_2": p.token_2}, cfg,
                                        now.timestamp())
        except (KeyError, ValueError, TypeError):
            pass
        upnl = unrealised(p, latest)
        positions.append({"id": p.id, "pair": f"{p.token_1.removesuffix('_USDT')}/{p.token_2.removesuffix('_USDT')}",
                          "status": p.status, "side": "long" if p.pos_side == 1 else "short", "qty_1": p.qty_1,
                          "qty_2": p.qty_2, "open_price_1": p.open_price_1, "open_price_2": p.open_price_2,
                          "entry_z": p.open_z, "current_z": None if math.isnan(z) else z, "unrealised_pnl": upnl,
                          "opened": dt.datetime.fromtimestamp(p.open_ts, dt.UTC) if p.open_ts else None})
    jobs = await job_table(db, cfg, now)
    return {
        "as_of": now, "mode": mode,
        "service": {"running": running, **({k: run[k] for k in ("id", "pid", "host", "started_at", "ready_at",
                                                                 "heartbeat_at", "stopped_at", "stop_reason",
                                                                 "exit_code", "status")} if run else {})},
        "balance": balance, "balance_source": balance_src,
        "pairs": [{k: r[k] for k in ("token_1", "token_2", "tf", "wind", "spr_method", "thresh_in", "thresh_out",
                                     "open_method", "close_method", "dist_in", "dist_out") if k in r} for r in pairs],
        "open_positions": positions,
        "today": {"trades": len(today), "pnl": sum((Decimal(t["total_profit"]) for t in today), Decimal(0)),
                  "fees": sum((Decimal(t["fees"]) for t in today), Decimal(0)),
                  "list": [{"position_id": t["position_id"], "pair": f"{t['token_1'].removesuffix('_USDT')}/"
                            f"{t['token_2'].removesuffix('_USDT')}", "close_time": t["close_time"],
                            "reason": t["reason"], "total_profit": t["total_profit"]} for t in today]},
        "incidents": [{k: i[k] for k in ("id", "at", "kind", "token_1", "token_2", "position_id", "order_link_id",
                                         "message")} for i in incs],
        "selection": None if sel is None else {
            "run_id": sel["id"], "finished_at": sel["finished_at"], "selected": sel["n_selected"],
            "candidates": sel["n_candidates"], "model": sel["details"].get("model"),
            "fallback_skill": sel["details"].get("fallback_skill", "not recorded (a run before the skill gate)")},
        "recorder_lag_s": (now - lag_row).total_seconds() if lag_row is not None else None,
        "jobs": jobs.to_dicts(),
    }


def to_json(status: dict[str, Any]) -> Any:
    """JSON-ready: Decimals as floats, datetimes ISO, nested."""
    if isinstance(status, dict):
        return {k: to_json(v) for k, v in status.items()}
    if isinstance(status, list):
        return [to_json(v) for v in status]
    return _f(status)


def render(st: dict[str, Any]) -> str:
    """The operator's text view."""
    svc = st["service"]
    lines = [f"bot status as of {st['as_of']:%Y-%m-%d %H:%M:%S} UTC  mode {st['mode']}"]
    if svc.get("id") is None:
        lines.append("service: never started on this database")
    elif svc["running"]:
        lines.append(f"service: RUNNING (run {svc['id']}, pid {svc['pid']} on {svc['host']}, since "
                     f"{svc['started_at']:%Y-%m-%d %H:%M}, last heartbeat {svc['heartbeat_at']:%H:%M:%S})")
    else:
        when = svc.get("stopped_at") or svc.get("heartbeat_at") or svc.get("started_at")
        code = svc.get("exit_code")
        why = svc.get("stop_reason") or "no stop recorded: killed or crashed"
        lines.append(f"service: NOT RUNNING (run {svc['id']} last seen {when:%Y-%m-%d %H:%M:%S}; {why}"
                     + ("" if code is None else f", exit {code}") + ")")
    bal = st["balance"]
    lines.append(f"balance: {'unknown' if bal is None else f'{float(bal):,.2f} USDT'} ({st['balance_source']})")
    lines.append(f"\npairs ({len(st['pairs'])}):")
    for p in st["pairs"]:
        lines.append(f"  {p['token_1'].removesuffix('_USDT'):>8}/{p['token_2'].removesuffix('_USDT'):<8} {p['tf']} "
                     f"W={p['wind']} {p['spr_method']} in={p['thresh_in']} out={p['thresh_out']} "
                     f"{p['open_method']}/{p['close_method']} dist={p['dist_in']}/{p['dist_out']}")
    lines.append(f"\nopen positions ({len(st['open_positions'])}):")
    for p in st["open_positions"]:
        cz = "-" if p["current_z"] is None else f"{p['current_z']:+.2f}"
        ez = "-" if p["entry_z"] is None else f"{p['entry_z']:+.2f}"
        up = "-" if p["unrealised_pnl"] is None else f"{float(p['unrealised_pnl']):+.4f}"
        lines.append(f"  #{p['id']} {p['pair']} {p['side']} {p['status']} qty {p['qty_1']}/{p['qty_2']} "
                     f"entry z {ez} now z {cz} uPnL {up} USDT")
    t = st["today"]
    lines.append(f"\ntoday: {t['trades']} closed trades, PnL {float(t['pnl']):+.4f} USDT, fees {float(t['fees']):.4f}")
    lines.append(f"\nincidents not acknowledged ({len(st['incidents'])}):")
    for i in st["incidents"][-20:]:
        lines.append(f"  #{i['id']} {i['at']:%m-%d %H:%M} {i['kind']}: {i['message'][:110]}")
    sel = st.get("selection")
    if sel is None:
        lines.append("\nselection: no committed re-selection run")
    else:
        lines.append(f"\nselection: run {sel['run_id']} at {sel['finished_at']:%Y-%m-%d %H:%M}, {sel['selected']} of "
                     f"{sel['candidates']} candidates; scored by {sel['model']}")
        lines.append(f"  {sel['fallback_skill']}")
    lag = st["recorder_lag_s"]
    lines.append(f"\nrecorder lag: {'no quotes recorded' if lag is None else f'{lag:.0f} s since the newest quote'}")
    lines.append("\njobs:")
    for j in st["jobs"]:
        last = "never" if j["last_start"] is None else f"{j['last_start']:%m-%d %H:%M} {j['last_status']}"
        lines.append(f"  {j['job']:<12} {j['cron']:<16} last {last}{' ' + j['last_error'] if j['last_error'] else ''}")
    return "\n".join(lines)
