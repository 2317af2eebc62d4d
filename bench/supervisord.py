"""supervisord as a real peer: installed in its own venv, watching ``sleep 1000``.

Its import name is also ``supervisor``, so it lives in ``.bench-venv`` at the repo
root, created on first use. An event listener subscribed to PROCESS_STATE writes
``time.monotonic()`` the moment supervisord hands it each event; the benchmark
SIGKILLs the program and compares.
"""

from __future__ import annotations

import datetime
import os
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from functools import partial
from operator import contains
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".bench-venv"
PROGRAM = "victim"

LISTENER = textwrap.dedent(
    """\
    import sys, time

    out = open(sys.argv[1], "a", buffering=1)
    while True:
        sys.stdout.write("READY\\n")
        sys.stdout.flush()
        header = sys.stdin.readline()
        now = time.monotonic()
        if not header:
            break
        head = dict(token.split(":", 1) for token in header.split())
        body = sys.stdin.read(int(head["len"]))
        info = dict(t.split(":", 1) for t in body.split("\\n", 1)[0].split() if ":" in t)
        out.write(f"{head['eventname']} {info.get('processname', '-')} "
                  f"{info.get('pid', '-')} {now!r}\\n")
        sys.stdout.write("RESULT 2\\nOK")
        sys.stdout.flush()
    """
)


class Unavailable(Exception):
    """supervisord could not be installed or started; the reason is the message."""


def ensure_installed(within: float) -> tuple[Path, str]:
    """The supervisord executable (installing it into .bench-venv if needed) and version."""
    exe = VENV / "bin" / "supervisord"
    if not exe.exists():
        deadline = time.monotonic() + within
        try:
            if not (VENV / "bin" / "pip").exists():
                subprocess.run(
                    [sys.executable, "-m", "venv", str(VENV)],
                    check=True,
                    capture_output=True,
                    timeout=within,
                )
            subprocess.run(
                [str(VENV / "bin" / "pip"), "install", "-q", "supervisor"],
                check=True,
                capture_output=True,
                timeout=max(1.0, deadline - time.monotonic()),
            )
        except subprocess.TimeoutExpired as exc:
            raise Unavailable(f"installing supervisord took over {within:.0f} s") from exc
        except subprocess.CalledProcessError as exc:
            tail = (exc.stderr or b"").decode(errors="replace").strip().splitlines()[-1:]
            raise Unavailable(f"pip install supervisor failed: {' '.join(tail)}") from exc
        except OSError as exc:
            raise Unavailable(f"cannot create {VENV.name}: {exc}") from exc
    try:
        out = subprocess.run(
            [str(exe), "--version"], capture_output=True, text=True, timeout=30, check=True
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise Unavailable(f"supervisord --version failed: {exc}") from exc
    return exe, out.stdout.strip()


class Peer:
    """A running supervisord and the events its listener saw."""

    def __init__(self, proc: subprocess.Popen[bytes], events: Path, log: Path) -> None:
        self.proc = proc
        self.events = events
        self.log = log
        self._seen = 0
        #: the newest RUNNING pid of each of our programs
        self.running: dict[str, int] = {}
        #: listener receive time of each EXITED, by pid
        self.exited: dict[int, float] = {}
        #: time.time() of each of our kills, in order
        self.kill_walls: list[float] = []

    def read(self) -> None:
        if self.proc.poll() is not None:
            raise Unavailable(f"supervisord exited with code {self.proc.returncode}")
        try:
            text = self.events.read_text()
        except FileNotFoundError:
            return
        new = text[self._seen :]
        complete = new[: new.rfind("\n") + 1]
        self._seen += len(complete)
        for line in complete.splitlines():
            name, process, pid, when = line.split()
            if not process.startswith(PROGRAM) or not pid.isdigit():
                continue
            if name == "PROCESS_STATE_RUNNING":
                self.running[process] = int(pid)
            elif name == "PROCESS_STATE_EXITED":
                self.exited[int(pid)] = float(when)

    def exit_log_times(self) -> list[float]:
        """Wall-clock times (ms resolution) of supervisord's own "exited:" log lines."""
        out: list[float] = []
        for line in self.log.read_text().splitlines():
            if " exited: " in line:
                stamp = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
                out.append(stamp.timestamp())  # supervisord logs local time
        return out

    def poll_until(self, done: Callable[[], bool], what: str, within: float = 15.0) -> None:
        deadline = time.monotonic() + within
        while True:
            self.read()
            if done():
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"supervisord: no {what} within {within:g} s")
            time.sleep(0.002)


