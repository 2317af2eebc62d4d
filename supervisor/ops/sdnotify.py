"""systemd notifications: READY=1, STATUS=..., WATCHDOG=1, STOPPING=1.

With ``Type=notify`` and ``WatchdogSec=`` systemd sets ``NOTIFY_SOCKET`` (a unix
datagram socket; ``@name`` means the abstract namespace) and ``WATCHDOG_USEC``.
`run_sd_notify` sends READY=1 once every runner is Ready, a STATUS= line whenever
the picture changes, and WATCHDOG=1 every ``WATCHDOG_USEC / 2`` from the
supervisor's own event loop. If that loop wedges, the pings stop and systemd
kills and restarts the unit: systemd watches the watcher.

No dependency: the protocol is one datagram of ``KEY=VALUE`` lines.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

import anyio
from loguru import logger

from supervisor.ops.escape import printable
from supervisor.ops.observe import HealthSource
from supervisor.ops.phases import PERMANENT_PHASES
from supervisor.ops.readiness import is_ready, min_ready_of


def notify_address(env: Mapping[str, str] | None = None) -> str | None:
    """The socket address from ``NOTIFY_SOCKET`` ('@' -> abstract namespace), or None."""
    value = (os.environ if env is None else env).get("NOTIFY_SOCKET", "")
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    logger.warning("NOTIFY_SOCKET={!r} is neither a path nor @abstract; ignoring it", value)
    return None


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of ``WATCHDOG_USEC``), or None if off.

    ``WATCHDOG_PID``, when set, names the process meant to ping: not us -> None.
    """
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec:
        return None
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        logger.warning("WATCHDOG_USEC={!r} is not an integer; watchdog pings off", usec)
        return None
    return value / 1e6 / 2 if value > 0 else None


class SdNotifier:
    """A non-blocking sender of sd_notify datagrams. Never raises on send."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._sock.setblocking(False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SdNotifier | None:
        address = notify_address(env)
        return None if address is None else cls(address)

    def notify(self, *lines: str) -> bool:
        """Send ``lines`` as one datagram; False (and a log line) if it could not go."""
        # printable(): a runner id with a lone surrogate or a newline must neither raise
        # here nor forge an extra KEY=VALUE line in the datagram.
        message = "\n".join(printable(line) for line in lines).encode()
        try:
            self._sock.sendto(message, self.address)
        except OSError as exc:
            logger.warning("sd_notify to {!r} failed: {}", self.address.replace("\0", "@"), exc)
            return False
        return True

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> SdNotifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def describe(source: HealthSource) -> str:
    """A one-line STATUS= text: each runner's phase, and restarts if any."""
    parts = []
    for h in source.health_snapshots():
        extra = f" (restarts {h.restarts})" if h.restarts else ""
        parts.append(f"{printable(h.runner_id)}: {h.phase}{extra}")
    return "; ".join(parts) or "no runners"


async def run_sd_notify(
    source: HealthSource,
    *,
    env: Mapping[str, str] | None = None,
    check_interval: float = 0.5,
) -> None:
    """Talk to systemd about ``source`` until cancelled; returns at once without NOTIFY_SOCKET.

    READY=1 is sent once, the first time the source is ready (`supervisor.ops.readiness`:
    ``min_ready`` and groups honoured, as ``/readyz`` does); STATUS=
    on every change (checked every ``check_interval`` s or at the watchdog pace,
    whichever is faster); WATCHDOG=1 every ``WATCHDOG_USEC/2`` s; STOPPING=1 when
    cancelled. Pings stop if every runner gave up: the unit is dead.
    """
    notifier = SdNotifier.from_env(env)
    if notifier is None:
        return
    ping_every = watchdog_interval(env)
    # Tick at least twice per ping period and ping a tick early, so that no gap
    # between two pings exceeds ping_every (half of systemd's WatchdogSec).
    tick = check_interval if ping_every is None else min(check_interval, ping_every / 2)
    with notifier:
        ready_sent = False
        last_status = ""
        next_ping = time.monotonic()
        try:
            while True:
                snaps = source.health_snapshots()
                lines: list[str] = []
                if not ready_sent and is_ready(snaps, min_ready_of(source)):
                    ready_sent = True
                    lines.append("READY=1")
                status = describe(source)
                if status != last_status:
                    last_status = status
                    lines.append(f"STATUS={status}")
                now = time.monotonic()
                permanent = bool(snaps) and all(h.phase in PERMANENT_PHASES for h in snaps)
                if ping_every is not None and now >= next_ping and not permanent:
                    lines.append("WATCHDOG=1")
                    next_ping = now + ping_every - tick
                if lines:
                    notifier.notify(*lines)
                await anyio.sleep(tick)
        finally:
            notifier.notify("STOPPING=1")


__all__ = ["SdNotifier", "describe", "notify_address", "run_sd_notify", "watchdog_interval"]
