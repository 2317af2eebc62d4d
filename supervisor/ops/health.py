"""Health endpoints over HTTP/1.1: ``/healthz``, ``/readyz``, ``/metrics``.

Needs the ``health`` extra (h11 for HTTP framing, prometheus-client for metrics).
The server is h11 over anyio TCP sockets, in the caller's event loop: no thread,
no framework. Binds 127.0.0.1 unless told otherwise.

- ``/healthz`` (liveness): 200 while the supervisor's loop answers, unless every
  runner is permanently failed (the restart policy gave up). Reads a few
  attributes; no work, no system calls. A wedged event loop does not answer at
  all, which is what a liveness probe should see.
- ``/readyz`` (readiness): 200 only when every runner is Ready or Running (or
  the source's ``min_ready`` of them; a group member counts only while its whole
  group is ready). 503 with ``Retry-After`` while starting, loading, warming up or
  restarting; 503 without it once shutting down, stopped or given up.
- ``/metrics``: Prometheus text format from `SupervisorMetrics`.

GET and HEAD are served on every path (HEAD: same headers, no body); other
methods get 405 with ``Allow``. Bodies are short plain text written here: runner
ids, phase names and our own give-up reasons (escaped by `printable`, so an id with
control bytes cannot forge a line), never exception text or a traceback.

Hostile or broken clients cannot starve a probe: a request must arrive whole within
``REQUEST_TIMEOUT`` (slowloris), a response must be taken within ``SEND_TIMEOUT``,
and at ``MAX_CONNECTIONS`` a new connection evicts the one that has waited longest
for its request instead of being refused. Accepting never waits on a connection.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Sequence

import anyio
import anyio.abc
import h11
from anyio.abc import SocketAttribute
from anyio.streams.stapled import MultiListener
from loguru import logger

from supervisor.ops.escape import printable
from supervisor.ops.metrics import SupervisorMetrics
from supervisor.ops.observe import HealthSource, RunnerHealth
from supervisor.ops.phases import NO_RETRY_PHASES, PERMANENT_PHASES, READY_PHASES
from supervisor.ops.readiness import is_ready, min_ready_of

#: Seconds a client gets to send a whole request (however slowly its bytes trickle
#: in), and to idle between requests. A probe sends its request at once.
REQUEST_TIMEOUT = 3.0
#: Seconds a client gets to take one response (a few KiB) off the socket.
SEND_TIMEOUT = 5.0
#: Larger requests (headers) are refused with 431/400: probes send a few hundred bytes.
MAX_REQUEST_BYTES = 16 * 1024
#: Connections held at once (probes use one each); one more evicts the oldest waiting.
MAX_CONNECTIONS = 64
#: Retry-After while loading or warming up: a guess, loads take seconds to minutes.
LOADING_RETRY_AFTER = 5

_TEXT = "text/plain; charset=utf-8"

Response = tuple[int, list[tuple[str, str]], bytes]


class HealthApp:
    """The routing and the answers, apart from the HTTP plumbing."""

    def __init__(self, source: HealthSource, metrics: SupervisorMetrics | None = None) -> None:
        self.source = source
        self.metrics = metrics if metrics is not None else SupervisorMetrics(source)

    def respond(self, method: str, target: str) -> Response:
        path = target.split("?", 1)[0]
        route = {"/healthz": self.healthz, "/readyz": self.readyz, "/metrics": self.render_metrics}
        handler = route.get(path.rstrip("/") or "/")
        if handler is None:
            return 404, [("content-type", _TEXT)], b"not found; try /healthz, /readyz, /metrics\n"
        if method not in ("GET", "HEAD"):
            return 405, [("allow", "GET, HEAD"), ("content-type", _TEXT)], b"method not allowed\n"
        return handler()

    def healthz(self) -> Response:
        snaps = self.source.health_snapshots()
        dead = [h for h in snaps if h.phase in PERMANENT_PHASES]
        if snaps and len(dead) == len(snaps):
            lines = "".join(
                f"{printable(h.runner_id)} gave up: {printable(h.gave_up_reason or h.phase)}\n"
                for h in dead
            )
            return 503, [("content-type", _TEXT)], lines.encode()
        return 200, [("content-type", _TEXT)], b"ok\n"

    def readyz(self) -> Response:
        snaps = self.source.health_snapshots()
        body = "".join(
            f"{printable(h.runner_id)} {h.phase}"
            + (f" group={printable(h.group)}" if h.group else "")
            + (f" ranks={','.join(r.phase for r in h.ranks)}" if h.ranks else "")
            + "\n"
            for h in snaps
        ).encode()
        if is_ready(snaps, min_ready_of(self.source)):
            return 200, [("content-type", _TEXT)], b"ready\n" + body
        headers = [("content-type", _TEXT)]
        retry = retry_after(snaps)
        if retry is not None:
            headers.append(("retry-after", str(retry)))
        return 503, headers, b"not ready\n" + (body or b"no runners\n")

    def render_metrics(self) -> Response:
        return 200, [("content-type", self.metrics.content_type)], self.metrics.render()


def retry_after(snaps: Sequence[RunnerHealth]) -> int | None:
    """Whole seconds until the slowest not-ready runner may be ready; None if never by itself."""
    waits: list[int] = []
    for h in snaps:
        if h.phase in READY_PHASES:
            continue
        if h.phase in NO_RETRY_PHASES:
            return None
        if h.phase == "restarting" and h.retry_after is not None:
            waits.append(max(1, math.ceil(h.retry_after) + 1))
        else:
            waits.append(LOADING_RETRY_AFTER)
    return max(waits) if waits else LOADING_RETRY_AFTER


class _Close(Exception):
    """The connection is over (peer gone, timeout, protocol error answered)."""


class HealthServer:
    """Serves a `HealthApp` over h11 on an anyio listener.

    Every connection runs in its own task; the accept loop only admits. At
    ``max_connections`` a new one evicts the connection that has waited longest for
    a request (idle keep-alive, slowloris): the newcomer is most likely a probe, and
    the evicted one is the least likely to be. Only when every connection is busy
    answering (each for at most ``send_timeout``) is a new one closed at once.
    """

    def __init__(
        self,
        app: HealthApp,
        *,
        max_connections: int = MAX_CONNECTIONS,
        request_timeout: float = REQUEST_TIMEOUT,
        send_timeout: float = SEND_TIMEOUT,
    ) -> None:
        self.app = app
        self.max_connections = max_connections
        self.request_timeout = request_timeout
        self.send_timeout = send_timeout
        # One cancel scope per connection held: cancelling it drops the connection.
        self._open: set[anyio.CancelScope] = set()
        # The subset waiting for a request, longest waiting first.
        self._waiting: OrderedDict[anyio.CancelScope, None] = OrderedDict()
        #: Connections dropped to make room, and refused outright (counts, for tests).
        self.evicted = 0
        self.refused = 0
        self._accept_error_logged = -math.inf

    @property
    def connections(self) -> int:
        """Connections held now (at most ``max_connections``)."""
        return len(self._open)

    async def serve(self, listener: anyio.abc.Listener[anyio.abc.SocketStream]) -> None:
        async with anyio.create_task_group() as tg:
            for socket_listener in _socket_listeners(listener):
                tg.start_soon(self._accept_forever, socket_listener, tg)

    async def _accept_forever(
        self, listener: anyio.abc.SocketListener, tg: anyio.abc.TaskGroup
    ) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                # EMFILE and the like: shed a waiting connection, breathe, go on; a
                # health server that stops accepting fails every probe from now on.
                self._accept_failed(exc)
                self._evict_oldest()
                await anyio.sleep(0.05)
                continue
            if len(self._open) >= self.max_connections and not self._evict_oldest():
                self.refused += 1
                tg.start_soon(_discard, stream)
                continue
            slot = anyio.CancelScope()
            self._open.add(slot)
            tg.start_soon(self._connection, stream, slot)

    def _evict_oldest(self) -> bool:
        if not self._waiting:
            return False
        slot, _ = self._waiting.popitem(last=False)
        self._open.discard(slot)
        slot.cancel()
        self.evicted += 1
        return True

    def _accept_failed(self, exc: OSError) -> None:
        now = time.monotonic()
        if now - self._accept_error_logged >= 10.0:  # not a log line per refused client
            self._accept_error_logged = now
            logger.warning("health server: accept failed ({}); shedding connections", exc)

    async def _connection(self, stream: anyio.abc.SocketStream, slot: anyio.CancelScope) -> None:
        async with stream:
            with slot:
                try:
                    await self._serve_requests(stream, slot)
                except _Close:
                    pass
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    pass
                except Exception as exc:  # noqa: BLE001 - one bad connection must not stop the server
                    logger.opt(exception=exc).error("health server: connection failed")
                finally:
                    self._waiting.pop(slot, None)
                    self._open.discard(slot)

    async def _serve_requests(
        self, stream: anyio.abc.SocketStream, slot: anyio.CancelScope
    ) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
        while True:
            self._waiting[slot] = None  # evictable from now, after those waiting longer
            # One deadline for the whole request, not per read: a byte every few
            # hundred ms must not keep a connection forever.
            with anyio.move_on_after(self.request_timeout) as scope:
                request = await self._read_request(conn, stream)
            self._waiting.pop(slot, None)
            if scope.cancelled_caught or request is None:
                return
            method = request.method.decode("ascii", "replace")
            target = request.target.decode("ascii", "replace")
            try:
                status, headers, body = self.app.respond(method, target)
            except Exception as exc:  # noqa: BLE001 - answer 500, keep the traceback in the log
                logger.opt(exception=exc).error(
                    "health server: {} {} failed", method, printable(target)
                )
                status, headers, body = 500, [("content-type", _TEXT)], b"internal error\n"
            await self._send(conn, stream, status, headers, body, head=method == "HEAD")
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                return

    async def _read_request(
        self, conn: h11.Connection, stream: anyio.abc.SocketStream
    ) -> h11.Request | None:
        request: h11.Request | None = None
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                await self._refuse(conn, stream, exc.error_status_hint)
                raise _Close from None
            if event is h11.NEED_DATA:
                try:
                    data = await stream.receive(65536)
                except anyio.EndOfStream:
                    data = b""
                conn.receive_data(data)
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.EndOfMessage):
                return request
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return None
            # h11.Data: a body we do not need; keep reading to the end of the message

    async def _refuse(
        self, conn: h11.Connection, stream: anyio.abc.SocketStream, status: int
    ) -> None:
        if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            body = b"bad request\n"
            await self._send(
                conn,
                stream,
                status,
                [("content-type", _TEXT), ("connection", "close")],
                body,
                False,
            )

    async def _send(
        self,
        conn: h11.Connection,
        stream: anyio.abc.SocketStream,
        status: int,
        headers: list[tuple[str, str]],
        body: bytes,
        head: bool,
    ) -> None:
        all_headers = [
            *headers,
            ("content-length", str(len(body))),
            ("cache-control", "no-store"),
        ]
        out = bytearray()
        for event in (
            h11.Response(status_code=status, headers=all_headers),
            None if head else h11.Data(data=body),
            h11.EndOfMessage(),
        ):
            if event is not None:
                out += conn.send(event) or b""
        with anyio.move_on_after(self.send_timeout) as scope:
            await stream.send(bytes(out))
        if scope.cancelled_caught:
            raise _Close  # a client that does not read its answer holds a slot for nothing


def _socket_listeners(
    listener: anyio.abc.Listener[anyio.abc.SocketStream],
) -> list[anyio.abc.SocketListener]:
    """The socket listeners to accept on (``create_tcp_listener`` gives a MultiListener)."""
    if isinstance(listener, MultiListener):
        return [sub for each in listener.listeners for sub in _socket_listeners(each)]
    if isinstance(listener, anyio.abc.SocketListener):
        return [listener]
    raise TypeError(f"HealthServer serves socket listeners, not {type(listener).__name__}")


async def _discard(stream: anyio.abc.SocketStream) -> None:
    """Close a connection there is no room for (a task, so accepting never waits)."""
    with anyio.CancelScope(shield=True):
        await stream.aclose()


async def serve_health(
    source: HealthSource,
    host: str = "127.0.0.1",
    port: int = 0,
    metrics: SupervisorMetrics | None = None,
    *,
    task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the health endpoints for ``source`` until cancelled.

    Use with ``port = await tg.start(serve_health, source, host, port)``: the
    started value is the bound port (useful with ``port=0``). Pass ``metrics``
    when it was attached to the supervisors before they started, so that events
    from the very beginning are counted; otherwise one is created and attached now.
    """
    app = HealthApp(source, metrics)
    listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    async with listener:
        bound = listener.listeners[0].extra(SocketAttribute.local_port)
        logger.info("health endpoints on http://{}:{}/ (healthz, readyz, metrics)", host, bound)
        task_status.started(bound)
        await HealthServer(app).serve(listener)


__all__ = ["HealthApp", "HealthServer", "retry_after", "serve_health"]
