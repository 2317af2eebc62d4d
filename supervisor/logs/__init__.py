"""Runner logs: fatal output lines, per-runner log files, following them, JSON logging."""
