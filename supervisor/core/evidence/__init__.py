"""The kernel's evidence about a runner's end, read off the hot path.

`memcg` (memory cgroup and system OOM counters), `kmsg` (the kernel log's OOM
lines) and `oom_witness` (both, before and after a SIGKILL death) serve the
verdict; nothing here decides what to report.
"""

from supervisor.core.evidence import kmsg, memcg
from supervisor.core.evidence.oom_witness import OomEvidence, OomWitness

__all__ = ["OomEvidence", "OomWitness", "kmsg", "memcg"]
