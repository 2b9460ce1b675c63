"""One traded pair: the streaming z-score, the signal state machine and the open trade's
record, fed tick by tick. No IO, no clock: the executor passes times and quotes in.

The SAME functions as the backtester (strategy.md sections 2-5): StreamingZScore (the
batch z-score's streaming twin, equal to 1e-9), SignalMachine (`machine_step`),
`open_trade` (sizing from the running balance, qty rounding, the skip rules) and
`trade_liquidated` (the liquidation rule). A tick is the pair's latest quote of each
leg after any quote of either leg. What the runner adds is only what a live pair must
know and a backtest cannot see (docs/executor.md, "Data it can trust"):

- bars: the executor builds the pair's bars from the mids it sees (close = the last
  mid of the bar), after warm-up bars from the `bars` table; a window whose W bars are
  not contiguous (a missing bar) blocks entries;
- gates: an entry decision on a tick where entries are not allowed (stale quotes, a
  reconnecting stream, a cooldown, symbols carrying exposure, a retiring pair) is
  dropped like a sizing skip (`machine.open_skipped`, FLAT again, counted by reason);
- while an order flow is in flight the machine takes no decision (evaluation resumes at
  the next tick after the fill, as in the backtester).
"""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import numpy as np

from bot.analysis.backtesting import (
    NTC,
    OPEN_FILLED,
    SKIP_REASONS,
    T_OP1,
    T_OP2,
    T_Q1,
    T_Q2,
    T_SIDE,
    SizingParams,
    open_trade,
    trade_liquidated,
    trade_margin,
)
from bot.analysis.signals import ACT_CLOSE, ACT_NONE, S_DZ, S_PEND, SignalMachine, SignalParams
from bot.analysis.zscore import StreamingZScore, tf_seconds
from bot.core.exchange.interface import Quote


@dataclass(frozen=True)
class PairSpec:
    """A `pairs` row made concrete: tokens (plain, e.g. ATOM), symbols, the z-score and
    the machine's parameters, and the row as read (compared on reload)."""

    token_1: str
    token_2: str
    tf: str
    wind: int
    spr_method: str
    median_length: int
    signal: SignalParams
    row: tuple[Any, ...] = ()

    @property
    def key(self) -> tuple[str, str]:
        return (self.token_1, self.token_2)

    @property
    def symbol_1(self) -> str:
        return f"{self.token_1}USDT"

    @property
    def symbol_2(self) -> str:
        return f"{self.token_2}USDT"

    @property
    def name(self) -> str:
        return f"{self.token_1}/{self.token_2}"


@dataclass
class Entry:
    """An entry to place: side (1 long spread, 2 short), quantities (exact decimals of
    the multiples of qtyStep `open_trade` sized), the tick's prices and z."""

    side: int
    qty_1: Decimal
    qty_2: Decimal
    ts: float
    z: float
    quotes: tuple[Quote, Quote]
    t0: float | None = None  # perf_counter() of the quote that decided it (set by the executor)


@dataclass
class Exit:
    reason: int  # 1 exit, 2 stop-loss, 4 liquidation (the protective close of the rule)
    ts: float
    z: float
    quotes: tuple[Quote, Quote]
    t0: float | None = None


def _exact(q: float, step: float) -> Decimal:
    """The Decimal of a qty `open_trade` returned: round(n * step, decimals) is the nearest
    double of the decimal n * step (fills.round_qty), whose repr is that decimal."""
    d = Decimal(repr(float(q)))
    quantum = Decimal(repr(step)).normalize()
    exp = quantum.as_tuple().exponent
    assert isinstance(exp, int)
    return d.quantize(Decimal(1).scaleb(min(0, exp)))


