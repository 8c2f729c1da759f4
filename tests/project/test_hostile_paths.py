"""A NUL byte in any path given on the command line is one line and exit 2, never the guard."""

from __future__ import annotations

import pytest

BAD = "bad\0path"


def assert_refused(result) -> None:
    code, out, err = result
    assert code == 2, err
    assert out == "" and "Traceback" not in err and "failed unexpectedly" not in err
    assert err.count("\n") == 1 and err.startswith("error: ") and "NUL byte" in err, err


@pytest.mark.parametrize(
    "args",
    [
        ("validate", "--taxonomy", BAD),
        ("diff", BAD, BAD),
        ("build", "--taxonomy", BAD, "--model", "m"),
        ("embed", "--descriptions", BAD, "--device", "cpu"),
        ("cache", "verify", BAD),
        ("zeroshot", "--embeddings", BAD, "--images", BAD),
    ],
)
def test_prompts_commands(prompts_cli, args):
    assert_refused(prompts_cli(*args))


@pytest.mark.parametrize(
    "args",
    [
        ("check-data", "--config", BAD),
        ("run", "--config", BAD),
        ("run", "--resume", BAD),
        ("eval", "--run", BAD),
        ("predict", "--run", BAD, BAD),
        ("score", "--val-scores", BAD, "--val-labels", BAD, "--test-scores", BAD,
         "--test-labels", BAD),
    ],
)  # fmt: skip
def test_train_commands(train_cli, args):
    assert_refused(train_cli(*args))


def test_a_nul_byte_in_a_config_path(train_cli, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(
        'data: {image_root: "img\\0x", train: t.json, val: v.json}\nclip: {embeddings: e}\n'
    )
    code, out, err = train_cli("check-data", "--config", config)
    assert (code, out) == (2, "")
    assert err == f"error: {config}: data: Value error, image_root contains a NUL byte\n"
