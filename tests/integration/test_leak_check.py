"""The leak check itself: it must see what a test leaves behind, orphans included."""

from __future__ import annotations

import os
import subprocess
import threading

import psutil

from tests.support.leaks import Snapshot, adopt_orphans, running


def test_an_orphaned_grandchild_is_seen_killed_and_reaped() -> None:
    adopt_orphans()
    before = Snapshot.take()
    # The shell exits at once; its background sleep is an orphan that, without the
    # subreaper, init would adopt out of our sight.
    shell = subprocess.run(
        ["sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!"],
        capture_output=True,
        text=True,
        check=True,
    )
    orphan = int(shell.stdout)
    try:
        assert psutil.Process(orphan).ppid() == os.getpid()
        problems = before.leaks()
        assert len(problems) == 1
        assert problems[0].startswith("processes left:")
        assert str(orphan) in problems[0]
        before.clean_up()
        assert not running(orphan)
        assert not psutil.pid_exists(orphan), "the killed orphan was not reaped"
        assert before.leaks() == []
    finally:
        if running(orphan):
            os.kill(orphan, 9)


def test_threads_and_fds_left_open_are_seen() -> None:
    before = Snapshot.take()
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, name="left-behind", daemon=True)
    thread.start()
    r, w = os.pipe()
    try:
        problems = before.leaks()
        assert any("left-behind" in p for p in problems if p.startswith("threads left:"))
        assert any(f"{r}:" in p for p in problems if p.startswith("fds left:"))
    finally:
        stop.set()
        thread.join()
        os.close(r)
        os.close(w)
    assert before.leaks() == []
