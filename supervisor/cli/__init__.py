"""The ``runner-supervisor`` command line: parsing, stdin input, output, the worker loop."""

from supervisor.cli.app import main

__all__ = ["main"]
