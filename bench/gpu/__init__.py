"""GPU checks: ``python -m bench.gpu --out DIR`` on a machine with an NVIDIA GPU.

What runs where, how to bring the missing packages as wheels, and what each row
measures: docs/gpu.md. This package stays import-light (runners import
``bench.gpu.engine``), and ``__main__`` imports only the standard library until the
wheels are installed.
"""
