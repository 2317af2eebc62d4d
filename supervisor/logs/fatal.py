"""Runner output lines that mean the runner cannot recover: fail it at once.

Many GPU failures are "sticky": after them the CUDA context is corrupt, every later
CUDA call in the process fails, and the process often lingers, wedged, holding the
GPU. They show up in the runner's output long before a heartbeat or progress deadline
trips. The defaults list only such errors; a per-request "CUDA out of memory" that the
engine handles (and keeps serving) is not here.

Every runner output line goes through `FatalMatcher.match`, so it must be cheap: the
patterns are compiled into one alternation, and a line with none of the defaults'
keywords (one lower-casing and a few substring tests, about ten times cheaper than the
search) skips the defaults' alternation altogether.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FatalPattern:
    """A regular expression searched for in each output line, and why it is fatal."""

    name: str
    regex: str
    why: str
    #: Lower-case words one of which is in every line the regex matches: a line with
    #: none of them is passed over without running the regex (most lines). Empty:
    #: always search (the user's own patterns).
    keywords: tuple[str, ...] = ()


#: The well-known unrecoverable CUDA, NCCL and driver errors, by their own wording
#: (cudaGetErrorString, the CUDA driver API's names, NCCL and PyTorch's messages).
DEFAULT_FATAL_PATTERNS: tuple[FatalPattern, ...] = (
    FatalPattern(
        "illegal memory access",
        r"an illegal memory access was encountered|cudaErrorIllegalAddress"
        r"|CUDA_ERROR_ILLEGAL_ADDRESS",
        "a kernel read or wrote outside its memory; the error is sticky: the CUDA context "
        "is corrupt and every later CUDA call in the process fails",
        ("illegal",),
    ),
    FatalPattern(
        "device-side assert",
        r"device-side assert(?:ion)? triggered|cudaErrorAssert\b|CUDA_ERROR_ASSERT\b",
        "an assert in a kernel fired (often an index out of range); sticky: the context "
        "cannot run another kernel",
        ("assert",),
    ),
    FatalPattern(
        "unspecified launch failure",
        r"unspecified launch failure|cudaErrorLaunchFailure|CUDA_ERROR_LAUNCH_FAILED",
        "a kernel crashed on the device (the GPU's segfault); sticky",
        ("launch",),
    ),
    FatalPattern(
        "misaligned address",
        r"(?:CUDA|HIP|\[CUDA\])(?: error)?: misaligned address|cudaErrorMisalignedAddress"
        r"|CUDA_ERROR_MISALIGNED_ADDRESS",
        "a kernel used a misaligned pointer; sticky",
        ("misaligned",),
    ),
    FatalPattern(
        "illegal instruction",
        r"an illegal instruction was encountered|cudaErrorIllegalInstruction"
        r"|CUDA_ERROR_ILLEGAL_INSTRUCTION",
        "a kernel executed an invalid instruction; sticky",
        ("illegal",),
    ),
    FatalPattern(
        "hardware stack error",
        r"hardware stack error|cudaErrorHardwareStackError|CUDA_ERROR_HARDWARE_STACK_ERROR",
        "a kernel overflowed or corrupted its call stack; sticky",
        ("stack",),
    ),
    FatalPattern(
        "kernel launch timeout",
        r"the launch timed out and was terminated|cudaErrorLaunchTimeout"
        r"|CUDA_ERROR_LAUNCH_TIMEOUT",
        "the driver's watchdog killed a kernel that ran too long; sticky",
        ("launch",),
    ),
    FatalPattern(
        "uncorrectable ECC error",
        r"(?i:uncorrectable ECC error)|cudaErrorECCUncorrectable|CUDA_ERROR_ECC_UNCORRECTABLE",
        "GPU memory lost data; the context is lost and the GPU needs its pages retired or a "
        "reset before it can be trusted",
        ("ecc",),
    ),
    FatalPattern(
        "NCCL error",
        r"NCCL error.*(?:unhandled cuda error|unhandled system error|internal error"
        r"|remote process exited|remote error)"
        r"|ncclUnhandledCudaError|ncclSystemError|ncclInternalError|ncclRemoteError",
        "a collective failed on a CUDA, system or peer error; NCCL cannot recover a "
        "communicator after that, and the other ranks hang in their next collective",
        ("nccl",),
    ),
    FatalPattern(
        "NCCL watchdog",
        r"Watchdog caught collective operation timeout|NCCL communicator was aborted"
        r"|Some NCCL operations have failed or timed out",
        "a collective never finished (a peer died or hung); the communicator is aborted and "
        "data on the GPU may be incomplete",
        ("watchdog", "nccl"),
    ),
    FatalPattern(
        "GPU fell off the bus",
        r"GPU has fallen off the bus",
        "the GPU no longer answers on PCIe; nothing on it works until it is reset",
        ("fallen off",),
    ),
    FatalPattern(
        "fatal Xid",
        r"NVRM: Xid \(PCI:[0-9A-Fa-f:.]+\): (?:48|74|79|94|95|119|120)\b",
        "the NVIDIA driver reported a fatal GPU fault: double-bit ECC (48), NVLink (74), "
        "off the bus (79), contained or uncontained ECC (94, 95), GSP firmware (119, 120)",
        ("xid",),
    ),
)

# A leading global flag group, e.g. "(?i)": inside an alternation it must be scoped.
_LEADING_FLAGS = re.compile(r"^\(\?([aimsux]+)\)")
# "\1" or "(?(1)": group numbers shift when patterns are joined, so such a pattern
# is searched on its own.
_NUMBERED_REF = re.compile(r"(?<!\\)(?:\\\\)*\\[1-9]|\(\?\(\d")


def _compile(regex: object) -> re.Pattern[str]:
    if not isinstance(regex, str):
        raise ValueError(f"fatal pattern must be a string, got {type(regex).__name__}")
    try:
        compiled = re.compile(regex)
    except (re.error, OverflowError, RecursionError) as exc:
        raise ValueError(f"invalid fatal pattern {regex!r}: {exc}") from None
    if compiled.search("") is not None:
        raise ValueError(
            f"fatal pattern {regex!r} matches an empty line, so it would fail every runner"
        )
    return compiled


def _scoped(regex: str) -> str:
    flags = ""
    while m := _LEADING_FLAGS.match(regex):
        flags += m.group(1)
        regex = regex[m.end() :]
    return f"(?{flags}:{regex})" if flags else f"(?:{regex})"


class _Alternation:
    """Patterns searched as one compiled alternation; which one matched is asked only
    on a hit. A pattern that cannot be joined is searched on its own."""

    __slots__ = ("_alone", "_each", "_search")

    def __init__(self, compiled: list[tuple[FatalPattern, re.Pattern[str]]]) -> None:
        self._each = compiled
        parts: list[str] = []
        self._alone: list[tuple[FatalPattern, re.Pattern[str]]] = []
        for pattern, rx in compiled:
            part = _scoped(pattern.regex)
            if _NUMBERED_REF.search(pattern.regex) is None:
                try:
                    re.compile("|".join([*parts, part]))
                except (re.error, OverflowError, RecursionError):
                    pass  # e.g. a group name used twice, a verbose comment: on its own
                else:
                    parts.append(part)
                    continue
            self._alone.append((pattern, rx))
        self._search = re.compile("|".join(parts)).search if parts else None

    def find(self, line: str) -> str | None:
        search = self._search
        if search is not None and search(line) is not None:
            return next((p.name for p, rx in self._each if rx.search(line) is not None), None)
        for pattern, rx in self._alone:
            if rx.search(line) is not None:
                return pattern.name
        return None


class FatalMatcher:
    """Finds the first fatal pattern in a line: the defaults plus the user's own.

    Raises `ValueError` with a one-line message for a pattern that does not compile or
    that matches an empty line (it would fail every runner at its first output).
    """

    __slots__ = ("_guarded", "_keywords", "_open", "patterns")

    def __init__(self, patterns: Iterable[str] = (), *, use_defaults: bool = True) -> None:
        own = [FatalPattern(f"pattern {p!r}", p, "given by the user") for p in patterns]
        self.patterns: tuple[FatalPattern, ...] = (
            *(DEFAULT_FATAL_PATTERNS if use_defaults else ()),
            *own,
        )
        compiled = [(p, _compile(p.regex)) for p in self.patterns]
        guarded = [(p, rx) for p, rx in compiled if p.keywords]
        self._keywords = tuple(dict.fromkeys(k for p, _ in guarded for k in p.keywords))
        self._guarded = _Alternation(guarded) if guarded else None
        unguarded = [(p, rx) for p, rx in compiled if not p.keywords]
        self._open = _Alternation(unguarded) if unguarded else None

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def match(self, line: str) -> str | None:
        """The name of the first pattern found in ``line``, or None (the common case)."""
        if self._guarded is not None:
            low = line.lower()
            for word in self._keywords:
                if word in low:
                    found = self._guarded.find(line)
                    if found is not None:
                        return found
                    break
        return None if self._open is None else self._open.find(line)


@functools.lru_cache(maxsize=32)
def fatal_matcher(patterns: tuple[str, ...], use_defaults: bool) -> FatalMatcher:
    """One compiled matcher per distinct configuration (configs and spawns are many)."""
    return FatalMatcher(patterns, use_defaults=use_defaults)
