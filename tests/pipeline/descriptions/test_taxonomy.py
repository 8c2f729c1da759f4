"""Taxonomy validation through `intclip-prompts validate` and `load_taxonomy`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.descriptions.taxonomy import TaxonomyError, load_taxonomy
from testkit.paths import INTENTONOMY as INTENTONOMY_DATA
from testkit.paths import ROOT, TOY_TAXONOMY

INTENTONOMY_YAML = ROOT / "prompts" / "intentonomy.yaml"

VALID = TOY_TAXONOMY


@pytest.fixture
def run_validate(prompts_cli):
    """Write `text` as a taxonomy and validate it: (exit code, stdout, stderr, path)."""

    def run(tmp_path: Path, text: str) -> tuple[int, str, str, Path]:
        path = tmp_path / "toy.yaml"
        path.write_text(text)
        return (*prompts_cli("validate", "--taxonomy", path), path)

    return run


def test_valid_taxonomy_prints_counts(tmp_path, run_validate):
    code, out, err, _ = run_validate(tmp_path, VALID)
    assert code == 0, err
    assert "coarse: 2" in out and "fine: 3" in out


@pytest.mark.parametrize(
    ("edit", "line", "expected"),
    [
        (("name: Cats", "name: ''"), 8, "node 'cats': 'name' must not be empty"),
        (("id: dogs", "id: Dogs"), 10, "'id' must be a lowercase slug"),
        (("label: 1", "label: 1\n        colour: red"), 13, "node 'dogs': unknown key 'colour'"),
        (("        label: 2\n", ""), 16, "node 'beach': 'label' is required on 'fine' nodes"),
        (
            ("label: 2", "label: 1"),
            16,
            "node 'beach': label 1 is already used by 'dogs'; labels must be exactly 0..2, "
            "missing [2]",
        ),
        (
            ("label: 2", "label: 7"),
            18,
            "node 'beach': label 7 is out of range for 3 leaves; labels must be exactly 0..2, "
            "missing [2]",
        ),
        (("label: 2", "label: two"), 18, "node 'beach': 'label': Input should be a valid integer"),
        (("label: 2", "label: -1"), 18, "node 'beach': 'label': Input should be greater than"),
        (
            ("id: beach", "id: cats"),
            16,
            "node 'cats': id appears under two parents: 'animals' and 'places'",
        ),
        (("id: dogs", "id: cats"), 10, "node 'cats': id appears twice under one parent: 'animals'"),
        (
            ("    name: Places\n", "    name: Places\n    label: 9\n"),
            15,
            "node 'places': 'label' is only allowed on 'fine' nodes",
        ),
        (("name: Cats", "name: Cats\n        name: Kittens"), 9, "duplicate key 'name'"),
        (
            ("levels: [coarse, fine]", "levels: [coarse, fine]\ncolour: red"),
            3,
            "unknown key 'colour'",
        ),
        (("nodes:", "nodes: [\n"), 5, "invalid YAML"),
    ],
)
def test_each_error_is_one_located_line(tmp_path, run_validate, edit, line, expected):
    old, new = edit
    assert old in VALID
    code, out, err, path = run_validate(tmp_path, VALID.replace(old, new, 1))
    assert code == 2
    lines = [entry for entry in err.splitlines() if entry]
    matching = [entry for entry in lines if expected in entry]
    assert matching, err
    prefix = f"error: {path}:{line}: " if line else f"error: {path}"
    assert matching[0].startswith(prefix), matching[0]
    assert "Traceback" not in err and out == ""


def test_leaf_too_shallow_and_inner_node_without_children(tmp_path, run_validate):
    text = """\
name: toy
levels: [coarse, middle, fine]
nodes:
  - id: animals
    name: Animals
    children:
      - id: cats
        name: Cats
        label: 0
  - id: empty
    name: Empty
    children: []
