"""Where a rank group meets: a fresh free TCP port on the loopback for each incarnation.

torch.distributed's default rendezvous (``env://``) has rank 0 listen on
``MASTER_ADDR:MASTER_PORT`` and the other ranks connect to it. A restarted group
must not meet on its predecessor's port: a rank of the old group that is still
being reaped, or a socket in TIME_WAIT, would join or refuse the new one. So every
incarnation gets a port that is free now and was not handed out recently.

The port is free when chosen, not reserved: another process may take it before
rank 0 binds it. That window is the time between spawning the ranks and their
``init_process_group`` (a prespawned spare's port waits longer); a lost race fails
the load, and the restart that follows picks another port.
"""

from __future__ import annotations

import collections
import socket

#: The address every rank of a group meets on (one host; docs/ranks.md).
MASTER_ADDR = "127.0.0.1"

#: Ports handed out recently, never handed out again while they are in here.
_recent: collections.deque[int] = collections.deque(maxlen=256)


def free_port(host: str = MASTER_ADDR) -> int:
    """A TCP port nobody listens on now, and not one this process handed out recently."""
    for _ in range(64):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))  # the kernel picks an unused ephemeral port
            port: int = sock.getsockname()[1]
        if port not in _recent:
            _recent.append(port)
            return port
    raise OSError("no fresh free TCP port found for a rank group's rendezvous")


__all__ = ["MASTER_ADDR", "free_port"]
