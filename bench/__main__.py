"""``python -m bench``. Imports nothing at module level: spawned children re-import
the parent's ``__main__`` (as ``__mp_main__``), and a runner must start as fast in a
benchmark as it does in production."""

if __name__ == "__main__":
    import sys

    from bench.cli import main

    sys.exit(main())
