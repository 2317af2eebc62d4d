"""docs/cli.md's reference is the parsers' own help: it cannot drift from the flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.cli import reference
from supervisor.cli.args import CONFIG_FLAGS, POLICY_FLAGS, SPEC_FLAGS

CLI_MD = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def test_docs_cli_md_is_up_to_date() -> None:
    text = CLI_MD.read_text()
    assert reference.updated(text) == text, (
        "docs/cli.md is out of date: python -m supervisor.cli.reference --write docs/cli.md"
    )
    assert reference.main(["--check", str(CLI_MD)]) == 0


def test_every_generated_flag_is_in_the_reference() -> None:
    block = reference.render()
    for flags in (CONFIG_FLAGS, POLICY_FLAGS, SPEC_FLAGS):
        for f, _ in flags.fields():
            assert flags.flag(f.name) in block, f"{flags.flag(f.name)} missing from docs/cli.md"
    assert "runner-supervisor logs" in block


def test_check_fails_on_a_stale_file(tmp_path: Path) -> None:
    stale = tmp_path / "cli.md"
    stale.write_text(f"intro\n{reference.BEGIN}\nold\n{reference.END}\noutro\n")
    assert reference.main(["--check", str(stale)]) == reference.OUT_OF_DATE
    assert reference.main(["--write", str(stale)]) == 0
    assert reference.main(["--check", str(stale)]) == 0
    assert stale.read_text().startswith("intro\n")
    assert stale.read_text().endswith("outro\n")


def test_a_file_without_markers_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = tmp_path / "cli.md"
    plain.write_text("no markers\n")
    assert reference.main(["--write", str(plain)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
