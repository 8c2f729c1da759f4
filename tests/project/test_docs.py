"""The generated parts of the documentation match what generates them: the configuration
reference (from the pydantic models) and the method figure (from its script)."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from pydantic import BaseModel, ConfigDict

from testkit.hub import RN101_OPENAI, hub_cache_with_random_weights
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
        ("`optim.schedule.warmup_lr`", "`float, > 0 \\| null`", "`null`"),
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


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.DOTALL)


def test_every_python_example_in_the_docs_imports_what_exists():
    """The public entry points the docs show stay importable, whatever the layout becomes."""
    for page in DOCS.glob("*.md"):
        for block in python_blocks(page):
            tree = ast.parse(block)
            for node in tree.body:
                if isinstance(node, ast.ImportFrom):
                    module = importlib.import_module(node.module)
                    for alias in node.names:
                        assert hasattr(module, alias.name), (
                            f"{page.name}: {node.module}.{alias.name}"
                        )
                elif isinstance(node, ast.Import):
                    for alias in node.names:
                        importlib.import_module(alias.name)


@pytest.mark.slow
def test_the_model_pages_example_runs_as_written(tmp_path: Path):
    """With random RN101 weights where the `openai` tag's download would be."""
    (example,) = python_blocks(DOCS / "model.md")
    home = hub_cache_with_random_weights(tmp_path / "hf", *RN101_OPENAI)
    env = {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", example],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "model.safetensors").is_file()


def test_no_command_shown_reads_a_pipe():
    """intclip reads regular files only (a FIFO could block it forever), so a shell example fed
    by process substitution would fail as written."""
    pages = [ROOT / "README.md", *DOCS.glob("*.md")]
    for page in pages:
        for block in re.findall(r"```(?:sh|bash|console)\n(.*?)```", page.read_text(), re.S):
            assert "<(" not in block, f"{page.name}: {block.strip()}"
