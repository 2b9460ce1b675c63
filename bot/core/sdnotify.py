"""systemd's notify protocol without a dependency (sd_notify(3)): datagrams of
`KEY=value` lines to the AF_UNIX socket named by $NOTIFY_SOCKET (a path, or an abstract
name written with a leading '@'). Outside systemd (no NOTIFY_SOCKET) every call is a no-op.

- READY=1 once the service is trading (after reconciliation);
- WATCHDOG=1 every `interval_s` (half of $WATCHDOG_USEC, when $WATCHDOG_PID is unset or
  ours), sent by the service only while it is healthy: systemd restarts a service whose
  pings stop;
- STATUS=... a one-line state shown by `systemctl status`;
- STOPPING=1 when the stop begins.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("bot.service")


class Notifier:
    def __init__(self, env: Mapping[str, str] | None = None):
        env = os.environ if env is None else env
        addr = env.get("NOTIFY_SOCKET") or None
        self.address = ("\0" + addr[1:]) if addr and addr.startswith("@") else addr
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        mine = pid is None or pid == str(os.getpid())
        self.watchdog_s: float | None = int(usec) / 1e6 if usec and usec.isdigit() and int(usec) > 0 and mine \
            else None
        self._sock: socket.socket | None = None
        self._failing = False
        self.sent: list[str] = []  # the last messages (for `bot status` and tests of the service)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to ping: half the watchdog timeout, as sd_watchdog_enabled(3) advises."""
        return None if self.watchdog_s is None else self.watchdog_s / 2

    def notify(self, message: str) -> bool:
        if self.address is None:
            return False
        try:
            if self._sock is None:
                # non-blocking: a reader that does not read (a full queue) must never stall the event loop
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
            self._sock.sendto(message.encode(), self.address)
        except OSError as e:  # systemd gone, the socket unwritable or full: dropped, never fatal
            if not self._failing:
                log.warning("event=sd_notify_failed %s: %s (further failures not logged until one succeeds)",
                            type(e).__name__, e)
            self._failing = True
            return False
        self._failing = False
        self.sent = [*self.sent[-49:], message]
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text.splitlines()[0] if text else ''}")

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1" + (f"\nSTATUS={status}" if status else ""))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
