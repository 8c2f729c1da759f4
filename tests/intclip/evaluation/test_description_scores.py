"""Descriptions measured and chosen on val (issue 23): `intclip-train score-descriptions` and
`select-descriptions`, on images whose features are generated from known attributes.

Each class of the generated squares has four candidate descriptions: two name its colour (its
attribute) and two are decoys about something else. The val images' cached features are then
written from the attributes themselves: an image's feature is the sum, over its classes'
attribute-naming descriptions, of the part of each description's text embedding that no other
candidate shares. So a description naming the true attribute has cosine exactly proportional to
"the image shows my class", and a decoy has cosine zero with every image: the known answer is
certain whatever the random CLIP's text tower does, and the commands must find it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from intclip.cli.demo import asked_colour
from intclip.data.feature_cache import read_header, write_features
from intclip.data.synthetic import make_synthetic_intentonomy
from intclip.evaluation.description_scores import (
    ClassScores,
    DescriptionScore,
    DescriptionScoresReport,
    choose_descriptions,
    ranked,
)
from pipeline.clip.loading import load_clip
from pipeline.descriptions.format import read_descriptions
from pipeline.embeddings.cache import encode_texts
from testkit.cli import ok
from testkit.descriptions import descriptions_document
from testkit.fake_openai import FakeOpenAI, descriptions_json
from testkit.squares import TAXONOMY, cli
from testkit.tiny_clip import TINY_CLIP_CONFIGS, save_random_clip

DECOYS = {
    "red": ("spoon", "kettle"),
    "yellow-green": ("bicycle", "ladder"),
    "cyan": ("violin", "teapot"),
    "violet": ("anchor", "lantern"),
}


def candidates_of(colour: str) -> list[str]:
    """Decoy, attribute, decoy, attribute: the order alone cannot find the right ones."""
    first, second = DECOYS[colour]
    return [
        f"An old {first} lies on a wooden kitchen table.",
        f"A photo showing a {colour} square on a dark background.",
        f"A shiny {second} hangs on a white wall at home.",
        f"One bright {colour} square stands out in the dark picture.",
    ]


def attribute_llm(request: dict) -> str:
    return descriptions_json(candidates_of(asked_colour(request["messages"])))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict:
    """Generated squares, four candidates per class from the LLM, a random tiny CLIP, and the
    val features rewritten from the attributes (see the module docstring)."""
    root = tmp_path_factory.mktemp("descriptions")
    dataset = make_synthetic_intentonomy(root / "data", sizes=(16, 40, 16), image_size=32)
    taxonomy = root / "squares.yaml"
    taxonomy.write_text(TAXONOMY)
    env = {**os.environ, "INTCLIP_CACHE_DIR": str(root / "cache")}
    with FakeOpenAI(attribute_llm) as server:
        cli("intclip-prompts", "build", "--taxonomy", taxonomy, "--model", "fake",
            "--base-url", server.base_url, "--candidates", 4, env=env)  # fmt: skip
    weights = save_random_clip(TINY_CLIP_CONFIGS["vit"], root / "tiny-vit.safetensors", seed=0)
    descriptions = root / "squares.descriptions.json"
    config = root / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data": dataset.data_config(taxonomy=str(taxonomy), num_workers=0),
                "clip": {
                    "name": str(TINY_CLIP_CONFIGS["vit"]),
                    "pretrained": str(weights),
                    "descriptions": str(descriptions),
                },
                "device": "cpu",
            }
        )
    )
    done = cli("intclip-train", "features", "--config", config, "--split", "val", env=env)
    features = Path(done.stdout.strip())
    _features_from_attributes(features, descriptions, weights, root)
    return {
        "root": root,
        "config": config,
        "descriptions": descriptions,
        "cache": root / "cache",
        "dataset": dataset,
        "features": features,
    }


def _features_from_attributes(
    features: Path, descriptions: Path, weights: Path, root: Path
) -> None:
    """Rewrite the val features: each image the sum of the unshared parts of its classes'
    attribute-naming descriptions, scaled so that each such description's dot product with
    the image is 1 per class it names and 0 otherwise; every decoy's is 0."""
    document = read_descriptions(descriptions)
    texts = [text for entry in document.classes for text in entry.descriptions]
    clip = load_clip(str(TINY_CLIP_CONFIGS["vit"]), weights)
    embeddings = encode_texts(clip, texts).double()
    unshared = []
    for row in range(len(texts)):
        others = torch.cat([embeddings[:row], embeddings[row + 1 :]]).T  # [D, texts - 1]
        basis, _ = torch.linalg.qr(others)
        rest = embeddings[row] - basis @ (basis.T @ embeddings[row])
        unshared.append(rest / rest.dot(embeddings[row]))
    per_text = torch.stack(unshared)
    header = read_header(features)
    labels = _val_labels(header.paths, root)
    names_attribute = [("square" in text) for text in texts]
    owner = [label for label, entry in enumerate(document.classes) for _ in entry.descriptions]
    pooled = torch.zeros(len(header.paths), embeddings.shape[1], dtype=torch.float64)
    for image, image_labels in enumerate(labels):
        for row, (label, named) in enumerate(zip(owner, names_attribute, strict=True)):
            if named and label in image_labels:
                pooled[image] += per_text[row]
    write_features(features, header, pooled.float(), None)


