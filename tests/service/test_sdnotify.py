"""sd_notify(3) without a dependency: datagrams to $NOTIFY_SOCKET (a path or an abstract
'@' name); no socket, no-op; the watchdog period from $WATCHDOG_USEC/$WATCHDOG_PID."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from bot.core.sdnotify import Notifier


def _listen(addr: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(addr)
    s.settimeout(2)
    return s


def test_messages_reach_a_path_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    sock = _listen(path)
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())})
    assert n.enabled and n.watchdog_interval_s == 2.0
    assert n.ready("3 pairs")
    assert sock.recv(4096) == b"READY=1\nSTATUS=3 pairs"
    n.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    n.status("first line\nsecond line")
    assert sock.recv(4096) == b"STATUS=first line"
    n.stopping()
    assert sock.recv(4096) == b"STOPPING=1"
    n.close()
    sock.close()


def test_abstract_socket_and_no_socket() -> None:
    name = f"bot-test-{os.getpid()}"
    sock = _listen("\0" + name)
    n = Notifier({"NOTIFY_SOCKET": "@" + name})
    assert n.ready() and sock.recv(64) == b"READY=1"
    assert n.watchdog_interval_s is None  # no WATCHDOG_USEC: no pings
    sock.close()
    off = Notifier({})
    assert not off.enabled and not off.ready() and not off.watchdog()
    other = Notifier({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    assert other.watchdog_interval_s is None  # the watchdog is another process's


def test_a_vanished_socket_is_not_fatal(tmp_path: Path) -> None:
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert not n.ready()  # logged, never raised


def test_a_reader_that_does_not_read_never_blocks_the_sender(tmp_path: Path) -> None:
    path = str(tmp_path / "full.sock")
    sock = _listen(path)  # never read: its queue fills up
    n = Notifier({"NOTIFY_SOCKET": path})
    import time

    t0 = time.monotonic()
    results = [n.watchdog() for _ in range(5000)]
    assert time.monotonic() - t0 < 5 and not all(results)  # dropped once full, not blocked
    sock.close()
