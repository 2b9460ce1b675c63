"""The signal state machine (strategy.md section 5): ONE implementation.

The machine is a compiled function `machine_step(state, params, ts, z, fillable)`
over a small float64 state vector. The batch backtester calls it in its compiled
loop; the live executor and the streaming backtest call it tick by tick through
:class:`SignalMachine`. Same function, same decisions.

Per tick it returns an action:

- ``ACT_NONE``: nothing to do;
- ``ACT_OPEN_LONG`` / ``ACT_OPEN_SHORT``: open now, at this tick (a decision whose
  latency has elapsed, or a latency-0 decision taken on this tick);
- ``ACT_CLOSE``: close now; the reason (1 exit, 2 stop-loss) is in the state.

Liquidation (reason 4, strategy.md section 4) is not a signal rule: the caller
checks it with the position's prices before :func:`machine_step` on every tick
with valid prices while a position is open, and on a hit calls
:func:`machine_liquidated` instead of :func:`machine_step` for that tick.

After an open action the caller reports the outcome: :func:`machine_opened`
(filled; ``open_z`` = z at the fill tick, or the decision z when the fill tick
has a null z) or :func:`machine_open_skipped` (sizing refused it: FLAT again).
After a close action it calls :func:`machine_closed`. Evaluation resumes at the
next tick after any fill, so a close and an entry never share a tick.

Choices where the spec is silent (also in docs/strategy.md):

- Reverse exits evaluate their close rule on the arming tick too (as entries do),
  so ``dist_out = 0`` behaves like ``direct``.
- A pending (latency) fill needs a tick with valid prices; ticks with a null z
  still count for the fill (they carry prices), but take no decision.
- Cooldown ends on the first tick with low_in < z < high_in; that tick cannot arm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

# actions
ACT_NONE = 0
ACT_OPEN_LONG = 1
ACT_OPEN_SHORT = 2
ACT_CLOSE = 3

# position sides (pos_side)
SIDE_LONG = 1  # long spread: long token_1, short token_2
SIDE_SHORT = 2  # short spread: short token_1, long token_2

# close reasons
REASON_EXIT = 1
REASON_STOP = 2
REASON_FORCE = 3
REASON_LIQUIDATION = 4

# names for printing (the trades frame keeps the integers, as the notebook does)
SIDE_NAMES = {SIDE_LONG: "long", SIDE_SHORT: "short"}
REASON_NAMES = {REASON_EXIT: "exit", REASON_STOP: "stop-loss", REASON_FORCE: "force close",
                REASON_LIQUIDATION: "liquidation"}

METHODS = {"direct": 0, "reverse_static": 1, "reverse_dynamic": 2}
SL_METHODS = {"leave": 0, "cooldown": 1}

# state vector slots
S_POS = 0  # 0 flat, 1 long, 2 short
S_ARM = 1  # flat: 0 none, 1 long entry armed, 2 short entry armed
S_EXT = 2  # peak (short arm) / trough (long arm)
S_XARM = 3  # in position: exit armed (reverse close methods)
S_XEXT = 4  # exit trough (short) / peak (long)
S_OPENZ = 5
S_ADV = 6  # ts of the first tick of the current adverse run (NaN: none)
S_BLOCK = 7  # 0 none, 1 leave (no entries), 2 cooldown
S_PEND = 8  # 0 none, 1 open long, 2 open short, 3 close
S_DUE = 9  # ts at or after which the pending fill happens
S_REASON = 10  # close reason of the pending close
S_DZ = 11  # z of the pending decision
STATE_SIZE = 12

# parameter vector slots
P_LOW_IN = 0
P_LOW_OUT = 1
P_HIGH_IN = 2
P_HIGH_OUT = 3
P_LONG_OK = 4
P_SHORT_OK = 5
P_OPEN_M = 6
P_CLOSE_M = 7
P_DIST_IN = 8
P_DIST_OUT = 9
P_SL_STD = 10  # NaN: off
P_SL_DIST = 11  # NaN: off
P_SL_SEC = 12
P_SL_M = 13
P_LAT = 14
PARAM_SIZE = 15


@dataclass(frozen=True)
class SignalParams:
    """Validated parameters of the machine (thresholds in z units, times in seconds)."""

    thresh_low_in: float
    thresh_low_out: float
    thresh_high_in: float
    thresh_high_out: float
    long_possible: bool = True
    short_possible: bool = True
    open_method: str = "direct"
    close_method: str = "direct"
    dist_in: float = 0.0
    dist_out: float = 0.0
    sl_std: float | None = None
    sl_dist: float | None = None
    sl_seconds: float = 0.0
    sl_method: str = "leave"
    latency_s: float = 0.0

    def __post_init__(self) -> None:
        for name in ("thresh_low_in", "thresh_low_out", "thresh_high_in", "thresh_high_out"):
            v = getattr(self, name)
            if not isinstance(v, int | float) or not math.isfinite(v):
                raise ValueError(f"{name}: must be a finite number (got {v!r})")
        if not self.thresh_low_in < self.thresh_low_out:
            raise ValueError(
                f"thresh_low_in: must be below thresh_low_out (got {self.thresh_low_in} >= {self.thresh_low_out})"
            )
        if not self.thresh_high_out < self.thresh_high_in:
            raise ValueError(
                f"thresh_high_out: must be below thresh_high_in (got {self.thresh_high_out} >= {self.thresh_high_in})"
            )
        if self.open_method not in METHODS:
            raise ValueError(f"open_method: must be one of {list(METHODS)} (got {self.open_method!r})")
        if self.close_method not in METHODS:
            raise ValueError(f"close_method: must be one of {list(METHODS)} (got {self.close_method!r})")
        if self.sl_method not in SL_METHODS:
            raise ValueError(f"sl_method: must be one of {list(SL_METHODS)} (got {self.sl_method!r})")
        if self.open_method != "direct" and not (self.dist_in >= 0):
            raise ValueError(f"dist_in: must be >= 0 for {self.open_method} (got {self.dist_in})")
        if self.close_method != "direct" and not (self.dist_out >= 0):
            raise ValueError(f"dist_out: must be >= 0 for {self.close_method} (got {self.dist_out})")
        for name in ("sl_std", "sl_dist"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, int | float) and v > 0):
                raise ValueError(f"{name}: must be positive or None (got {v!r})")
        if not (self.sl_seconds >= 0):
            raise ValueError(f"sl_seconds: must be >= 0 (got {self.sl_seconds})")
        if not (self.latency_s >= 0):
            raise ValueError(f"latency_s: must be >= 0 (got {self.latency_s})")

    def to_array(self) -> np.ndarray:
        p = np.empty(PARAM_SIZE)
        p[P_LOW_IN] = self.thresh_low_in
        p[P_LOW_OUT] = self.thresh_low_out
        p[P_HIGH_IN] = self.thresh_high_in
        p[P_HIGH_OUT] = self.thresh_high_out
        p[P_LONG_OK] = 1.0 if self.long_possible else 0.0
        p[P_SHORT_OK] = 1.0 if self.short_possible else 0.0
        p[P_OPEN_M] = METHODS[self.open_method]
        p[P_CLOSE_M] = METHODS[self.close_method]
        p[P_DIST_IN] = self.dist_in
        p[P_DIST_OUT] = self.dist_out
        p[P_SL_STD] = math.nan if self.sl_std is None else self.sl_std
        p[P_SL_DIST] = math.nan if self.sl_dist is None else self.sl_dist
        p[P_SL_SEC] = self.sl_seconds
        p[P_SL_M] = SL_METHODS[self.sl_method]
        p[P_LAT] = self.latency_s
        return p


def new_state() -> np.ndarray:
    st = np.zeros(STATE_SIZE)
    st[S_ADV] = np.nan
    return st


@njit(cache=True, inline="always")
def _decide(st: np.ndarray, p: np.ndarray, ts: float, action: int, reason: int, z: float) -> None:
    st[S_PEND] = action
    st[S_DUE] = ts + p[P_LAT]
    st[S_REASON] = reason
    st[S_DZ] = z


@njit(cache=True, inline="always")
def _flat(st: np.ndarray, p: np.ndarray, ts: float, z: float) -> None:
    """FLAT and ARMED states; may set a pending open."""
    om = p[P_OPEN_M]
    for _ in range(2):  # a disarm re-evaluates FLAT once on the same tick
        arm = st[S_ARM]
        if arm == 0.0:
            if p[P_SHORT_OK] != 0.0 and z >= p[P_HIGH_IN]:
                st[S_ARM] = 2.0
                st[S_EXT] = z
            elif p[P_LONG_OK] != 0.0 and z <= p[P_LOW_IN]:
                st[S_ARM] = 1.0
                st[S_EXT] = z
            else:
                return
            if om == 0.0:
                _decide(st, p, ts, int(st[S_ARM]), 0, z)
                return
            arm = st[S_ARM]
        if arm == 2.0:
            if z > st[S_EXT]:
                st[S_EXT] = z
            if z <= p[P_HIGH_OUT]:
                st[S_ARM] = 0.0
                continue
            if (om == 1.0 and z <= p[P_HIGH_IN] - p[P_DIST_IN]) or (om == 2.0 and z <= st[S_EXT] - p[P_DIST_IN]):
                _decide(st, p, ts, 2, 0, z)
            return
        else:
            if z < st[S_EXT]:
                st[S_EXT] = z
            if z >= p[P_LOW_OUT]:
                st[S_ARM] = 0.0
                continue
            if (om == 1.0 and z >= p[P_LOW_IN] + p[P_DIST_IN]) or (om == 2.0 and z >= st[S_EXT] + p[P_DIST_IN]):
                _decide(st, p, ts, 1, 0, z)
            return


@njit(cache=True, inline="always")
def _in_position(st: np.ndarray, p: np.ndarray, ts: float, z: float) -> None:
    short = st[S_POS] == 2.0
    # stop-loss first
    adverse = False
    sl_std = p[P_SL_STD]
    sl_dist = p[P_SL_DIST]
    if short:
        if (sl_std == sl_std and z >= sl_std) or (sl_dist == sl_dist and z >= st[S_OPENZ] + sl_dist):
            adverse = True
    else:
        if (sl_std == sl_std and z <= -sl_std) or (sl_dist == sl_dist and z <= st[S_OPENZ] - sl_dist):
            adverse = True
    if adverse:
        if st[S_ADV] != st[S_ADV]:
            st[S_ADV] = ts
        if ts - st[S_ADV] >= p[P_SL_SEC]:
            _decide(st, p, ts, 3, 2, z)
            return
    else:
        st[S_ADV] = np.nan
    cm = p[P_CLOSE_M]
    dist_out = p[P_DIST_OUT]
    if short:
        out = p[P_HIGH_OUT]
        if cm == 0.0:
            if z <= out:
                _decide(st, p, ts, 3, 1, z)
            return
        if st[S_XARM] == 0.0:
            if z <= out:
                st[S_XARM] = 1.0
                st[S_XEXT] = z
            else:
                return
        if z < st[S_XEXT]:
            st[S_XEXT] = z
        if cm == 1.0:
            if z > out or z <= out - dist_out:
                _decide(st, p, ts, 3, 1, z)
        elif z >= st[S_XEXT] + dist_out:
            _decide(st, p, ts, 3, 1, z)
    else:
        out = p[P_LOW_OUT]
        if cm == 0.0:
            if z >= out:
                _decide(st, p, ts, 3, 1, z)
            return
        if st[S_XARM] == 0.0:
            if z >= out:
                st[S_XARM] = 1.0
                st[S_XEXT] = z
            else:
                return
        if z > st[S_XEXT]:
            st[S_XEXT] = z
        if cm == 1.0:
            if z < out or z >= out + dist_out:
                _decide(st, p, ts, 3, 1, z)
        elif z <= st[S_XEXT] - dist_out:
            _decide(st, p, ts, 3, 1, z)


@njit(cache=True)
def machine_step(st: np.ndarray, p: np.ndarray, ts: float, z: float, fillable: bool) -> int:
    """Advance the machine by one tick; returns the action to execute at this tick.

    `z` NaN = null z; `fillable` = the tick has valid prices for a fill.
    """
    if st[S_PEND] == 0.0:
        if z != z:
            return ACT_NONE
        if st[S_POS] == 0.0:
            block = st[S_BLOCK]
            if block == 1.0:
                return ACT_NONE
            if block == 2.0:
                if p[P_LOW_IN] < z < p[P_HIGH_IN]:
                    st[S_BLOCK] = 0.0
                return ACT_NONE
            _flat(st, p, ts, z)
        else:
            _in_position(st, p, ts, z)
        if st[S_PEND] == 0.0:
            return ACT_NONE
    # a pending decision fills at the first fillable tick with ts >= due
    if fillable and ts >= st[S_DUE]:
        pend = st[S_PEND]
        if pend == 3.0:
            return ACT_CLOSE
        return ACT_OPEN_LONG if pend == 1.0 else ACT_OPEN_SHORT
    return ACT_NONE


@njit(cache=True)
def machine_skip(st: np.ndarray, p: np.ndarray, zmin: float, zmax: float) -> bool:
    """True when :func:`machine_step` would return ``ACT_NONE`` on every tick of a run of
    ticks whose non-null z lie in [zmin, zmax] (an all-null run: zmin = +inf, zmax = -inf),
    whatever their order and timestamps; the state after the run is then applied here
    (the armed peak/trough moved to the run's extreme). False (state untouched) when
    some tick of such a run could act or change the state otherwise: a pending decision,
    an adverse run in progress, or any z that could arm, disarm, decide or unblock.

    It is the machine's own rules read for a band: FLAT with nothing armed acts only when
    z >= high_in (short allowed) or z <= low_in (long allowed); an armed entry only at
    its disarm level (out) or its reverse level (static: in -/+ dist_in; dynamic: the
    running peak/trough -/+ dist_in, bounded by max(peak, zmax) - dist_in); a position
    only at an adverse z (sl_std, open_z -/+ sl_dist) or its exit rule (direct: out;
    reverse: arming at out, then out -/+ dist_out or the running extreme -/+ dist_out).
    Liquidation is checked by the caller (prices, not z). Used by the batch backtester
    to step over blocks of ticks; the streaming path never calls it.
    """
    if st[S_PEND] != 0.0:
        return False
    pos = st[S_POS]
    if pos == 0.0:
        block = st[S_BLOCK]
        if block == 1.0:
            return True
        if block == 2.0:  # cooldown ends on the first z strictly inside (low_in, high_in)
            return zmin >= p[P_HIGH_IN] or zmax <= p[P_LOW_IN]
        arm = st[S_ARM]
        if arm == 0.0:
            if p[P_SHORT_OK] != 0.0 and zmax >= p[P_HIGH_IN]:
                return False
            if p[P_LONG_OK] != 0.0 and zmin <= p[P_LOW_IN]:
                return False
            return True
        om = p[P_OPEN_M]
        dist_in = p[P_DIST_IN]
        if arm == 2.0:
            if not zmin > p[P_HIGH_OUT]:
                return False
            ext = max(st[S_EXT], zmax)
            level = p[P_HIGH_IN] - dist_in if om == 1.0 else ext - dist_in
            if om == 0.0 or not zmin > level:
                return False
            st[S_EXT] = ext
            return True
        if not zmax < p[P_LOW_OUT]:
            return False
        ext = min(st[S_EXT], zmin)
        level = p[P_LOW_IN] + dist_in if om == 1.0 else ext + dist_in
        if om == 0.0 or not zmax < level:
            return False
        st[S_EXT] = ext
        return True
    if st[S_ADV] == st[S_ADV]:  # an adverse run is timing
        return False
    short = pos == 2.0
    sl_std = p[P_SL_STD]
    sl_dist = p[P_SL_DIST]
    cm = p[P_CLOSE_M]
    dist_out = p[P_DIST_OUT]
    if short:
        if sl_std == sl_std and not zmax < sl_std:
            return False
        if sl_dist == sl_dist and not zmax < st[S_OPENZ] + sl_dist:
            return False
        out = p[P_HIGH_OUT]
        if cm == 0.0 or st[S_XARM] == 0.0:
            return zmin > out
        xext = min(st[S_XEXT], zmin)
        if cm == 1.0:
            ok = zmax <= out and zmin > out - dist_out
        else:
            ok = zmax < xext + dist_out
        if ok:
            st[S_XEXT] = xext
        return ok
    if sl_std == sl_std and not zmin > -sl_std:
        return False
    if sl_dist == sl_dist and not zmin > st[S_OPENZ] - sl_dist:
        return False
    out = p[P_LOW_OUT]
    if cm == 0.0 or st[S_XARM] == 0.0:
        return zmax < out
    xext = max(st[S_XEXT], zmax)
    if cm == 1.0:
        ok = zmin >= out and zmax < out + dist_out
    else:
        ok = zmin > xext - dist_out
    if ok:
        st[S_XEXT] = xext
    return ok


@njit(cache=True)
def machine_opened(st: np.ndarray, z: float) -> None:
    """The pending open filled at a tick whose z is `z` (NaN: use the decision z)."""
    side = st[S_PEND]
    st[S_POS] = side
    st[S_OPENZ] = z if z == z else st[S_DZ]
    st[S_ARM] = 0.0
    st[S_XARM] = 0.0
    st[S_ADV] = np.nan
    st[S_PEND] = 0.0


@njit(cache=True)
def machine_open_skipped(st: np.ndarray) -> None:
    """Sizing refused the entry: back to FLAT, evaluation resumes at the next tick."""
    st[S_ARM] = 0.0
    st[S_PEND] = 0.0


@njit(cache=True)
def machine_closed(st: np.ndarray, p: np.ndarray) -> int:
    """The pending close filled; returns its reason and applies sl_method after a stop
    (or a liquidation)."""
    reason = int(st[S_REASON])
    st[S_POS] = 0.0
    st[S_ARM] = 0.0
    st[S_XARM] = 0.0
    st[S_ADV] = np.nan
    st[S_PEND] = 0.0
    if reason == REASON_STOP or reason == REASON_LIQUIDATION:
        st[S_BLOCK] = 1.0 if p[P_SL_M] == 0.0 else 2.0
    return reason


@njit(cache=True)
def machine_liquidated(st: np.ndarray, p: np.ndarray) -> int:
    """The open position was liquidated at this tick (strategy.md section 4): FLAT, any
    pending close dropped, and sl_method applies as after a stop-loss; returns 4."""
    st[S_REASON] = REASON_LIQUIDATION
    return machine_closed(st, p)


class SignalMachine:
    """Step-by-step interface to the machine, for the live executor.

    >>> m = SignalMachine(SignalParams(-2.0, -0.5, 2.0, 0.5))
    >>> m.on_tick(0, 2.1)
    2
    >>> m.opened(2.1); m.position
    2
    """

    def __init__(self, params: SignalParams):
        self.params = params
        self._p = params.to_array()
        self._st = new_state()

    def on_tick(self, ts: float, z: float | None, fillable: bool = True) -> int:
        zz = math.nan if z is None else float(z)
        return int(machine_step(self._st, self._p, float(ts), zz, bool(fillable)))

    def opened(self, z_at_fill: float | None) -> None:
        machine_opened(self._st, math.nan if z_at_fill is None else float(z_at_fill))

    def open_skipped(self) -> None:
        machine_open_skipped(self._st)

    def closed(self) -> int:
        return int(machine_closed(self._st, self._p))

    def liquidated(self) -> int:
        """The position was liquidated (checked by the caller before `on_tick`); returns 4."""
        return int(machine_liquidated(self._st, self._p))

    def reset_block(self) -> None:
        """Lift a `leave` block (the live bot does it at re-selection)."""
        self._st[S_BLOCK] = 0.0

    @property
    def position(self) -> int:
        return int(self._st[S_POS])

    @property
    def open_z(self) -> float:
        return float(self._st[S_OPENZ])

    @property
    def pending_reason(self) -> int:
        return int(self._st[S_REASON])

    @property
    def blocked(self) -> bool:
        return self._st[S_BLOCK] != 0.0

    def state(self) -> np.ndarray:
        return self._st.copy()
