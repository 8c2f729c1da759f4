"""The last line of defence in both CLIs: an unexpected exception is one line and exit 70."""

from __future__ import annotations

import pytest

import intclip.training.config
import pipeline.cli.main
from pipeline.common.errors import EXIT_INTERNAL


def _explode(*_: object, **__: object) -> None:
    raise RuntimeError("something nobody foresaw\non two lines")


def test_prompts_bug_is_one_line_naming_the_command(prompts_cli, monkeypatch, tmp_path):
    monkeypatch.setattr(pipeline.cli.main, "load_taxonomy", _explode)
    code, out, err = prompts_cli("validate", "--taxonomy", tmp_path / "t.yaml")
    assert code == EXIT_INTERNAL == 70
    assert out == ""
    assert err == (
        "error: intclip-prompts validate failed unexpectedly (RuntimeError: something nobody "
        "foresaw on two lines); this is a bug: rerun with --debug for the traceback\n"
    )


def test_train_bug_is_one_line_naming_the_command(train_cli, monkeypatch, tmp_path):
    monkeypatch.setattr(intclip.training.config, "load_config", _explode)
    (tmp_path / "c.yaml").write_text("")  # a missing one is refused before load_config
    code, _, err = train_cli("check-data", "--config", tmp_path / "c.yaml")
    assert code == 70
    assert err.count("\n") == 1
    assert err.startswith("error: intclip-train check-data failed unexpectedly (RuntimeError")


@pytest.mark.parametrize("where", ["first", "last"])
def test_debug_shows_the_traceback(train_cli, monkeypatch, tmp_path, where):
    monkeypatch.setattr(intclip.training.config, "load_config", _explode)
    (tmp_path / "c.yaml").write_text("")
    args = ["check-data", "--config", tmp_path / "c.yaml"]
    code, _, err = train_cli(*(["--debug", *args] if where == "first" else [*args, "--debug"]))
    assert code == 70
    assert "Traceback (most recent call last)" in err
    assert "RuntimeError: something nobody foresaw" in err
    assert err.splitlines()[-1].startswith("error: intclip-train check-data failed unexpectedly")


def test_user_errors_do_not_reach_the_guard(train_cli, tmp_path):
    code, _, err = train_cli("check-data", "--config", tmp_path / "missing.yaml", "--debug")
    assert code == 2
    assert err == f"error: {tmp_path / 'missing.yaml'}: config file not found\n"
