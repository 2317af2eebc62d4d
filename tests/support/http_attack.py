"""Hostile HTTP clients for health-server tests: idle connections and slowloris.

Usable in-process (`idle_client`, `slowloris`) or as a separate process, the way a
misbehaving client would really come, so its own work does not share the server's
event loop::

    python -m tests.support.http_attack PORT IDLE SLOW PAUSE

The process connects IDLE idle and SLOW slowloris clients (each comes back PAUSE
seconds after the server drops it), prints ``connected`` once every client has
connected, and stops when its stdin closes or after `MAX_SECONDS`, printing its
counts as one JSON line.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass

import anyio
import anyio.abc

#: The attack ends by itself after this long, whatever happens to the test.
MAX_SECONDS = 60.0


@dataclass
class Attack:
    """Client-side counts: connections made, dropped by the server, and answered."""

    until: float
    connects: int = 0
    dropped: int = 0
    answered: int = 0

    def left(self) -> float:
        return self.until - time.monotonic()


async def _connect(port: int, attack: Attack) -> anyio.abc.SocketStream | None:
    try:
        stream = await anyio.connect_tcp("127.0.0.1", port)
    except OSError:
        return None
    attack.connects += 1
    return stream


async def idle_client(port: int, attack: Attack, pause: float) -> None:
    """Connects, sends nothing, waits to be dropped; comes back after ``pause``."""
    while attack.left() > 0:
        stream = await _connect(port, attack)
        if stream is not None:
            async with stream:
                with anyio.move_on_after(attack.left()):
                    try:
                        while True:
                            await stream.receive()
                            attack.answered += 1  # nothing was asked: should not happen
                    except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                        attack.dropped += 1
        await anyio.sleep(pause)


async def slowloris(port: int, attack: Attack, pause: float, gap: float = 0.3) -> None:
    """Sends a request head one byte every ``gap`` seconds, never ending it; comes
    back after ``pause`` when dropped."""
    while attack.left() > 0:
        stream = await _connect(port, attack)
        if stream is not None:
            async with stream:
                try:
                    await stream.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                    while attack.left() > 0:
                        with anyio.move_on_after(min(gap, attack.left())) as waited:
                            await stream.receive()  # only an answer or a close ends this
                        if not waited.cancelled_caught:
                            attack.answered += 1
                            break
                        await stream.send(b"a")
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    attack.dropped += 1
        await anyio.sleep(pause)


async def _main(port: int, idle: int, slow: int, pause: float) -> None:
    attack = Attack(until=time.monotonic() + MAX_SECONDS)
    async with anyio.create_task_group() as tg:
        for _ in range(idle):
            tg.start_soon(idle_client, port, attack, pause)
        for _ in range(slow):
            tg.start_soon(slowloris, port, attack, pause)
        while attack.left() > 0:
            if attack.connects >= idle + slow:
                print("connected", flush=True)
                break
            await anyio.sleep(0.02)
        with anyio.move_on_after(max(0.0, attack.left())):
            await anyio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)
        tg.cancel_scope.cancel()
    print(json.dumps(dataclasses.asdict(attack)), flush=True)


if __name__ == "__main__":
    port, idle, slow = (int(a) for a in sys.argv[1:4])
    anyio.run(_main, port, idle, slow, float(sys.argv[4]))
