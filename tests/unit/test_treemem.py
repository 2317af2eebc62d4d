"""The tree memory figure: the runner's RSS plus its children's private pages, read
no more often than its CPU budget allows."""

from __future__ import annotations

import os

from supervisor.core.detection.liveness import ResourceMeter
from supervisor.core.procfs import ProcReader, uss
from supervisor.core.treemem import MAX_AGE, TreeReader


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_no_children_is_the_runners_rss() -> None:
    me = os.getpid()
    reader = TreeReader(lambda: me, list, clock=Clock())
    own = ProcReader(me)
    try:
        total = reader.rss()
        assert total is not None
        assert abs(total - (own.rss() or 0)) < 8 << 20
        assert reader.descendant_count == 0
    finally:
        own.close()
        reader.close()


def test_children_add_their_private_pages_and_readings_are_rationed() -> None:
    me = os.getpid()
    calls: list[int] = []

    def others() -> list[int]:
        calls.append(1)
        return [me]  # ourselves as a stand-in child: its USS is real and large

    clock = Clock()
    reader = TreeReader(lambda: me, others, clock=clock)
    try:
        first = reader.rss()
        assert first is not None
        assert reader.descendant_count == 1
        private = uss(me)
        if private is not None:
            assert first > private
        reader.rss()
        assert len(calls) == 1  # within its budget interval: the cached sum
        clock.now += 60
        reader.rss()
        assert len(calls) == 2  # never older than MAX_AGE
    finally:
        reader.close()


def test_cgroup_accounting_replaces_the_sum() -> None:
    me = os.getpid()
    reader = TreeReader(lambda: me, lambda: [1, 2], cgroup_memory=lambda: 12345)
    try:
        assert reader.rss() == 12345
        assert reader.descendant_count == 2
    finally:
        reader.close()


def test_retargeting_from_keeper_to_runner() -> None:
    me, parent = os.getpid(), os.getppid()
    target = [parent]
    reader = TreeReader(lambda: target[0], list)
    meter = ResourceMeter(reader)
    try:
        assert reader.pid == parent
        assert meter.sample() is not None
        target[0] = me
        assert reader.pid == me
        sample = meter.sample()
        assert sample is not None
        # a CPU delta across two different processes would be nonsense
        assert sample.cpu_percent == 0.0
        assert sample.descendants == 0
    finally:
        reader.close()


def test_gone_runner_reads_none() -> None:
    reader = TreeReader(lambda: 2**22 + 12345, list)
    try:
        assert reader.rss() is None
        assert reader.read() is None
    finally:
        reader.close()


def test_without_a_memory_limit_the_tree_is_walked_only_every_max_age() -> None:
    me = os.getpid()
    calls: list[int] = []

    def others() -> list[int]:
        calls.append(1)
        return []  # a cheap walk: an eager reader would walk again at the next reading

    clock = Clock()
    eager = TreeReader(lambda: me, others, clock=clock)
    lazy = TreeReader(lambda: me, others, clock=clock, eager=False)
    try:
        eager.rss()
        clock.now += 1.0
        eager.rss()
        assert len(calls) == 2
        calls.clear()
        assert lazy.read() is not None
        assert len(calls) == 1  # the first reading walks
        clock.now += MAX_AGE - 0.5
        lazy.read()
        assert len(calls) == 1
        clock.now += 1.0
        lazy.read()
        assert len(calls) == 2
    finally:
        eager.close()
        lazy.close()


def test_one_reading_gives_state_cpu_and_the_same_rss_as_statm() -> None:
    own = ProcReader(os.getpid())
    try:
        read, rss, again = own.read(), own.rss(), own.read()
        assert read is not None
        assert rss is not None
        assert again is not None
        assert read[0] == again[0] == "running"
        assert 0 <= again[1] - read[1] < 1.0
        assert abs(read[2] - rss) < 8 << 20
    finally:
        own.close()
