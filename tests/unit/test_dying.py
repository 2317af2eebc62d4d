"""The early death judgement: /proc/PID/stat parsed and judged, without processes."""

from __future__ import annotations

import signal

from hypothesis import given
from hypothesis import strategies as st

from supervisor.core.dying import (
    PF_EXITING,
    Dying,
    TaskStat,
    judge,
    parse_shared_pending,
    parse_stat,
)

_SIGKILL = 1 << (signal.SIGKILL - 1)


def _line(comm: str, state: str, ppid: int, flags: int, pending: int, exit_code: int) -> bytes:
    # proc(5) fields from 3: state ppid ... flags(9) ... signal(31) ... exit_code(52)
    rest = ["0"] * 50
    rest[0], rest[1], rest[6], rest[28], rest[49] = (
        state,
        str(ppid),
        str(flags),
        str(pending),
        str(exit_code),
    )
    return f"1234 ({comm}) {' '.join(rest)}\n".encode()


@given(
    comm=st.text(st.characters(blacklist_categories=("Cs",)), max_size=16),
    state=st.sampled_from("RSDZTtXxI"),
    ppid=st.integers(0, 2**22),
    flags=st.integers(0, 2**32 - 1),
    pending=st.integers(0, 2**31 - 1),
    exit_code=st.integers(0, 0xFFFF),
)
def test_parse_reads_the_fields_whatever_the_command_name(
    comm: str, state: str, ppid: int, flags: int, pending: int, exit_code: int
) -> None:
    parsed = parse_stat(_line(comm, state, ppid, flags, pending, exit_code))
    assert parsed == TaskStat(state, ppid, flags, pending, exit_code)


@given(st.binary(max_size=300))
def test_parse_never_raises(data: bytes) -> None:
    parse_stat(data)


def test_a_kernel_without_the_exit_code_field_reads_as_zero() -> None:
    parsed = parse_stat(b"7 (a) b) S 1 7 7 0 -1 4194560 " + b"0 " * 30)
    assert parsed is not None
    assert parsed.state == "S"
    assert parsed.exit_code == 0


def _stat(state: str = "S", flags: int = 0, pending: int = 0, exit_code: int = 0) -> TaskStat:
    return TaskStat(state, 1, flags, pending, exit_code)


def test_a_sleeping_runner_lives() -> None:
    assert judge(_stat("S")) is None
    assert judge(_stat("R", pending=1 << (signal.SIGTERM - 1))) is None  # caught, maybe


def test_a_zombie_main_thread_is_dying_with_its_status() -> None:
    assert judge(_stat("Z", exit_code=signal.SIGKILL)) == Dying(-signal.SIGKILL)
    assert judge(_stat("Z", exit_code=3 << 8)) == Dying(3)
    assert judge(_stat("Z", exit_code=0)) == Dying(0)  # a zombie's 0 is a real 0
    assert judge(_stat("Z", exit_code=signal.SIGSEGV | 0x80)) == Dying(-signal.SIGSEGV)


def test_an_exiting_main_thread_is_dying() -> None:
    assert judge(_stat("R", PF_EXITING, exit_code=signal.SIGKILL)) == Dying(-signal.SIGKILL)
    # The status is set just after the flag: a 0 there is not known yet.
    assert judge(_stat("R", PF_EXITING, exit_code=0)) == Dying(None)


def test_a_pending_sigkill_is_dying_without_a_status_yet() -> None:
    assert judge(_stat("R", pending=_SIGKILL)) == Dying(None)


def test_a_reaped_runner_is_dying_with_an_unknown_status() -> None:
    assert judge(None) == Dying(None)


def test_a_sigkill_sent_to_the_process_gives_the_status_before_any_thread_ran() -> None:
    assert judge(_stat("R", pending=_SIGKILL), shared_pending=_SIGKILL) == Dying(-signal.SIGKILL)
    # exit_group(3) leaves SIGKILL in each thread's own set only: no status yet
    assert judge(_stat("R", pending=_SIGKILL), shared_pending=0) == Dying(None)
    # a pending SIGKILL in the shared set of a live-looking stat is still a death
    assert judge(_stat("S"), shared_pending=_SIGKILL) == Dying(-signal.SIGKILL)


@given(st.integers(0, 2**64 - 1))
def test_shared_pending_is_read_from_status(mask: int) -> None:
    data = f"Name:\tpython3\nSigPnd:\t0000000000000000\nShdPnd:\t{mask:016x}\n".encode()
    assert parse_shared_pending(data) == mask
    assert parse_shared_pending(b"Name:\tx\n") == 0
