"""Click's usage mistakes in both CLIs: one `error:` line on stderr and exit 2, never click's
multi-line usage box; a NUL byte in any argument is refused before a command sees it."""

from __future__ import annotations

import pytest

import pipeline.cli.main

NUL = "bad\0path"


def assert_one_line(result, *words: str) -> None:
    code, out, err = result
    assert code == 2, err
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert "Usage:" not in err and "failed unexpectedly" not in err
    for word in words:
        assert word in err, err


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("validate", "--bogus"), ("No such option: --bogus", "'intclip-prompts validate --help'")),
        (("validate", "--taxonomy"),
         ("'--taxonomy' requires an argument", "'intclip-prompts validate --help'")),
        (("build", "--taxonomy", "t.yaml", "--concurrency", "zero"),
         ("Invalid value for '--concurrency'", "'intclip-prompts build --help'")),
        (("build", "--taxonomy", "t.yaml", "--concurrency", "0"), ("'--concurrency'",)),
        (("build", "--taxonomy", "t.yaml", "--response-format", "xml"),
         ("Invalid value for '--response-format'",)),
        (("diff", "old.json"), ("Missing argument 'new'",)),
        (("frobnicate",), ("No such command 'frobnicate'", "'intclip-prompts --help'")),
        (("cache", "verify"), ("Missing argument",)),
    ],
)  # fmt: skip
def test_prompts_usage_errors(prompts_cli, args, words):
    assert_one_line(prompts_cli(*args), *words)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("check-data",), ("Missing option '--config'", "'intclip-train check-data --help'")),
        (("run", "--config", "c.yaml", "--unknown"), ("No such option: --unknown",)),
        (("eval", "--run"), ("'--run' requires an argument", "'intclip-train eval --help'")),
        (("predict",), ("Missing",)),
        (("trian",), ("No such command 'trian'",)),
    ],
)
def test_train_usage_errors(train_cli, args, words):
    assert_one_line(train_cli(*args), *words)


@pytest.mark.parametrize(
    ("args", "where"),
    [
        (("validate", "--taxonomy", NUL), "'--taxonomy'"),
        (("validate", f"--taxonomy={NUL}"), "'--taxonomy'"),
        (("diff", "old.json", NUL), "argument 'bad\\x00path'"),
        (("build", "--taxonomy", NUL, "--model", "m"), "'--taxonomy'"),
    ],
)
def test_a_nul_byte_is_refused_before_any_command(prompts_cli, monkeypatch, args, where):
    def never(*_: object, **__: object) -> None:
        raise AssertionError("the command ran")

    monkeypatch.setattr(pipeline.cli.main, "load_taxonomy", never)
    monkeypatch.setattr(pipeline.cli.main, "read_descriptions", never)
    assert_one_line(prompts_cli(*args), f"Invalid value for {where}: contains a NUL byte")


def test_a_nul_byte_in_a_train_path(train_cli):
    assert_one_line(train_cli("eval", "--run", NUL), "'--run'", "NUL byte")


def test_no_arguments_show_the_help(prompts_cli):
    code, out, err = prompts_cli()
    assert code == 2 and "Usage: intclip-prompts" in out and err == ""


def test_a_command_that_fails_keeps_its_exit_code(prompts_cli, tmp_path):
    missing = tmp_path / "missing.yaml"
    code, out, err = prompts_cli("build", "--taxonomy", missing, "--check")
    assert (code, out) == (2, "") and err == f"error: {missing}: taxonomy not found\n"


def test_ctrl_c_exits_130(prompts_cli, monkeypatch):
    def interrupted(*_: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline.cli.main, "load_taxonomy", interrupted)
    code, _, err = prompts_cli("validate", "--taxonomy", "t.yaml")
    assert code == 130 and "failed unexpectedly" not in err


def test_end_of_input_is_one_line_not_the_crash_guard(prompts_cli, monkeypatch):
    def end_of_input(*_: object) -> None:
        raise EOFError

    monkeypatch.setattr(pipeline.cli.main, "load_taxonomy", end_of_input)
    code, _, err = prompts_cli("validate", "--taxonomy", "t.yaml")
    assert code == 1 and err.strip().startswith("error: aborted") and "\n" not in err.strip()


@pytest.mark.parametrize(
    ("cli", "args", "expected"),
    [
        ("prompts", ("review", "--descriptions", "d.json", "--min-margin", "nan"),
         "error: Invalid value for '--min-margin': nan is not a finite number (see "
         "'intclip-prompts review --help')"),
        ("prompts", ("review", "--descriptions", "d.json", "--duplicate-threshold", "inf"),
         "error: Invalid value for '--duplicate-threshold': inf is not a finite number (see "
         "'intclip-prompts review --help')"),
        ("prompts", ("cache", "verify", "x.safetensors", "--atol", "nan"),
         "error: Invalid value for '--atol': Input should be greater than or equal to 0 (see "
         "'intclip-prompts cache verify --help')"),
        ("train", ("eval", "--run", "r", "--threshold", "nan"),
         "error: Invalid value for '--threshold': Input should be less than or equal to 1 (see "
         "'intclip-train eval --help')"),
        ("train", ("prepare", "--images", "i", "--out", "o", "--resize-short-side", "9",
                   "--crop-scale-min", "nan"),
         "error: Invalid value for '--crop-scale-min': nan is not a finite number (see "
         "'intclip-train prepare --help')"),
        ("train", ("download", "--annotations", "a.json", "--image-root", "i", "--deadline",
                   "inf"), "error: --deadline: Input should be a finite number"),
        ("train", ("download", "--annotations", "a.json", "--image-root", "i", "--timeout",
                   "nan"), "error: --timeout: Input should be a finite number"),
    ],
)  # fmt: skip
def test_non_finite_numbers_are_refused_before_anything_runs(
    prompts_cli, train_cli, tmp_path, monkeypatch, cli, args, expected
):
    monkeypatch.chdir(tmp_path)
    code, out, err = (prompts_cli if cli == "prompts" else train_cli)(*args)
    assert (code, out, err) == (2, "", f"{expected}\n")
    assert list(tmp_path.iterdir()) == []