@contextmanager
def running(exe: Path, programs: int) -> Iterator[Peer]:
    """supervisord in the foreground on a temp dir; no network (no http server at all)."""
    with tempfile.TemporaryDirectory(prefix="bench-supervisord-") as tmp:
        d = Path(tmp)
        (d / "listener.py").write_text(LISTENER)
        events = d / "events.log"
        (d / "supervisord.conf").write_text(
            textwrap.dedent(
                f"""\
                [supervisord]
                nodaemon=true
                logfile={d}/supervisord.log
                pidfile={d}/supervisord.pid
                childlogdir={d}
                loglevel=info

                [program:{PROGRAM}]
                command=sleep 1000
                numprocs={programs}
                process_name=%(program_name)s_%(process_num)02d
                autostart=true
                autorestart=true
                startsecs=0
                startretries=1000
                stopsignal=KILL

                [eventlistener:listener]
                command={sys.executable} {d}/listener.py {events}
                events=PROCESS_STATE
                buffer_size=1000
                """
            )
        )
        proc = subprocess.Popen(
            [str(exe), "-n", "-c", str(d / "supervisord.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            cwd=d,
        )
        try:
            yield Peer(proc, events, d / "supervisord.log")
        finally:
            # SIGKILL supervisord and its children (each leads its own process group):
            # a graceful stop costs a second per supervisord (its loop wakes once a second).
            try:
                family = psutil.Process(proc.pid).children(recursive=True)
            except psutil.Error:
                family = []
            proc.kill()
            proc.wait()
            for child in family:  # now orphans: init reaps them
                with suppress(psutil.Error):
                    child.kill()


def kill_latencies(exe: Path, instances: int, rounds: int) -> tuple[list[float], list[float]]:
    """Seconds from SIGKILL to the listener receiving PROCESS_STATE_EXITED, and to
    supervisord's own "exited:" log line (when it reaped the process; ms resolution).

    ``instances`` independent supervisords, one program each, run side by side to save
    time; one supervisord per program keeps each one's loop as quiet as a real one
    watching a single service (kills of sibling programs would wake it early). Each
    round kills every program once, at random moments over a second, so the kills land
    at every phase of supervisord's loop.
    """
    out: list[float] = []
    logged: list[float] = []
    rng = random.Random(7)
    with ExitStack() as stack:
        peers = [stack.enter_context(running(exe, 1)) for _ in range(instances)]
        killed: set[int] = set()

        def restarted(peer: Peer) -> bool:
            return bool(peer.running) and not killed.intersection(peer.running.values())

        for _ in range(rounds):
            for peer in peers:
                peer.poll_until(partial(restarted, peer), "(re)start of the program")
            plan = sorted((rng.random(), i) for i in range(len(peers)))
            start = time.monotonic()
            kills: list[tuple[Peer, int, float, float]] = []
            for offset, i in plan:
                time.sleep(max(0.0, start + offset - time.monotonic()))
                (pid,) = peers[i].running.values()
                kills.append((peers[i], pid, time.monotonic(), time.time()))
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            for peer, pid, t0, wall0 in kills:
                peer.poll_until(partial(contains, peer.exited, pid), "EXITED event")
                out.append(peer.exited[pid] - t0)
                peer.kill_walls.append(wall0)
        for peer in peers:
            times = peer.exit_log_times()
            logged.extend(t - k for t, k in zip(times, peer.kill_walls, strict=False))
    return out, logged
