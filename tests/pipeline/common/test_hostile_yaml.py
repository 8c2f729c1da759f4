"""Hostile YAML and JSON: every reader refuses it in bounded time and memory, with one line.

Taxonomies, training configs, `--set` values, descriptions files, annotation files and
manifests all go through `pipeline.common.safe_load`; each case checks the exit code, the one error
line naming the file, and that nothing was written.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.common.safe_load import UnsafeInput, load_json
from testkit.disk import snapshot
from testkit.paths import TOY_TAXONOMY

BOMB = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)
)
HOSTILE_YAML = {
    "alias bomb": (BOMB, 6, "more than 100,000 values once its aliases are expanded"),
    "deep nesting": ("a: " + "[" * 5000 + "]" * 5000 + "\n", 1, "nested deeper than 64 levels"),
    "python tag": ("a: !!python/object/apply:os.system [echo]\n", 1, "YAML tags such as"),
    "custom tag": ("a: !thing 1\n", 1, "YAML tags such as '!thing' are not allowed"),
    "complex key": ("? [a, b]\n: 1\n", 1, "complex keys (a list or mapping as a key)"),
    "duplicate key": ("a: 1\nb: 2\na: 3\n", 3, "duplicate key 'a'"),
    "self alias": ("a: &x [1, *x]\n", 1, "an alias refers to itself"),
}


def assert_one_line(result, path: Path, line: int | None, expected: str) -> None:
    code, out, err = result
    assert code == 2, err
    assert out == "" and err.count("\n") == 1, err
    prefix = f"error: {path}:{line}: " if line else f"error: {path}"
    assert err.startswith(prefix) and expected in err, err


YAML_READERS = {
    "taxonomy": [("prompts", "validate", "--taxonomy")],
    "training config": [
        ("train", "check-data", "--config"),
        ("train", "run", "--set", "output_dir=runs", "--config"),
    ],
}


@pytest.mark.parametrize("reader", YAML_READERS)
@pytest.mark.parametrize("case", HOSTILE_YAML)
def test_yaml_readers(prompts_cli, train_cli, tmp_path, monkeypatch, reader, case):
    monkeypatch.chdir(tmp_path)
    text, line, expected = HOSTILE_YAML[case]
    path = tmp_path / "file.yaml"
    path.write_text(text)
    before = snapshot(tmp_path)
    for cli, *args in YAML_READERS[reader]:
        result = (prompts_cli if cli == "prompts" else train_cli)(*args, path)
        assert_one_line(result, path, line, expected)
    assert snapshot(tmp_path) == before


def test_an_endless_config_file_is_refused_not_read_forever(train_cli):
    code, out, err = train_cli("check-data", "--config", "/dev/zero")
    assert (code, out) == (2, "")
    assert (
        err
        == "error: /dev/zero: cannot read config file (not a regular file: a character device)\n"
    )


def test_set_value(train_cli, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("seed: 1\n")
    code, out, err = train_cli("check-data", "--config", path, "--set", "seed=!!python/name:os")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith("error: --set 'seed=!!python/name:os':1: YAML tags such as")


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("binary", b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "config file is not UTF-8 text"),
        ("latin1", "seed: caf\xe9\n".encode("latin-1"), "config file is not UTF-8 text"),
        ("nul", b"seed: 1\x00\n", "invalid YAML: unacceptable character #x0000"),
        ("inf", b"data: {image_root: x, train: x, val: x}\nclip: {embeddings: x}\nseed: 1\n"
         b"optim: {lr: .inf}\n", "optim.lr: Input should be a finite number"),
    ],
)  # fmt: skip
def test_config_bytes(train_cli, tmp_path, name, text, expected):
    path = tmp_path / f"{name}.yaml"
    path.write_bytes(text)
    assert_one_line(train_cli("check-data", "--config", path), path, None, expected)


def test_descriptions_nested_too_deep(prompts_cli, tmp_path):
    path = tmp_path / "deep.descriptions.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    other = tmp_path / "other.json"
    other.write_text("{}")
    before = snapshot(tmp_path)
    result = prompts_cli("diff", path, other)
    assert_one_line(result, path, None, "nested deeper than 64 levels")
    assert snapshot(tmp_path) == before


def _data_config(tmp_path: Path, train: Path, fmt: str) -> Path:
    config = {
        "data": {"format": fmt, "image_root": str(tmp_path), "train": str(train),
                 "val": str(train), "num_classes": 3},
        "clip": {"embeddings": str(tmp_path / "e.safetensors")},
    }  # fmt: skip
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(config))
    return path


@pytest.mark.parametrize(
    ("name", "text", "fmt", "line", "expected"),
    [
        ("a.json", "[" * 100_000 + "]" * 100_000, "intentonomy", None, "nested deeper than 64"),
        ("a.json", '{"images": 5, "annotations": []}', "intentonomy", None,
         "images must be a list, not int"),
        ("a.json", '{"images": [], "annotations": null}', "intentonomy", None,
         "annotations must be a list, not NoneType"),
        ("a.json", '{"images": [{"id": 1, "filename": null}], "annotations": []}', "intentonomy",
         None, "images[0] needs an id and a filename (a string)"),
        ("m.jsonl", '{"image": "x.png", "labels": [0]}\n' + "[" * 5000 + "]" * 5000 + "\n",
         "manifest", 2, "nested deeper than 64"),
        ("m.jsonl", '[1, 2]\n', "manifest", 1, 'expected {"image": ..., "labels": [...]}'),
        ("m.csv", "image,labels\n" + "x" * 200_000 + ",0\n", "manifest", 2,
         "invalid CSV: field larger than field limit"),
    ],
)  # fmt: skip
def test_annotations_and_manifests(train_cli, tmp_path, name, text, fmt, line, expected):
    train = tmp_path / name
    train.write_text(text)
    config = _data_config(tmp_path, train, fmt)
    before = snapshot(tmp_path)
    assert_one_line(train_cli("check-data", "--config", config), train, line, expected)
    assert snapshot(tmp_path) == before


def test_csv_manifest_with_a_byte_order_mark_is_read(train_cli, tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    train = tmp_path / "m.csv"
    train.write_text("\ufeffimage,labels\nx.png,0;2\n", encoding="utf-8")
    code, out, err = train_cli("check-data", "--config", _data_config(tmp_path, train, "manifest"))
    assert code == 0, err
    assert "train: 1 entries, ok" in out


def test_the_toy_taxonomy_still_loads(prompts_cli, tmp_path):
    path = tmp_path / "toy.yaml"
    path.write_text(TOY_TAXONOMY + "extra_anchor_use: &x {a: 1}\n")
    code, _, err = prompts_cli("validate", "--taxonomy", path)
    assert code == 2 and "unknown key 'extra_anchor_use'" in err  # parsed, then validated


def test_json_depth_counts_containers_not_brackets_inside_strings():
    brackets = '"[[[[\\"{{{{ ]]"'
    fits = '{"s": ' + brackets + ', "x": ' + "[" * 63 + "]" * 63 + "}"
    assert load_json(fits, "fits.json")["s"] == '[[[["{{{{ ]]'
    too_deep = '{"s": ' + brackets + ', "x": ' + "[" * 64 + "]" * 64 + "}"
    with pytest.raises(UnsafeInput, match=r"deep\.json: nested deeper than 64 levels"):
        load_json(too_deep, "deep.json")
