"""The detection registry is the one list: every `Detector` literal is in it, once, and
what each entry claims (config fields, reasons, modules) exists."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
from pathlib import Path
from typing import get_args

import pytest

import supervisor
from supervisor.config import SupervisorConfig
from supervisor.core.detection import registry
from supervisor.core.detection.interface import DetectorSpec, Watched
from supervisor.protocol import Detector, FailureReason


def test_every_detector_literal_is_registered_once() -> None:
    names = [spec.name for spec in registry.DETECTORS]
    assert len(names) == len(set(names)), "a detector registered twice"
    assert set(names) == set(get_args(Detector))
    assert set(registry.BY_NAME) == set(names)


def test_config_fields_named_exist() -> None:
    fields = {f.name for f in dataclasses.fields(SupervisorConfig)}
    for spec in registry.DETECTORS:
        missing = set(spec.config_fields) - fields
        assert not missing, f"detector {spec.name!r} names unknown config fields {missing}"


def test_reasons_are_failure_reasons() -> None:
    known = set(get_args(FailureReason)) | {None}
    for spec in registry.DETECTORS:
        assert spec.reasons, spec.name
        assert set(spec.reasons) <= known, spec.name


@pytest.mark.parametrize("spec", registry.DETECTORS, ids=lambda spec: spec.name)
def test_modules_exist_and_it_says_what_it_watches(spec: DetectorSpec) -> None:
    assert spec.modules
    for module in spec.modules:
        importlib.import_module(module)
    assert spec.watches.strip()


def test_each_entry_is_a_loop_or_names_its_driver() -> None:
    for spec in registry.DETECTORS:
        assert (spec.run is None) != (not spec.driven_by), spec.name
        if spec.run is not None:
            assert inspect.iscoroutinefunction(spec.run), spec.name
    assert registry.loops() == tuple(s for s in registry.DETECTORS if s.run is not None)
    with pytest.raises(ValueError, match="either run or driven_by"):
        DetectorSpec(name="log", watches="x", config_fields=(), modules=("x",), reasons=(None,))

    async def run(w: Watched) -> None:
        pass

    with pytest.raises(ValueError, match="either run or driven_by"):
        DetectorSpec(
            name="log",
            watches="x",
            config_fields=(),
            modules=("x",),
            reasons=(None,),
            run=run,
            driven_by="y",
        )


def test_every_detected_by_in_the_source_is_registered() -> None:
    """A ``detected_by="..."`` written anywhere in the package names a registered detector."""
    root = Path(supervisor.__file__).parent
    used: set[str] = set()
    for path in root.rglob("*.py"):
        used.update(re.findall(r'detected_by="(\w+)"', path.read_text()))
    assert used, "the pattern no longer finds the detectors' reports"
    assert used <= set(registry.BY_NAME), used - set(registry.BY_NAME)


def test_operations_doc_lists_every_detector() -> None:
    doc = Path(supervisor.__file__).parent.parent / "docs" / "operations.md"
    text = doc.read_text()
    section = text[text.index("## Detection: how an end is noticed") :]
    section = section[: section.index("\n## ", 1)]
    rows = set(re.findall(r"^\| `(\w+)` \|", section, flags=re.MULTILINE))
    assert rows - {"detected_by"} == set(registry.BY_NAME)
