"""GPU health from outside the runner: the NVML watcher (docs/gpu.md).

`supervisor.gpu.xid` (the Xid table), `supervisor.gpu.decisions` (pure decisions),
`supervisor.gpu.nvml` (the NVML calls; nvidia-ml-py is the optional ``gpu`` extra)
and `supervisor.gpu.watcher` (the one watcher per node).
"""
