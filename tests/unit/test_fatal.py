"""Fatal output patterns: what fails a runner at once, and what must not."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisor.logs.fatal import DEFAULT_FATAL_PATTERNS, FatalMatcher, fatal_matcher

MUST_MATCH = [
    ("RuntimeError: CUDA error: an illegal memory access was encountered", "illegal memory access"),
    (
        "RuntimeError: Triton Error [CUDA]: an illegal memory access was encountered",
        "illegal memory access",
    ),
    ("HIP error: an illegal memory access was encountered", "illegal memory access"),
    ("CUDA_ERROR_ILLEGAL_ADDRESS raised by cuLaunchKernel", "illegal memory access"),
    ("  what():  cudaErrorIllegalAddress", "illegal memory access"),
    ("RuntimeError: CUDA error: device-side assert triggered", "device-side assert"),
    (
        "CUDA kernel errors might be asynchronously reported; device-side assertion triggered",
        "device-side assert",
    ),
    ("RuntimeError: CUDA error: unspecified launch failure", "unspecified launch failure"),
    ("RuntimeError: CUDA error: misaligned address", "misaligned address"),
    ("Triton Error [CUDA]: misaligned address", "misaligned address"),
    ("CUDA error: an illegal instruction was encountered", "illegal instruction"),
    ("CUDA error: hardware stack error", "hardware stack error"),
    ("CUDA error: the launch timed out and was terminated", "kernel launch timeout"),
    ("RuntimeError: CUDA error: uncorrectable ECC error encountered", "uncorrectable ECC error"),
    ("NVML: Uncorrectable ECC error on GPU 3", "uncorrectable ECC error"),
    (
        "torch.distributed.DistBackendError: NCCL error in: ProcessGroupNCCL.cpp:1970, "
        "unhandled cuda error (run with NCCL_DEBUG=INFO for details), NCCL version 2.20.5",
        "NCCL error",
    ),
    ("NCCL error: unhandled system error, NCCL version 2.18.1", "NCCL error"),
    (
        "ncclRemoteError: A call failed possibly due to a network error or a remote process "
        "exiting prematurely.",
        "NCCL error",
    ),
    ("ncclInternalError: Internal check failed.", "NCCL error"),
    (
        "[Rank 0] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=7, "
        "OpType=ALLREDUCE) ran for 600000 milliseconds before timing out.",
        "NCCL watchdog",
    ),
    (
        "Some NCCL operations have failed or timed out. Due to the asynchronous nature of "
        "CUDA kernels, subsequent GPU operations might run on corrupted/incomplete data.",
        "NCCL watchdog",
    ),
    (
        "Unable to determine the device handle for GPU0000:3B:00.0: GPU has fallen off the bus.",
        "GPU fell off the bus",
    ),
    ("NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, name=python3", "fatal Xid"),
    ("NVRM: Xid (PCI:0000:07:00): 48, pid=88, An uncorrectable double bit error", "fatal Xid"),
    ("NVRM: Xid (PCI:0000:07:00): 94, pid=88, Contained ECC error", "fatal Xid"),
]

MUST_NOT_MATCH = [
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a "
    "total capacity of 79.15 GiB of which 3.06 MiB is free.",
    "RuntimeError: CUDA error: out of memory",
    "CUDA_ERROR_OUT_OF_MEMORY: out of memory",
    "cudaErrorMemoryAllocation",
    "12:00:01.123 INFO    runner r1 | generated 128 tokens in 0.53s (241.5 tok/s)",
    "NCCL INFO Bootstrap : Using eth0:10.0.0.2<0>",
    "NCCL WARN Cuda failure 'out of memory'",
    "NCCL_DEBUG=INFO",
    "NCCL error: invalid usage (run with NCCL_DEBUG=WARN for details)",
    "ncclInvalidArgument: Invalid value for an argument.",
    "NVRM: Xid (PCI:0000:3b:00): 13, pid=1234, Graphics SM Warp Exception",
    "NVRM: Xid (PCI:0000:3b:00): 63, pid=1234, ECC page retirement recorded",
    "NVRM: Xid (PCI:0000:3b:00): 790, not a real Xid",
    "ECC errors: corrected 3, volatile 0",
    "launched 8 workers; stack size 8 MiB; assert statements enabled",
    "Traceback (most recent call last):",
    "",
]


@pytest.mark.parametrize(("line", "name"), MUST_MATCH)
def test_default_patterns_catch_unrecoverable_errors(line: str, name: str) -> None:
    assert FatalMatcher().match(line) == name


@pytest.mark.parametrize("line", MUST_NOT_MATCH)
def test_default_patterns_leave_recoverable_and_ordinary_lines_alone(line: str) -> None:
    assert FatalMatcher().match(line) is None


def test_every_default_has_a_reason_a_keyword_and_a_table_row() -> None:
    named = {name for _, name in MUST_MATCH}
    for pattern in DEFAULT_FATAL_PATTERNS:
        assert pattern.why
        assert pattern.keywords
        assert all(k == k.lower() for k in pattern.keywords)
        assert pattern.name in named, f"no must-match line for {pattern.name}"


@pytest.mark.parametrize("pattern", DEFAULT_FATAL_PATTERNS, ids=lambda p: p.name)
@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_keywords_never_hide_a_match(pattern: object, data: st.DataObject) -> None:
    """Whatever the regex matches passes the keyword pre-check too."""
    assert hasattr(pattern, "regex")
    line = data.draw(st.from_regex(re.compile(pattern.regex)))
    assert re.search(pattern.regex, line)
    assert FatalMatcher().match(line) is not None


@settings(max_examples=300)
@given(st.text(max_size=400))
def test_arbitrary_text_never_raises(line: str) -> None:
    matcher = fatal_matcher((r"(?i)engine\s+dead", r"(a)\1"), True)
    result = matcher.match(line)
    assert result is None or isinstance(result, str)


@settings(max_examples=300)
@given(st.text(max_size=40))
def test_arbitrary_user_pattern_compiles_or_is_a_value_error(regex: str) -> None:
    try:
        matcher = FatalMatcher([regex], use_defaults=False)
    except ValueError as exc:
        message = str(exc)
    else:
        message = ""
    assert "\n" not in message  # the CLI prints it as one usage line
    if message:
        return
    matcher.match("some output line")
    matcher.match(regex)


def test_user_patterns_add_to_the_defaults() -> None:
    m = FatalMatcher([r"engine (?:wedged|dead)", r"(?i)tpu halted"])
    assert m.match("my engine wedged at step 3") == "pattern 'engine (?:wedged|dead)'"
    assert m.match("TPU HALTED") == "pattern '(?i)tpu halted'"
    assert m.match("CUDA error: unspecified launch failure") == "unspecified launch failure"
    assert m.match("engine fine") is None


def test_defaults_can_be_turned_off() -> None:
    m = FatalMatcher(["engine dead"], use_defaults=False)
    assert m.match("CUDA error: an illegal memory access was encountered") is None
    assert m.match("engine dead") == "pattern 'engine dead'"
    empty = FatalMatcher((), use_defaults=False)
    assert not empty
    assert empty.match("engine dead") is None


def test_patterns_that_cannot_be_joined_still_match_on_their_own() -> None:
    m = FatalMatcher(
        [r"(x)(y)\2\1", r"(?P<code>E\d+) then (?P=code)", r"(?P<code>F\d+)", "(?x) a b  # c"],
        use_defaults=False,
    )
    assert m.match("--xyyx--") == r"pattern '(x)(y)\\2\\1'"
    assert m.match("xyxy") is None
    assert m.match("E7 then E7") is not None
    assert m.match("F12") == "pattern '(?P<code>F\\\\d+)'"
    assert m.match("ab") == "pattern '(?x) a b  # c'"


@pytest.mark.parametrize(
    ("regex", "message"),
    [
        ("(unclosed", "invalid fatal pattern '(unclosed': missing ), unterminated subpattern"),
        ("a{99999999999}", "invalid fatal pattern 'a{99999999999}'"),
        ("x*", "matches an empty line"),
        ("^", "matches an empty line"),
    ],
)
def test_bad_user_patterns_are_one_line_value_errors(regex: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        FatalMatcher([regex])
    assert "\n" not in str(info.value)
