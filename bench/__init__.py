"""Benchmarks of runner-supervisor, each measured beside its baseline in the same run.

Run ``python -m bench --quick`` (CI, under two minutes) or ``python -m bench --full``
(the README's figures). This package stays import-light: spawned runners import
``bench.engines`` and must not pay for the benchmark harness.
"""