def _val_labels(paths: list[str], root: Path) -> list[set[int]]:
    """The labels of each val image, from the generated annotation file."""
    document = json.loads((root / "data" / "synthetic_val.json").read_text())
    by_image = {a["image_id"]: set(a["category_ids"]) for a in document["annotations"]}
    return [by_image[Path(path).stem] for path in paths]


@pytest.fixture
def cache(workspace, monkeypatch) -> Path:
    monkeypatch.setenv("INTCLIP_CACHE_DIR", str(workspace["cache"]))
    return workspace["cache"]


@pytest.fixture
def descriptions(workspace, tmp_path) -> Path:
    """A copy of the candidates file for the test to rewrite."""
    path = tmp_path / "squares.descriptions.json"
    shutil.copy(workspace["descriptions"], path)
    return path


def one_line_error(result) -> str:
    code, out, err = result
    assert code == 2 and out == "", (code, err)
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err


# ---- the known answer ----


def test_descriptions_naming_the_attribute_beat_the_decoys_and_are_kept(
    train_cli, workspace, cache, descriptions
):
    ok(train_cli(
        "select-descriptions", "--config", workspace["config"], "--descriptions", descriptions,
        "--keep", 2,
    ))  # fmt: skip
    document = read_descriptions(descriptions)
    for entry in document.classes:
        named = [c for c in entry.candidates if "square" in c.text]
        decoys = [c for c in entry.candidates if "square" not in c.text]
        assert min(c.val_ap for c in named) > max(c.val_ap for c in decoys), entry.id
        assert min(c.val_ap for c in named) == 100.0
        assert [c.kept for c in entry.candidates] == [False, True, False, True]
        assert entry.descriptions == [c.text for c in named]
    chosen = document.selection
    assert chosen.split == "val" and chosen.keep == 2 and chosen.images == 40
    assert chosen.features_key == workspace["features"].stem  # the features' cache key
    # the lock: the LLM side keeps it as it is, and embeds the kept two
    code, _, err = train_cli("select-descriptions", "--config", workspace["config"],
                             "--descriptions", descriptions, "--keep", 2)  # fmt: skip
    assert code == 0, err
    assert read_descriptions(descriptions) == document  # choosing again: the same choice


def test_a_reviewers_edit_survives_the_choice_and_a_chosen_file_can_be_marked(
    train_cli, prompts_cli, workspace, cache, descriptions
):
    """The edit mark vouches for every candidate a reviewer left: choosing among them on val
    keeps it valid, and a reviewer can mark an edit of a file already chosen from."""
    edited = candidates_of("red")
    edited[0] = "A worn spoon rests on a wooden kitchen table."
    data = json.loads(descriptions.read_text())
    data["classes"][0]["descriptions"] = edited
    descriptions.write_text(json.dumps(data))
    source = "the LLM's first decoy, reworded by a reviewer"
    ok(prompts_cli("mark-edited", data["classes"][0]["id"], "--descriptions", descriptions,
                   "--from", source))  # fmt: skip
    ok(train_cli("select-descriptions", "--config", workspace["config"], "--descriptions",
                 descriptions, "--keep", 2))  # fmt: skip
    document = read_descriptions(descriptions)
    first = document.classes[0]
    assert [c.text for c in first.candidates] == edited and first.edited.source == source
    assert first.descriptions == [edited[1], edited[3]]
    assert document.edit_problems() == [] and document.rule_problems() == []

    data = json.loads(descriptions.read_text())
    second = data["classes"][1]
    reworded = "A photo showing a yellow-green square on a black background."
    second["candidates"][1]["text"] = second["descriptions"][0] = reworded
    descriptions.write_text(json.dumps(data))
    assert read_descriptions(descriptions).edit_problems()  # unmarked: refused by --check
    ok(prompts_cli("mark-edited", second["id"], "--descriptions", descriptions,
                   "--from", "a kept candidate reworded"))  # fmt: skip
    document = read_descriptions(descriptions)
    assert document.edit_problems() == [] and document.classes[1].descriptions[0] == reworded


