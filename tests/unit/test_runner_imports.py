"""A runner imports nothing heavy from the supervisor: its start-up is recovery time."""

from __future__ import annotations

import json
import subprocess
import sys

ALLOWED = {"supervisor", "supervisor.protocol", "supervisor.config", "supervisor.errors"}

PROBE = """
import json, sys
import runners.bootstrap, runners.runner, runners.keeper, runners.heartbeat, runners.chaos
import runners.deathwatch
import runners.engines
import supervisor.ipc.spawn_args, supervisor.ipc.wire, supervisor.ipc.shared
import supervisor.ipc.proctree
print(json.dumps(sorted(sys.modules)))
"""


def test_the_runner_side_imports_only_the_protocol_config_and_ipc() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    modules = set(json.loads(out))
    ours = {m for m in modules if m.split(".")[0] == "supervisor"}
    assert ours - ALLOWED - {m for m in ours if m.startswith("supervisor.ipc")} == set()
    heavy = {m for m in modules if m.split(".")[0] in ("anyio", "psutil", "loguru", "asyncio")}
    assert heavy == set()
