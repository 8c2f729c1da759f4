"""The generated parts of the documentation match what generates them: the configuration
reference (from the pydantic models) and the method figure (from its script)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from pydantic import BaseModel, ConfigDict

from testkit.paths import ROOT

DOCS = ROOT / "docs"


def load_script(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_configuration_reference_is_current():
    done = subprocess.run(
        [sys.executable, str(DOCS / "config_reference.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_the_reference_lists_every_key_with_type_default_and_help():
    reference = load_script(DOCS / "config_reference.py")
    text = reference.render()
    for key, kind, default in [
        ("`data.image_root`", "`path`", "`required`"),
        ("`optim.lr`", "`float, > 0`", "`0.002`"),
        ("`model.head`", '`"global" \\| "regional" \\| "both" \\| "official"`', "`both`"),
        ("`optim.schedule.cosine_epochs`", "`float, > 0 \\| null`", "`null`"),
    ]:
        row = next(line for line in text.splitlines() if line.startswith(f"| {key} |"))
        assert f"| {kind} | {default} |" in row, row
        assert not row.endswith("|  |")


def test_a_key_without_help_text_stops_the_reference():
    reference = load_script(DOCS / "config_reference.py")

    class Section(BaseModel):
        """A section."""

        model_config = ConfigDict(use_attribute_docstrings=True)
        documented: int = 1
        """Has help."""
        undocumented: int = 2

    with pytest.raises(reference.MissingHelp, match="undocumented"):
        reference.render_section(Section, "section.", [], "")


def test_the_method_figure_is_its_scripts_output():
    figure = load_script(DOCS / "figures" / "method.py")
    assert (DOCS / "figures" / "method.svg").read_text() == figure.render()
