"""``python -m supervisor``: the ``runner-supervisor`` CLI."""

from __future__ import annotations

import sys

from supervisor.cli.app import main

# The guard matters: with the spawn start method each runner re-imports the
# parent's __main__ module (as __mp_main__), which must not start another CLI.
if __name__ == "__main__":
    sys.exit(main())