def test_the_report_ranks_every_description_and_compares_names_and_random_words(
    train_cli, prompts_cli, workspace, cache, descriptions
):
    ok(prompts_cli("build", "--taxonomy", workspace["root"] / "squares.yaml", "--out",
                   descriptions, "--control", "random-words"))  # fmt: skip
    control = descriptions.with_name("squares.random-words.descriptions.json")
    out = ok(train_cli(
        "score-descriptions", "--config", workspace["config"], "--descriptions", descriptions,
        "--control", control,
    ))  # fmt: skip
    for row in ("descriptions", "class names", "random words", "best other class"):
        assert row in out
    report = DescriptionScoresReport.model_validate_json(
        descriptions.with_name("squares.description-scores.json").read_text()
    )
    assert [row.name for row in report.rows] == ["descriptions", "class names", "random words"]
    assert report.rows[2].source == str(control)
    assert report.split == "val" and report.images == 40
    for scores in report.classes:
        by_rank = sorted(scores.descriptions, key=lambda d: d.rank)
        assert all("square" in d.text for d in by_rank[:2]), scores.id
        assert all(d.ap == 100.0 for d in by_rank[:2])
        assert set(scores.texts) == {"descriptions", "class names", "random words"}
        assert scores.best_other is not None and scores.best_other.id != scores.id
        for item in scores.descriptions:
            assert item.margin == pytest.approx(item.ap - scores.best_other.ap, abs=1e-3)
    assert report.rows[0].mean_description_ap < report.rows[0].mAP  # decoys pull it down

    as_json = json.loads(ok(train_cli(
        "score-descriptions", "--config", workspace["config"], "--descriptions", descriptions,
        "--json",
    )))  # fmt: skip
    assert [row["name"] for row in as_json["rows"]] == ["descriptions", "class names"]


@pytest.mark.parametrize("made", ["removed", "unreadable"])
def test_test_labels_are_never_read(train_cli, workspace, cache, descriptions, tmp_path, made):
    """The config names a test split that cannot be read: choosing and scoring still work."""
    test = tmp_path / "test.json"
    if made == "unreadable":
        test.mkdir()  # opening it fails even for root, whom file modes do not stop
    settings = yaml.safe_load(workspace["config"].read_text())
    settings["data"]["test"] = str(test)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(settings))
    code, _, err = train_cli("check-data", "--config", config)
    assert code == 2 and "test.json" in err  # the test split really cannot be read
    ok(train_cli("select-descriptions", "--config", config, "--descriptions", descriptions,
                 "--keep", 2))  # fmt: skip
    assert read_descriptions(descriptions).selection.split == "val"
    ok(train_cli("score-descriptions", "--config", config, "--descriptions", descriptions))


# ---- ties and bad input ----


def _report(aps: list[list[float | None]]) -> DescriptionScoresReport:
    return DescriptionScoresReport(
        images=10, features_key="b" * 64, clip="RN101 openai", descriptions="d.json", rows=[],
        classes=[
            ClassScores(
                label=label, id=f"class{label}", positives=3, texts={}, best_other=None,
                descriptions=[
                    DescriptionScore(text=f"t{label}-{i}", ap=ap, rank=rank, margin=None)
                    for i, (ap, rank) in enumerate(zip(row, ranked(row), strict=True))
                ],
            )
            for label, row in enumerate(aps)
        ],
    )  # fmt: skip


def test_ties_go_to_the_earlier_candidate_and_a_class_without_positives_keeps_its_first():
    document = descriptions_document(
        {"class0": ["t0-0", "t0-1", "t0-2", "t0-3"], "class1": ["t1-0", "t1-1", "t1-2", "t1-3"]}
    )
    assert ranked([50.0, 70.0, 70.0, None]) == [3, 1, 2, None]
    chosen = choose_descriptions(document, _report([[50.0, 70.0, 70.0, 60.0], [None] * 4]), 2)
    assert chosen.classes[0].descriptions == ["t0-1", "t0-2"]
    assert chosen.classes[1].descriptions == ["t1-0", "t1-1"]
    assert chosen.classes[1].candidates[0].val_ap is None


def test_bad_input_is_one_line(train_cli, prompts_cli, workspace, cache, descriptions, tmp_path):
    config = workspace["config"]
    err = one_line_error(train_cli("select-descriptions", "--config", config,
                                   "--descriptions", descriptions, "--keep", 4))  # fmt: skip
    assert "--keep 4" in err and "4 candidates" in err
    err = one_line_error(train_cli("score-descriptions", "--config", config,
                                   "--descriptions", tmp_path / "missing.json"))  # fmt: skip
    assert "missing.json" in err
    other = tmp_path / "other.descriptions.json"
    data = json.loads(descriptions.read_text())
    data["classes"][1]["id"] = "blue_square"
    other.write_text(json.dumps(data))
    err = one_line_error(train_cli("score-descriptions", "--config", config,
                                   "--descriptions", descriptions, "--control", other))  # fmt: skip
    assert "other.descriptions.json" in err and "blue_square" in err

    settings = yaml.safe_load(config.read_text())
    settings["clip"] = {**settings["clip"], "descriptions": None, "embeddings": "e.safetensors"}
    embeddings_config = tmp_path / "embeddings.yaml"
    embeddings_config.write_text(yaml.safe_dump(settings))
    err = one_line_error(train_cli("score-descriptions", "--config", embeddings_config))
    assert "--descriptions" in err

    ok(prompts_cli("build", "--taxonomy", workspace["root"] / "squares.yaml", "--out",
                   descriptions, "--control", "random-words"))  # fmt: skip
    control = descriptions.with_name("squares.random-words.descriptions.json")
    err = one_line_error(train_cli("select-descriptions", "--config", config,
                                   "--descriptions", control, "--keep", 1))  # fmt: skip
    assert "random-words control" in err
