"""Every command's `--help` of both CLIs shows each option's help, default and install hint as
written: Typer renders `[...]` as rich markup, so an unescaped `[default: ...]` or `'.[local]'`
would silently lose its brackets."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest
import typer

import intclip.cli.main
import pipeline.cli.main
from testkit.paths import ROOT

APPS = {"intclip-prompts": pipeline.cli.main.app, "intclip-train": intclip.cli.main.app}


def commands(group: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and group below `group` (typer's own click, so duck-typed)."""
    found = []
    for name, command in group.commands.items():
        found.append((*prefix, name))
        if hasattr(command, "commands"):
            found += commands(command, (*prefix, name))
    return found


def command_of(cli: str, path: tuple[str, ...]) -> Any:
    command = typer.main.get_command(APPS[cli])
    for name in path:
        command = command.commands[name]
    return command


CASES = [(cli, path) for cli, app in APPS.items() for path in commands(typer.main.get_command(app))]


def flat(text: str) -> str:
    """The rendered help without its box drawing and line wrapping."""
    for border in "│╭╮╰╯─":
        text = text.replace(border, " ")
    return " ".join(text.split())


def written(help_text: str) -> str:
    """An option's help as its author wrote it, before markup escaping."""
    return " ".join(help_text.replace("\\[", "[").split())


@pytest.mark.parametrize(("cli", "path"), CASES, ids=[" ".join(p) for _, p in CASES])
def test_help_shows_every_option_as_written(cli, path, prompts_cli, train_cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")
    run = prompts_cli if cli == "intclip-prompts" else train_cli
    code, out, err = run(*path, "--help")
    assert code == 0, err
    shown = flat(out)
    command = command_of(cli, path)
    if command.help:
        assert written(command.help.split("\n\n")[0]) in shown
    options = [param for param in command.params if param.param_type_name == "option"]
    for param in options:
        if param.help:
            assert written(param.help) in shown, param.name
        if param.show_default and not param.is_flag:
            default = param.default
            if default is not None and not callable(default):
                text = (
                    ", ".join(map(str, default)) if isinstance(default, list | tuple) else default
                )
                assert f"[default: {text}]" in shown, param.name


@pytest.mark.parametrize("cli", sorted(APPS))
def test_version_is_the_projects(cli, prompts_cli, train_cli):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    run = prompts_cli if cli == "intclip-prompts" else train_cli
    code, out, _ = run("--version")
    assert code == 0 and out == f"intclip {project['project']['version']}\n"
