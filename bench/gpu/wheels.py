"""Install what the GPU machine lacks from wheels brought along (standard library only).

The GPU machine has torch, cupy, nvidia-ml-py, psutil, anyio and pytest, but no
package registry and no loguru. `missing` reads the project's runtime requirements
from pyproject.toml (plus py-spy, for the native stacks) and names those not
installed; `install` puts them, from ``--wheels DIR`` only (``--no-index``), into a
folder that this process and every runner it spawns import from.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: Not a requirement of the project: the native-stack check uses it when present.
OPTIONAL = ("py-spy",)


def requirements(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """The project's runtime requirements, as written (``loguru>=0.7,<0.8``)."""
    data = tomllib.loads(pyproject.read_text())
    return list(data["project"]["dependencies"])


def _name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement.strip())
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return match.group(0)


def missing(reqs: list[str] | None = None) -> list[str]:
    """Distribution names of the requirements (and optional tools) not installed."""
    names = [_name(r) for r in (requirements() if reqs is None else reqs)] + list(OPTIONAL)
    out = []
    for name in names:
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            out.append(name)
    return out


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def wheels_for(names: list[str], wheels: Path) -> dict[str, Path]:
    """The wheel in ``wheels`` for each name (file names use the normalised name)."""
    found: dict[str, Path] = {}
    for path in sorted(wheels.glob("*.whl")):
        dist = _normal(path.name.split("-", 1)[0])
        for name in names:
            if _normal(name) == dist:
                found[name] = path
    return found


def activate(site: Path) -> None:
    """Import from ``site`` here and in every process started from here."""
    sys.path.insert(0, str(site))
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p
    )
    bin_dir = site / "bin"
    if bin_dir.is_dir():
        os.environ["PATH"] = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"


def install(names: list[str], wheels: Path, site: Path) -> list[str]:
    """Install the wheels of ``names`` into ``site``; returns one line per name."""
    found = wheels_for(names, wheels)
    lines = [f"{name}: no wheel in {wheels}" for name in names if name not in found]
    if found:
        site.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--no-index",
                "--no-deps",
                "--no-compile",
                "--disable-pip-version-check",
                "--upgrade",
                "--target",
                str(site),
                *map(str, found.values()),
            ],
            check=True,
        )
        lines += [f"{name}: installed from {path.name}" for name, path in found.items()]
        activate(site)
    return lines


__all__ = ["OPTIONAL", "activate", "install", "missing", "requirements", "wheels_for"]
