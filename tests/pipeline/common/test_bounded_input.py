"""Every reader of a user's file: a regular file or nothing (a FIFO would block it forever),
text and numbers of bounded size, and each key of a JSON object once, whatever command reads
it; refused in one line naming the file (and line), with nothing changed on disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from intclip.data.synthetic import make_synthetic_intentonomy
from pipeline.descriptions.format import write_descriptions
from testkit.descriptions import descriptions_document
from testkit.disk import assert_refused, fifo, snapshot
from testkit.paths import TOY_TAXONOMY

DIGITS = "9" * 5000
TOO_LONG = "a number of 5,000 characters; numbers may have at most 100"


def check_data_config(folder: Path) -> tuple[Path, Path]:
    """A config for `check-data` over a small generated dataset, and its train annotations."""
    dataset = make_synthetic_intentonomy(folder / "data", sizes=(3, 2, 0), image_size=16)
    config = folder / "config.yaml"
    data = dataset.data_config(test=None)
    config.write_text(yaml.safe_dump({"data": data, "clip": {"embeddings": "e.safetensors"}}))
    return config, dataset.train


def descriptions_file(path: Path) -> Path:
    write_descriptions(path, descriptions_document({"cats": ["A cat."], "dogs": ["A dog."]}))
    return path


@pytest.mark.parametrize(
    ("cli", "command", "what"),
    [
        ("prompts", ["validate", "--taxonomy", "{F}"], "taxonomy"),
        ("prompts", ["diff", "{F}", "{F}"], "descriptions file"),
        ("prompts", ["build", "--taxonomy", "{T}", "--model", "m", "--templates", "{D}"],
         "prompt template"),
        ("train", ["check-data", "--config", "{F}"], "config file"),
        ("train", ["score", "--val-scores", "{F}", "--val-labels", "{F}", "--test-scores",
                   "{F}", "--test-labels", "{F}"], ""),
    ],
)  # fmt: skip
def test_a_fifo_is_refused_before_it_is_opened(
    prompts_cli, train_cli, tmp_path, monkeypatch, cli, command, what
):
    monkeypatch.setenv("INTCLIP_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "work"
    (folder / "templates").mkdir(parents=True)
    taxonomy = folder / "toy.yaml"
    taxonomy.write_text(TOY_TAXONOMY)
    (folder / "templates" / "user.txt").write_text("$class_name\n")
    path = folder / "templates" / "system.txt" if "--templates" in command else folder / "fifo"
    with fifo(path) as watch:
        before = snapshot(tmp_path)
        args = [a.format(F=path, T=taxonomy, D=folder / "templates") for a in command]
        result = (prompts_cli if cli == "prompts" else train_cli)(*args)
        assert not watch.opened
        assert snapshot(tmp_path) == before
    reading = f"cannot read {what}" if what else "cannot read"
    assert_refused(result, 2, f"error: {path}: {reading} (not a regular file: a FIFO)")


def test_a_device_or_a_directory_is_refused_too(prompts_cli, tmp_path):
    result = prompts_cli("validate", "--taxonomy", tmp_path)
    assert_refused(
        result, 2, f"error: {tmp_path}: cannot read taxonomy (not a regular file: a directory)"
    )


def test_a_file_too_large_is_refused_unread(train_cli, tmp_path):
    config = tmp_path / "huge.yaml"
    with config.open("wb") as handle:
        handle.truncate(17 << 20)  # sparse: no disk space, no time
    assert_refused(
        train_cli("check-data", "--config", config), 2,
        f"error: {config}: config file larger than 16 MiB",
    )  # fmt: skip


def test_a_huge_integer_in_annotations(train_cli, tmp_path):
    config, train = check_data_config(tmp_path)
    lines = train.read_text().splitlines()
    row = next(n for n, text in enumerate(lines) if '"id": "train00001"' in text)
    lines[row] = lines[row].replace('"train00001"', DIGITS)
    train.write_text("\n".join(lines) + "\n")
    before = snapshot(tmp_path)
    result = train_cli("check-data", "--config", config)
    assert_refused(result, 2, f"error: {train}:{row + 1}: {TOO_LONG}")
    assert snapshot(tmp_path) == before


def test_a_huge_integer_in_a_descriptions_file(prompts_cli, tmp_path):
    path = descriptions_file(tmp_path / "d.json")
    lines = path.read_text().splitlines()
    row = next(n for n, text in enumerate(lines) if '"label": 1' in text)
    lines[row] = lines[row].replace("1", DIGITS)
    path.write_text("\n".join(lines) + "\n")
    before = snapshot(tmp_path)
    assert_refused(prompts_cli("diff", path, path), 2, f"error: {path}:{row + 1}: {TOO_LONG}")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_a_huge_integer_in_a_download_manifest(train_cli, tmp_path, suffix):
    manifest = tmp_path / f"manifest{suffix}"
    if suffix == ".jsonl":
        rows = [{"image": name, "url": f"http://127.0.0.1:9/{name}"} for name in ("a", "b")]
        text = "\n".join(json.dumps(row) for row in rows)
        manifest.write_text(text[:-1] + f', "n": {DIGITS}}}\n')
        where = f"{manifest}:2:1"
    else:
        manifest.write_text(f'{{"images": [\n{{"id": {DIGITS}, "filename": "a.jpg",\n'
                            '"unsplash_url": "http://127.0.0.1:9/a.jpg"}]}\n')  # fmt: skip
        where = f"{manifest}:2"
    before = snapshot(tmp_path)
    result = train_cli("download", "--annotations", manifest, "--image-root", tmp_path / "img")
    assert_refused(result, 2, f"error: {where}: {TOO_LONG}")
    assert snapshot(tmp_path) == before


def test_a_huge_integer_in_a_config(train_cli, tmp_path):
    config, _ = check_data_config(tmp_path)
    config.write_text(config.read_text() + f"seed: {DIGITS}\n")
    line = config.read_text().count("\n")
    assert_refused(
        train_cli("check-data", "--config", config), 2, f"error: {config}:{line}: {TOO_LONG}"
    )


def test_duplicate_keys_in_a_descriptions_file_are_refused_by_every_reader(
    prompts_cli, tmp_path, monkeypatch
):
    monkeypatch.setenv("INTCLIP_CACHE_DIR", str(tmp_path / "cache"))
    path = descriptions_file(tmp_path / "toy.descriptions.json")
    lines = path.read_text().splitlines()
    row = next(n for n, text in enumerate(lines) if '"id": "dogs"' in text)
    lines.insert(row + 1, '      "id": "cats",')
    path.write_text("\n".join(lines) + "\n")
    (tmp_path / "toy.yaml").write_text(TOY_TAXONOMY)
    before = snapshot(tmp_path)
    expected = f"error: {path}:{row + 2}: duplicate key 'id'"
    assert_refused(prompts_cli("diff", path, path), 2, expected)
    assert_refused(
        prompts_cli("build", "--taxonomy", tmp_path / "toy.yaml", "--check"), 2, expected
    )
    assert snapshot(tmp_path) == before


def test_duplicate_keys_in_annotations(train_cli, tmp_path):
    config, train = check_data_config(tmp_path)
    document = json.loads(train.read_text())
    text = json.dumps(document, indent=1).replace(
        '"image_id": "train00002"', '"image_id": "train00002",\n"image_id": "train00000"'
    )
    train.write_text(text)
    line = next(n for n, row in enumerate(text.splitlines(), 1) if row.startswith('"image_id"'))
    before = snapshot(tmp_path)
    result = train_cli("check-data", "--config", config)
    assert_refused(result, 2, f"error: {train}:{line}: duplicate key 'image_id'")
    assert snapshot(tmp_path) == before
