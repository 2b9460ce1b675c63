"""Checks of command-line inputs, shared by the commands.

Every check raises :class:`UsageError` (exit code 2) with a message naming the
argument and what was given, before anything connects or writes. To list every
problem of a command at once, run the checks through a :class:`Problems`:

    p = Problems()
    start = p.check(parse_time, args.start, "--start", cfg.research.valid_time)
    end = p.check(parse_time, args.end, "--end", cfg.research.end_time)
    p.check(window, start, end)          # skipped when either time was bad
    p.check(positive_int, args.iters, "--iters")
    p.raise_if_any()                     # one UsageError listing them all
"""

from __future__ import annotations

import datetime as dt
import difflib
import os
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

_TOKEN = re.compile(r"^[A-Z0-9]{1,30}$")


class UsageError(ValueError):
    """Bad input from the user: printed as one message per problem, exit code 2."""

    def __init__(self, *problems: str) -> None:
        self.problems = [p for p in problems if p]
        super().__init__("; ".join(self.problems))


class Problems:
    """Collects the UsageErrors of several checks so that all of them are reported."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def check(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        """`func(*args)`, or None (and the problem noted) when it raises UsageError.
        `window` skips a None left by an earlier failed parse."""
        try:
            return func(*args, **kwargs)
        except UsageError as err:
            self.messages.extend(err.problems)
            return None

    def add(self, message: str) -> None:
        self.messages.append(message)

    def raise_if_any(self) -> None:
        if self.messages:
            raise UsageError(*self.messages)


def parse_time(text: str | None, name: str, default: dt.datetime | None = None) -> dt.datetime:
    """A UTC datetime from an ISO date or date-time ('2025-01-05', '2025-01-05T12:00Z',
    '2025-01-05 12:00+02:00'); naive values are UTC. `text` None gives `default`
    (a required argument without a default is an error)."""
    if text is None:
        if default is None:
            raise UsageError(f"{name}: required (an ISO date/time, e.g. 2025-01-05 or 2025-01-05T12:00Z)")
        return default if default.tzinfo else default.replace(tzinfo=dt.UTC)
    raw = text.strip()
    try:
        value = dt.datetime.fromisoformat(raw)
    except ValueError as err:
        why = "" if str(err).startswith("Invalid isoformat") else f": {err}"
        raise UsageError(f"{name}: not an ISO date/time like 2025-01-05 or 2025-01-05T12:00Z{why} (got {text!r})") from None
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def window(start: dt.datetime | None, end: dt.datetime | None, start_name: str = "--start",
           end_name: str = "--end", *, allow_equal: bool = False) -> None:
    """`end` must be after `start` (or equal, with `allow_equal`); None (an earlier
    failed parse) skips the check."""
    if start is None or end is None:
        return
    if end < start or (end == start and not allow_equal):
        raise UsageError(f"{end_name} must be {'at or ' if allow_equal else ''}after {start_name} "
                         f"(got {start_name} {start.isoformat()}, {end_name} {end.isoformat()})")


def positive_int(value: int | None, name: str) -> int | None:
    """`value` when it is > 0; None (an optional argument left out) passes."""
    if value is not None and value <= 0:
        raise UsageError(f"{name}: must be a positive integer (got {value})")
    return value


def positive_float(value: float | None, name: str) -> float | None:
    """`value` when it is a finite number > 0; None passes."""
    if value is not None and not (value > 0 and value != float("inf")):
        raise UsageError(f"{name}: must be a positive number (got {value:g})")
    return value


def token_list(text: str, name: str) -> list[str]:
    """Comma-separated tokens or symbols ('JASMY,VETUSDT,SOL_USDT') -> tokens ('JASMY', 'VET', 'SOL')."""
    out: list[str] = []
    bad: list[str] = []
    for raw in text.split(","):
        if not raw.strip():
            continue
        tok = token_of(raw)
        if _TOKEN.match(tok):
            out.append(tok)
        else:
            bad.append(raw.strip())
    if bad:
        raise UsageError(f"{name}: not a token or symbol: {', '.join(repr(b) for b in bad)}")
    if not out:
        raise UsageError(f"{name}: no symbols given (got {text!r})")
    return list(dict.fromkeys(out))


def token_of(text: str) -> str:
    """'jasmy', 'JASMYUSDT', 'JASMY_USDT', 'JASMY/USDT' -> 'JASMY'."""
    t = text.strip().upper().replace("_", "").replace("/", "")
    return t[:-4] if t.endswith("USDT") and len(t) > 4 else t


def _listing(tokens: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(tokens[:limit])
    return shown + (f", ... ({len(tokens) - limit} more)" if len(tokens) > limit else "")


def check_known(tokens: Iterable[str], known: Iterable[str], name: str, where: str, hint: str = "") -> None:
    """Every token must be in `known` (tokens or symbols); the error names the unknown
    ones, the close matches and what `where` (e.g. 'the instruments table') holds."""
    have = sorted({token_of(k) for k in known})
    unknown = [t for t in dict.fromkeys(token_of(t) for t in tokens) if t not in have]
    if not unknown:
        return
    parts = []
    for t in unknown:
        close = difflib.get_close_matches(t, have, n=3, cutoff=0.6)
        parts.append(t + (f" (did you mean {' or '.join(close)}?)" if close else ""))
    label = "unknown symbol" if len(unknown) == 1 else "unknown symbols"
    knows = f"{where} holds {len(have)}: {_listing(have)}" if have else f"{where} is empty"
    raise UsageError(f"{name}: {label} {', '.join(parts)}; {knows}" + (f" ({hint})" if hint else ""))


async def database_tokens(db: Any, bars_tf: str | None = None) -> tuple[list[str], str]:
    """Tokens the database knows: the instruments table, plus the symbols with `bars_tf`
    bars when given (stored, or built from stored finer bars: market.read_bars); and a
    description of where they come from, for messages."""
    from bot.core.db.market import first_bar_times, read_instruments

    inst = await read_instruments(db)
    tokens = {token_of(s) for s in inst.get_column("symbol").to_list()} if inst.height else set()
    where = "the instruments table"
    if bars_tf is not None:
        tokens |= {token_of(s) for s in await first_bar_times(db, bars_tf)}
        where = f"the database (instruments and {bars_tf} bars)"
    return sorted(tokens), where


async def require_known_tokens(db: Any, tokens: Iterable[str], name: str, *, bars_tf: str | None = None,
                               hint: str = "") -> None:
    """UsageError unless every token is an instrument (or, with `bars_tf`, has such bars)."""
    known, where = await database_tokens(db, bars_tf)
    check_known(tokens, known, name, where, hint)


INSTRUMENT_REMEDIES = ("import a saved Bybit instruments-info answer with `bot data import <instruments-info.json>`,"
                       " fetch them from the venue with `bot data instruments`, or pass --assume-instruments"
                       " (qty steps derived from prices, no min qty or min notional)")


async def require_instruments(db: Any, tokens: Iterable[str], name: str, *, assume: bool = False) -> None:
    """UsageError naming every token without a row in the instruments table (the qty step,
    min qty and min notional a backtest sizes with) and the remedies; `assume`
    (--assume-instruments) accepts them (steps from prices, research.sweep.load_input)."""
    if assume:
        return
    from bot.core.db.market import read_instruments

    inst = await read_instruments(db)
    have = sorted({token_of(s) for s in inst.get_column("symbol").to_list()}) if inst.height else []
    missing = [t for t in dict.fromkeys(token_of(t) for t in tokens) if t not in set(have)]
    if not missing:
        return
    holds = f"the instruments table holds {len(have)}: {_listing(have)}" if have else "the instruments table is empty"
    raise UsageError(f"{name}: no instrument for {_listing(missing)} ({holds}); {INSTRUMENT_REMEDIES}")


def timeframe(text: str, name: str = "--tf") -> str:
    """A known timeframe ('5m', '1h', ...)."""
    from bot.analysis.zscore import TF_SECONDS

    tf = text.strip()
    if tf not in TF_SECONDS:
        raise UsageError(f"{name}: unknown timeframe {tf!r} (expected one of {', '.join(TF_SECONDS)})")
    return tf


def timeframes(text: str, name: str = "--tf") -> list[str]:
    """Comma-separated timeframes ('1h,5m'); every unknown one is named."""
    p = Problems()
    tfs = [p.check(timeframe, t, name) for t in text.split(",") if t.strip()]
    if not tfs:
        p.add(f"{name}: no timeframe given (got {text!r})")
    p.raise_if_any()
    return [t for t in tfs if t is not None]


def output_file(path: str | Path, name: str) -> Path:
    """A file the command will write: not a directory, and its nearest existing parent
    a writable directory (checked before the work, not after it)."""
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{name}: is a directory, not a file: {p}")
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"{name}: cannot create {p}: {parent} is not a directory")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"{name}: cannot write {p}: {parent} is not writable")
    return p


def pairs_file(path: str | Path, name: str = "--pairs") -> list[tuple[str, str]]:
    """The pairs of a candidates file; a missing or malformed file names the file and line."""
    from bot.research.pairs_file import PairsFileError, read_pairs

    try:
        return read_pairs(path)
    except PairsFileError as err:
        raise UsageError(f"{name}: {err}") from None
