"""Runner output lines that mean the runner cannot recover: fail it at once.

Many GPU failures are "sticky": after them the CUDA context is corrupt, every later
CUDA call in the process fails, and the process often lingers, wedged, holding the
GPU. They show up in the runner's output long before a heartbeat or progress deadline
trips. The defaults list only such errors; a per-request "CUDA out of memory" that the
engine handles (and keeps serving) is not here.

Every runner output line goes through `FatalMatcher.match`, in the event loop, so it
must be cheap, and bounded whatever the pattern: patterns are matched with RE2, whose
time is linear in the line (Python's `re` backtracks: ``(a+)+$`` against 27 ``a`` and a
``!`` takes seconds). RE2 has no backreferences and no lookaround; such a pattern is a
`ValueError`. The patterns are searched in one pass, as one RE2 set, and a line with
none of the defaults' keywords (one lower-casing and a few substring tests, cheaper
than the search) skips the defaults altogether.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import re2


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

# Errors come back as exceptions; RE2 must not also print them on stderr.
_OPTIONS = re2.Options()
_OPTIONS.log_errors = False


def _compile(regex: object) -> None:
    """`ValueError` (one line) unless RE2 takes ``regex`` and it needs some text."""
    if not isinstance(regex, str):
        raise ValueError(f"fatal pattern must be a string, got {type(regex).__name__}")
    try:
        compiled = re2.compile(regex, options=_OPTIONS)
    except (re2.error, UnicodeError, TypeError, OverflowError) as exc:
        said = exc.args[0] if exc.args else exc
        if isinstance(said, bytes):
            said = said.decode("utf-8", "backslashreplace")
        why = " ".join(str(said).split())  # one line, whatever RE2 said
        raise ValueError(
            f"invalid fatal pattern {regex!r}: {why} (patterns are RE2: no backreferences, "
            "no lookahead or lookbehind)"
        ) from None
    if compiled.search("") is not None:
        raise ValueError(
            f"fatal pattern {regex!r} matches an empty line, so it would fail every runner"
        )


def _searchable(line: str) -> str:
    """``line`` as RE2 can take it: a lone surrogate (undecodable bytes the runner
    wrote) cannot be encoded to UTF-8, so it is escaped as ``\\udcxx``."""
    return line.encode("utf-8", "backslashreplace").decode("utf-8")


class _PatternSet:
    """Patterns searched in one pass (an RE2 set); the first of those found wins."""

    __slots__ = ("_match", "_patterns")

    def __init__(self, patterns: list[FatalPattern]) -> None:
        self._patterns = patterns
        found = re2.Set.SearchSet(_OPTIONS)
        for pattern in patterns:
            found.Add(pattern.regex)
        try:
            found.Compile()
        except re2.error:
            raise ValueError(
                f"the {len(patterns)} fatal patterns together are too large for RE2's memory budget"
            ) from None
        self._match: Callable[[str], list[int] | None] = found.Match

    def find(self, line: str) -> str | None:
        hits = self._match(line)
        return None if not hits else self._patterns[min(hits)].name


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
        for pattern in self.patterns:
            _compile(pattern.regex)
        guarded = [p for p in self.patterns if p.keywords]
        self._keywords = tuple(dict.fromkeys(k for p in guarded for k in p.keywords))
        self._guarded = _PatternSet(guarded) if guarded else None
        unguarded = [p for p in self.patterns if not p.keywords]
        self._open = _PatternSet(unguarded) if unguarded else None

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def match(self, line: str) -> str | None:
        """The name of the first pattern found in ``line``, or None (the common case)."""
        try:
            return self._match(line)
        except UnicodeEncodeError:
            return self._match(_searchable(line))

    def _match(self, line: str) -> str | None:
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