"""
    code, _, err, path = run_validate(tmp_path, text)
    assert code == 2
    assert f"{path}:7: node 'cats': is a 'middle' node and needs children down to 'fine'" in err
    assert f"{path}:10: node 'empty': is a 'coarse' node and needs children down to 'fine'" in err


def test_leaf_too_deep(tmp_path, run_validate):
    text = VALID.replace(
        "        label: 2\n",
        "        label: 2\n        children:\n          - id: sand\n            name: Sand\n",
    )
    code, _, err, path = run_validate(tmp_path, text)
    assert code == 2
    assert f"{path}:20: node 'sand': is deeper than the last level 'fine'" in err


def test_all_errors_reported_at_once(tmp_path, run_validate):
    text = VALID.replace("name: Cats", "name: ''").replace("label: 2", "label: 1")
    code, _, err, _ = run_validate(tmp_path, text)
    assert code == 2
    # pydantic problems come first; the tree rules run once the nodes themselves are valid
    assert err.count("error: ") == 1
    fixed = VALID.replace("label: 2", "label: 1").replace("id: dogs", "id: cats")
    code, _, err, _ = run_validate(tmp_path, fixed)
    assert code == 2 and err.count("error: ") == 2  # twice an id; label 1 twice, so 2 missing
    assert "node 'beach': label 1 is already used by 'cats'; labels must be exactly" in err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "the file is empty"),
        ("- just\n- a list\n", "must be a mapping"),
        ("name: toy\nlevels: [fine]\nnodes: []\n", "'nodes' must not be empty"),
    ],
)
def test_malformed_documents(tmp_path, run_validate, text, expected):
    code, _, err, _ = run_validate(tmp_path, text)
    assert code == 2 and expected in err


def test_missing_file_is_one_line(tmp_path, prompts_cli):
    code, _, err = prompts_cli("validate", "--taxonomy", tmp_path / "nope.yaml")
    assert code == 2
    assert err.count("\n") == 1 and "nope.yaml" in err and "taxonomy not found" in err


def test_console_script_exit_code():
    result = subprocess.run(
        [str(Path(sys.executable).parent / "intclip-prompts"), "validate", "--taxonomy", "x.yaml"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: x.yaml") and "Traceback" not in result.stderr


def test_taxonomy_error_lists_problems(tmp_path):
    path = tmp_path / "toy.yaml"
    path.write_text(VALID.replace("label: 2", "label: 0").replace("id: dogs", "id: cats"))
    with pytest.raises(TaxonomyError) as info:
        load_taxonomy(path)
    assert len(info.value.problems) == 2  # an id twice; label 0 twice, so label 2 missing
    assert (
        "label 0 is already used by 'cats'; labels must be exactly 0..2, missing [2]"
        in (info.value.problems[1])
    )


def test_fine_classes_carry_path_and_siblings(tmp_path):
    path = tmp_path / "toy.yaml"
    path.write_text(VALID)
    taxonomy = load_taxonomy(path)
    assert [c.id for c in taxonomy.classes] == ["cats", "dogs", "beach"]
    cats = taxonomy.classes[0]
    assert cats.path == ("Animals", "Cats") and cats.siblings == ("Dogs",)
    assert taxonomy.classes[2].siblings == ()
    assert taxonomy.counts() == {"coarse": 2, "fine": 3}
    assert [c.id for c in taxonomy.leaves_under("animals")] == ["cats", "dogs"]


def test_hash_ignores_comments_but_not_content(tmp_path):
    first, second, third = (tmp_path / n for n in ("a.yaml", "b.yaml", "c.yaml"))
    first.write_text(VALID)
    second.write_text("# a comment\n" + VALID.replace("[coarse, fine]", "[ coarse,  fine ]"))
    third.write_text(VALID.replace("name: Dogs", "name: Puppies"))
    hashes = [load_taxonomy(p).sha256 for p in (first, second, third)]
    assert hashes[0] == hashes[1] != hashes[2]


# --- the real Intentonomy taxonomy, checked against the committed fixtures ---------------------


def test_intentonomy_counts_and_labels():
    taxonomy = load_taxonomy(INTENTONOMY_YAML)
    assert taxonomy.counts() == {"coarse": 9, "middle": 15, "fine": 28}
    categories = json.loads((INTENTONOMY_DATA / "categories.json").read_text())["categories"]
    assert [(c.label, c.dataset_name) for c in taxonomy.classes] == [
        (c["id"], c["name"]) for c in categories
    ]


def test_intentonomy_tree_matches_hleg():
    """Each middle and coarse node groups exactly the fine ids HLEG's consistent tree groups."""
    taxonomy = load_taxonomy(INTENTONOMY_YAML)
    hleg = json.loads((INTENTONOMY_DATA / "hleg_tree.json").read_text())
    hleg_middles = {frozenset(ids) for ids in hleg["middle_to_fine"].values()}
    hleg_coarse = {
        frozenset(f for m in middles for f in hleg["middle_to_fine"][str(m)])
        for middles in hleg["coarse_to_middle"].values()
    }
    groups: dict[int, dict[str, set[int]]] = {0: {}, 1: {}}
    for fine in taxonomy.classes:
        for depth in (0, 1):
            groups[depth].setdefault(fine.path_ids[depth], set()).add(fine.label)
    assert {frozenset(g) for g in groups[1].values()} == hleg_middles
    assert {frozenset(g) for g in groups[0].values()} == hleg_coarse


