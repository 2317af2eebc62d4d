"""Where a runner's log file is: ``DIR/<runner id>.log``, the id made safe for a name."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def log_file_name(runner_id: str) -> str:
    """``<runner id>.log``, made safe for a file name.

    Only letters, digits, ``_`` and ``-`` survive, so that retention, which prunes
    ``NAME.*.log``, can never take another runner's files; an id that had to change
    gets a short hash of the original, so two ids never share a file (a lone surrogate
    in the id, from a non-UTF-8 argv, is hashed too, never an error).
    """
    safe = _UNSAFE.sub("_", runner_id)[:120]
    if safe != runner_id or not safe:
        raw = runner_id.encode("utf-8", "surrogatepass")
        safe += "-" + hashlib.sha1(raw).hexdigest()[:8]
    return safe + ".log"


def log_path(log_dir: str | os.PathLike[str], runner_id: str) -> Path:
    return Path(log_dir) / log_file_name(runner_id)
