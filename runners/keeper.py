"""The keeper: a tiny process above the runner that takes the runner's whole tree down.

A runner's engine starts children (tokenizer pools, compile workers, helpers that
``setsid`` and daemonize). A process group does not hold them: ``setsid`` leaves it,
and PDEATHSIG only reaches direct children. So the process multiprocessing starts
splits in two before anything else runs:

- the keeper (the original process) marks itself a *child subreaper*: every orphan
  of its subtree, daemons included, is reparented to it instead of to init. It does
  nothing but reap, forward the supervisor's signals to the runner, and wait;
- the runner (its fork child) carries on with the bootstrap.

When the runner exits, or the host dies (the host's pidfd turns readable, or the
PDEATHSIG arrives), the keeper SIGKILLs every descendant it still has, reaps them,
and exits with the runner's status (same code, or the same fatal signal) so that the
host's ``exitcode`` means what it meant without a keeper. It holds none of the
runner's pipes, so EOF and the host's view of death are as before.

What it cannot do: outlive a SIGKILL aimed at itself. The runner then dies through
its own PDEATHSIG, but the runner's children are orphaned past the keeper; only the
cgroup layer (the supervisor's ``cgroup.kill``) catches those.
"""

from __future__ import annotations

import contextlib
import gc
import os
import resource
import select
import signal
from typing import TYPE_CHECKING, NoReturn

from runners.bootstrap import EXIT_ORPHANED
from runners.heartbeat import PR_SET_CHILD_SUBREAPER, die_with_parent, prctl
from supervisor.ipc.proctree import descendants

if TYPE_CHECKING:
    from supervisor.ipc.shared import SharedState
    from supervisor.ipc.spawn_args import BootstrapArgs

#: Signals the supervisor may aim at "the runner" before it knows the runner's pid.
FORWARDED = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGQUIT)
#: The keeper's own PDEATHSIG: catchable, so it can clean up before it goes.
HOST_GONE_SIGNAL = signal.SIGHUP
#: Without a pidfd on the host (Linux < 5.3), how often the keeper looks at its parent
#: besides PDEATHSIG; with one, an idle keeper never wakes.
_PARENT_CHECK_MS = 2000


def split(args: BootstrapArgs) -> None:
    """Fork the runner off below a keeper. Returns in the runner, never in the keeper."""
    if args.cgroup:
        # The host moves us too; joining from inside closes the gap before that.
        with contextlib.suppress(OSError), open(f"{args.cgroup}/cgroup.procs", "w") as f:
            f.write("0")
    host_fd = _open_host(args.host_pid)
    if not prctl(PR_SET_CHILD_SUBREAPER, 1):
        _close(host_fd)
        args.shared.set_runner_pid(os.getpid())  # no keeper possible: we are the runner
        return
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)  # out of the host's group: a Ctrl-C or a kill of it is not ours
    # Handlers before the fork: a SIGCHLD from a runner that dies at once is not lost.
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    ours = (signal.SIGCHLD, HOST_GONE_SIGNAL, *FORWARDED)
    previous = {sig: signal.signal(sig, _note) for sig in ours}
    old_wakeup = signal.set_wakeup_fd(wake_w)
    keeper = os.getpid()
    runner = os.fork()
    if runner == 0:
        signal.set_wakeup_fd(old_wakeup)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for fd in (wake_r, wake_w):
            os.close(fd)
        _close(host_fd)
        args.shared.set_runner_pid(os.getpid())
        die_with_parent()
        if os.getppid() != keeper:  # the keeper died before PDEATHSIG was armed
            os._exit(EXIT_ORPHANED)
        return
    _keep(runner, wake_r, wake_w, host_fd, args.shared)


def _note(signum: int, frame: object) -> None:
    """The wake-up fd carries the signal number; nothing else to do here."""


def _open_host(host_pid: int) -> int | None:
    """A pidfd on the host, readable once it dies; exits now if it is already gone."""
    if not host_pid:
        return None
    try:
        return os.pidfd_open(host_pid)
    except ProcessLookupError:
        os._exit(EXIT_ORPHANED)
    except (OSError, AttributeError):  # kernel < 5.3: PDEATHSIG and the parent check remain
        return None


def _close(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


def _detach(keep: set[int]) -> None:
    """Hold nothing of the runner's or the host's: no pipe end, no stdout.

    The task/event/output pipes must reach EOF when the runner dies, and the host's
    stdout must close when the host dies, whoever is still waiting on the keeper.
    """
    gc.disable()  # no finalizer may close a number the closes below freed and reused
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, resource.getrlimit(resource.RLIMIT_NOFILE)[1])  # close_range(2): cheap


def _keep(
    runner: int, wake_r: int, wake_w: int, host_fd: int | None, shared: SharedState
) -> NoReturn:
    parent = os.getppid()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _detach({wake_r, wake_w} | ({host_fd} if host_fd is not None else set()))
    die_with_parent(HOST_GONE_SIGNAL)
    poller = select.poll()
    poller.register(wake_r, select.POLLIN)
    if host_fd is not None:
        poller.register(host_fd, select.POLLIN)
    timeout = None if host_fd is not None else _PARENT_CHECK_MS
    status: int | None = None
    host_gone = False
    while status is None and not host_gone:
        ready = {fd for fd, _ in poller.poll(timeout)}
        signals = _drain(wake_r)
        host_gone = host_fd in ready or os.getppid() != parent
        for sig in signals:
            if sig in FORWARDED:
                _forward(runner, sig)
        status = _reap(runner)
    if status is not None:
        # The host reports the runner's end with this, without waiting for our exit
        # (the tree walk and clean-up below, then our own exit).
        shared.set_runner_status(status)
    status = _kill_tree(runner, status)
    if host_gone or status is None:
        os._exit(EXIT_ORPHANED)
    _mirror(status)


def _drain(fd: int) -> set[int]:
    data = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 512):
            data += chunk
    return set(data)


def _forward(runner: int, signum: int) -> None:
    # The runner is our unreaped child here, so its pid cannot be anyone else's.
    with contextlib.suppress(OSError):
        os.killpg(runner, signum)
    with contextlib.suppress(OSError):
        os.kill(runner, signum)


def _reap(runner: int) -> int | None:
    """Reap every exited child (adopted orphans too); the runner's wait status if it went."""
    status = None
    while True:
        try:
            pid, st = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return status
        if pid == 0:
            return status
        if pid == runner:
            status = st


def _kill_tree(runner: int, status: int | None) -> int | None:
    """SIGKILL and reap everything below us, until no child is left at all.

    Every orphan comes back to us (we are the subreaper), so an empty ``waitpid`` means
    an empty subtree, whatever forked while we walked.
    """
    me = os.getpid()
    while True:
        for pid in descendants(me):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        try:
            pid, st = os.waitpid(-1, 0)
        except ChildProcessError:
            return status
        if pid == runner:
            status = st


def _mirror(status: int) -> NoReturn:
    """Exit as the runner did: its exit code, or death by its signal."""
    code = os.waitstatus_to_exitcode(status)
    if code >= 0:
        os._exit(code)
    signum = -code
    with contextlib.suppress(OSError, ValueError):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # the runner's core is the one
    with contextlib.suppress(OSError, ValueError):
        signal.signal(signum, signal.SIG_DFL)
    with contextlib.suppress(OSError, ValueError):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})
    os.kill(os.getpid(), signum)
    os._exit(128 + signum)