def test_intentonomy_names_follow_published_semantic_labels():
    taxonomy = load_taxonomy(INTENTONOMY_YAML)
    published = json.loads((INTENTONOMY_DATA / "semantic_labels.json").read_text())
    middles = {m["id"]: m["name"] for m in published["15_upper_categoris"]}
    coarse = {c["id"]: c["name"] for c in published["9_upper_upper_categoris"]}
    inconsistent = {5, 24}  # the published file puts "Occupational success" under 3 parents
    for fine, entry in zip(taxonomy.classes, published["28_categories"], strict=True):
        assert fine.path[1] == middles[entry["upper_category"]] or fine.label == 5
        if fine.label not in inconsistent:
            assert fine.path[0] == coarse[entry["upper_upper_category"]]
    assert taxonomy.classes[5].path[:2] == ("Financial and occupational success", "Finances")


def test_a_label_gap_names_the_node_and_its_line(tmp_path, run_validate):
    """Labels 0, 1, 3 over three leaves: the gap at 2 is reported on the leaf that caused it."""
    code, _, err, path = run_validate(tmp_path, VALID.replace("label: 2", "label: 3"))
    assert code == 2
    (line,) = err.splitlines()
    assert line == (
        f"error: {path}:18: node 'beach': label 3 is out of range for 3 leaves; "
        "labels must be exactly 0..2, missing [2]"
    )


@pytest.mark.parametrize(
    ("edit", "line", "shown"),
    [
        (("name: Cats", 'name: "Cats\\e[2J\\e[31m"'), 8, "\\x1b"),
        (("name: Dogs", 'name: "Dogs\\nerror: all is well"'), 11, "\\n"),
        (("name: Beach", 'name: "Beach\\u202eevil"'), 17, "\\u202e"),
        (("levels: [coarse, fine]", 'levels: [coarse, "fine\\a"]'), 2, "\\x07"),
    ],
)
def test_control_characters_in_names_are_refused_and_shown_escaped(
    tmp_path, run_validate, edit, line, shown
):
    code, out, err, path = run_validate(tmp_path, VALID.replace(*edit, 1))
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and "\x1b" not in err and "\x07" not in err, err
    assert err.startswith(f"error: {path}:{line}: "), err
    assert err.endswith(f"must not contain control characters (found {shown})\n"), err


def test_a_class_with_many_siblings_loads_in_linear_memory(tmp_path, run_validate):
    """5,000 classes under one parent: each class used to hold its own tuple of the 4,999
    other names (quadratic: about 200 MB here, 0.86 GB and 26 s for 10,000)."""
    import tracemalloc

    fine = [{"id": f"c{n}", "name": f"Class {n}", "label": n} for n in range(5000)]
    text = json.dumps({"name": "big", "levels": ["coarse", "fine"],
                       "nodes": [{"id": "all", "name": "All", "children": fine}]})  # fmt: skip
    tracemalloc.start()
    try:
        code, out, err, path = run_validate(tmp_path, text)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert code == 0, err
    assert "fine: 5000" in out
    assert peak < 60e6, peak
    classes = load_taxonomy(path).classes
    assert classes[7].family is classes[4000].family
    assert len(classes[7].siblings) == 4999 and "Class 7" not in classes[7].siblings


def test_many_missing_labels_are_counted_not_listed(tmp_path, run_validate):
    fine = [{"id": f"c{n}", "name": f"Class {n}"} for n in range(500)]
    text = json.dumps({"name": "big", "levels": ["coarse", "fine"],
                       "nodes": [{"id": "all", "name": "All", "children": fine}]})  # fmt: skip
    code, _, err, _ = run_validate(tmp_path, text)
    assert code == 2 and err.count("\n") == 500
    assert err.splitlines()[0].endswith(
        "'label' is required on 'fine' nodes; labels must be exactly 0..499, missing "
        "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, ... (500 in all)]"
    )
