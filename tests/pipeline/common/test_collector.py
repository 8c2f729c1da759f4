"""Start-up work with the garbage collector paused: state restored, survivors frozen."""

from __future__ import annotations

import gc
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.common.collector import collector_paused, tensor_command
from testkit.paths import ROOT


def printed_by(code: str) -> list[str]:
    """The words a fresh interpreter prints running `code` in the checkout."""
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


@pytest.fixture(autouse=True)
def collector_restored():
    enabled = gc.isenabled()
    yield
    gc.unfreeze()
    if enabled:
        gc.enable()


def test_the_block_runs_without_collection_and_freezes_what_it_built():
    gc.unfreeze()
    with collector_paused():
        assert not gc.isenabled()
        built = [{"entry": index} for index in range(1000)]
    assert gc.isenabled()
    assert gc.get_freeze_count() >= len(built)


def test_a_collector_disabled_before_stays_disabled_even_after_an_error():
    gc.disable()
    with pytest.raises(RuntimeError), collector_paused():
        raise RuntimeError("inside")
    assert not gc.isenabled()
    gc.enable()
    with pytest.raises(RuntimeError), collector_paused():
        raise RuntimeError("inside")
    assert gc.isenabled()


def test_a_tensor_command_keeps_its_signature_and_runs_with_the_collector_back():
    def command(path: Path, *, repeats: int = 3) -> tuple[bool, int]:
        return gc.isenabled(), repeats

    wrapped = tensor_command(command)

    assert inspect.signature(wrapped) == inspect.signature(command)
    assert wrapped(Path("x"), repeats=5) == (True, 5)


def test_torch_is_imported_by_the_wrapper_only_when_the_command_runs():
    code = (
        "import sys\n"
        "from pipeline.common.collector import tensor_command\n"
        "command = tensor_command(lambda: 'torch' in sys.modules)\n"
        "print('torch' in sys.modules, command())\n"
    )
    assert printed_by(code) == ["False", "True"]


def test_a_skipped_optional_import_fails_inside_the_block_only():
    code = (
        "import sys\n"
        "from pipeline.common.collector import optional_imports_skipped\n"
        "import json\n"
        "with optional_imports_skipped(('colorsys', 'json')):\n"
        "    try:\n"
        "        import colorsys\n"
        "        print('imported')\n"
        "    except ImportError:\n"
        "        print('skipped')\n"
        "    import json  # imported before the block: untouched\n"
        "print('colorsys' in sys.modules)\n"
        "import colorsys\n"
        "print(colorsys.__name__)\n"
    )
    assert printed_by(code) == ["skipped", "False", "colorsys"]


def test_a_tensor_command_starts_without_wandb_and_can_still_import_it():
    """timm imports wandb when it is installed; a command that needs torch leaves it out of its
    start, and the W&B tracker imports it when a run asks for it."""
    pytest.importorskip("wandb")
    code = (
        "import sys\n"
        "from pipeline.common.collector import tensor_command\n"
        "command = tensor_command(lambda: 'wandb' in sys.modules)\n"
        "print(command())\n"
        "import wandb\n"
        "print(hasattr(wandb, 'init'))\n"
    )
    assert printed_by(code) == ["False", "True"]