@dataclass
class PairRunner:
    spec: PairSpec
    sizing: SizingParams
    zs: StreamingZScore = field(init=False)
    machine: SignalMachine = field(init=False)
    quotes: dict[str, Quote] = field(default_factory=dict)
    busy: bool = False  # an order flow is in flight
    adopt_pending: tuple[Decimal, Decimal] | None = None  # orphan legs to adopt at the first tick (adopt_orphans)
    stuck: bool = False  # an outcome the venue could not tell: held until reconciliation settles it
    retiring: bool = False  # removed from `pairs`: exits only, dropped once flat
    position_id: int | None = None
    skips: Counter[str] = field(default_factory=Counter)
    last_z: float = math.nan
    last_tick_ts: float = math.nan

    def __post_init__(self) -> None:
        s = self.spec
        self.zs = StreamingZScore(s.tf, s.wind, s.spr_method, s.median_length)
        self.machine = SignalMachine(s.signal)
        self.tf_s = tf_seconds(s.tf)
        self._sz = self.sizing.to_array()
        self._rec = np.empty(NTC)
        self._margin = 0.0
        self._mmr = float(self._sz[16])
        self._bar_open = -math.inf  # open time of the bar the last tick fell in
        self._bar_mid: tuple[float, float] = (math.nan, math.nan)
        self._bar_opens: deque[float] = deque(maxlen=s.wind)

    # ------------------------------------------------------------ warm-up and bars

    def warm(self, bars: list[tuple[float, float, float]], ticks: list[tuple[float, float, float]]) -> None:
        """Warm the z-score from stored history: `bars` = completed bars (open_ts, close_1,
        close_2) oldest first, `ticks` = the last median_length pair ticks (ts, mid_1, mid_2);
        fed in time order, each bar before the first tick of a later bar, as the batch
        z-score sees them, so the first live z equals the backtester's."""
        k = 0
        for ts, m1, m2 in ticks:
            bar_open = math.floor(ts / self.tf_s) * self.tf_s
            while k < len(bars) and bars[k][0] < bar_open:
                self._feed_bar(*bars[k])
                k += 1
            self._tick_bar(ts, m1, m2)
            self.zs.on_tick(ts, m1, m2)
        for bar in bars[k:]:  # all completed: a stored bar wins over one built from the warm-up ticks
            self._feed_bar(*bar)

    def _feed_bar(self, open_ts: float, c1: float, c2: float) -> None:
        if open_ts <= self.zs._last_bar_ts:  # noqa: SLF001 - already fed
            return
        self.zs.on_bar(open_ts, c1, c2)
        self._bar_opens.append(open_ts)

    def _tick_bar(self, ts: float, m1: float, m2: float) -> None:
        """Close the previous bar (its close: the last mids seen in it) when a tick opens a new one."""
        bar_open = math.floor(ts / self.tf_s) * self.tf_s
        if bar_open > self._bar_open:
            if math.isfinite(self._bar_open) and self._bar_open > self.zs._last_bar_ts:  # noqa: SLF001
                self._feed_bar(self._bar_open, *self._bar_mid)
            self._bar_open = bar_open
        self._bar_mid = (m1, m2)

    @property
    def window_complete(self) -> bool:
        """W bars held and contiguous (no missing bar in the z window)."""
        b = self._bar_opens
        return len(b) == self.spec.wind and b[-1] - b[0] == (self.spec.wind - 1) * self.tf_s

    # ------------------------------------------------------------ ticks

    def on_quote(self, q: Quote) -> bool:
        """Store the leg's quote; True when it belongs to this pair and both legs have one."""
        if q.symbol not in (self.spec.symbol_1, self.spec.symbol_2):
            return False
        self.quotes[q.symbol] = q
        return len(self.quotes) == 2

    def tick(self, ts: float, balance: float, decide: bool, entry_block: str | None, live_liquidation: bool
             ) -> Entry | Exit | None:
        """One pair tick at `ts` on the latest quotes: the z-score always (its median ring
        and bars must see every tick), the machine only when `decide` (fresh data and no
        flow in flight). `entry_block`: why a new entry is not allowed now (None: allowed);
        `live_liquidation`: check the liquidation rule here (live mode; the paper exchange
        applies it itself)."""
        q1, q2 = self.quotes[self.spec.symbol_1], self.quotes[self.spec.symbol_2]
        b1, a1, b2, a2 = float(q1.bid), float(q1.ask), float(q2.bid), float(q2.ask)
        m1, m2 = (b1 + a1) / 2, (b2 + a2) / 2
        self._tick_bar(ts, m1, m2)
        z = self.zs.on_tick(ts, m1, m2)
        beta = self.zs.last_beta
        self.last_tick_ts = ts
        if z == z:
            self.last_z = z
        if not decide or self.busy:
            return None
        ok = b1 > 0 and a1 > 0 and b2 > 0 and a2 > 0 and math.isfinite(b1 + a1 + b2 + a2)
        m = self.machine
        if (live_liquidation and ok and m.position != 0 and self._mmr == self._mmr
                and trade_liquidated(self._rec, self._margin, self._mmr, b1, a1, b2, a2)):
            return Exit(4, ts, self.last_z, (q1, q2))
        act = m.on_tick(ts, z, ok)
        if act == ACT_NONE:
            return None
        if act == ACT_CLOSE:
            return Exit(m.pending_reason, ts, z if z == z else float(m.state()[S_DZ]), (q1, q2))
        zo = z if z == z else float(m.state()[S_DZ])
        if entry_block is not None:
            m.open_skipped()
            self.skips[entry_block] += 1
            return None
        why = open_trade(self._rec, self._sz, float(balance), act, float(ts), zo, b1, a1, b2, a2,
                         beta if math.isfinite(beta) else math.nan)
        if why != OPEN_FILLED:
            m.open_skipped()
            self.skips[SKIP_REASONS[why - 1]] += 1
            return None
        return Entry(act, _exact(self._rec[T_Q1], self.sizing.qty_step_1),
                     _exact(self._rec[T_Q2], self.sizing.qty_step_2), ts, zo, (q1, q2))

    # ------------------------------------------------------------ outcomes of order flows

    def opened(self, qty_1: Decimal, qty_2: Decimal, price_1: Decimal, price_2: Decimal, z_at_fill: float) -> None:
        """Both legs filled: the machine is in position; the record holds the venue's fills
        (margin M for the liquidation rule from them)."""
        self._rec[T_Q1], self._rec[T_Q2] = float(qty_1), float(qty_2)
        self._rec[T_OP1], self._rec[T_OP2] = float(price_1), float(price_2)
        self._rec[T_SIDE] = self.machine.state()[S_PEND]  # the side of the pending entry
        self.machine.opened(z_at_fill)
        self._margin = float(trade_margin(self._rec, self._sz))

    def restore(self, side: int, qty_1: Decimal, qty_2: Decimal, price_1: Decimal, price_2: Decimal,
                open_z: float | None) -> None:
        """Adopt a position found at reconciliation: in position on `side` with open_z."""
        st = self.machine._st  # noqa: SLF001 - the machine's own state vector
        st[S_PEND] = float(side)  # as if the entry were pending, then filled
        self.opened(qty_1, qty_2, price_1, price_2, math.nan if open_z is None else open_z)

    def open_failed(self) -> None:
        self.machine.open_skipped()

    def closed(self) -> int:
        return self.machine.closed()

    def liquidated(self) -> int:
        return self.machine.liquidated()
