"""``python -m bench.gpu``: installs what is missing from ``--wheels``, then runs the checks.

Standard library only until the wheels are in: the project itself imports loguru,
which the GPU machine lacks. Spawned runners re-import this module as
``__mp_main__``; the ``__name__`` guard keeps them from running anything.
"""

if __name__ == "__main__":
    import argparse
    import sys
    from pathlib import Path

    from bench.gpu import wheels

    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--wheels", type=Path, default=None)
    early.add_argument("--site", type=Path, default=Path("/tmp/runner-supervisor-site"))
    known, _ = early.parse_known_args()
    if known.site.is_dir():
        wheels.activate(known.site)  # installed by an earlier run
    lacking = wheels.missing()
    if lacking and known.wheels is not None:
        for line in wheels.install(lacking, known.wheels, known.site):
            print(f"[bench.gpu] {line}", file=sys.stderr)
        lacking = wheels.missing()
    required = [name for name in lacking if name not in wheels.OPTIONAL]
    if required:
        print(
            f"python -m bench.gpu: missing {', '.join(required)}; bring their wheels with "
            "--wheels DIR (docs/gpu.md: 'Running the GPU checks')",
            file=sys.stderr,
        )
        sys.exit(2)

    from bench.gpu.cli import main

    sys.exit(main())
