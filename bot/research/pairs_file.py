"""Candidate pairs files: one pair per line, `T1 T2` (tokens or symbols), `#` comments."""

from __future__ import annotations

import re
from pathlib import Path

_TOKEN = re.compile(r"^[A-Z0-9]{1,30}$")


class PairsFileError(ValueError):
    pass


def _token(raw: str) -> str:
    t = raw.strip().upper().replace("/", "").replace("_", "").replace(":USDT", "")
    return t[:-4] if t.endswith("USDT") and len(t) > 4 else t


def read_pairs(path: str | Path) -> list[tuple[str, str]]:
    """Pairs of tokens, in file order, duplicates dropped; a bad line is an error
    naming the file and the line, and nothing is returned."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as err:
        raise PairsFileError(f"{p}: cannot read ({err.strerror})") from None
    pairs: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for no, line in enumerate(text.splitlines(), start=1):
        body = line.split("#", 1)[0].strip()
        if not body:
            continue
        parts = body.replace(",", " ").split()
        if len(parts) != 2:
            raise PairsFileError(f"{p}, line {no}: expected two tokens 'T1 T2' (got {line.strip()!r})")
        t1, t2 = _token(parts[0]), _token(parts[1])
        for t in (t1, t2):
            if not _TOKEN.match(t):
                raise PairsFileError(f"{p}, line {no}: not a token: {t!r}")
        if t1 == t2:
            raise PairsFileError(f"{p}, line {no}: a pair needs two different tokens (got {t1} {t2})")
        if (t1, t2) not in seen:
            seen.add((t1, t2))
            pairs.append((t1, t2))
    if not pairs:
        raise PairsFileError(f"{p}: no pairs in the file")
    return pairs


def format_pairs(pairs: list[tuple[str, str]]) -> str:
    return "".join(f"{a} {b}\n" for a, b in pairs)
