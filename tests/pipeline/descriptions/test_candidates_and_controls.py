"""Issue 23 on the LLM side: `build --candidates N`, a file chosen on val kept as a lock, and the
random-words control of `build --control random-words`."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.descriptions.format import (
    Candidate,
    DescriptionsFile,
    Selection,
    read_descriptions,
    write_descriptions,
)

KEY = "a" * 64


def built(prompts_cli, taxonomy: Path, *args: object) -> Path:
    code, _, err = prompts_cli("build", "--taxonomy", taxonomy, "--model", "toy-llm", *args)
    assert code == 0, err
    return taxonomy.with_name("toy.descriptions.json")


def chosen_by_hand(document: DescriptionsFile, keep: int) -> DescriptionsFile:
    """What `intclip-train select-descriptions` writes, made here without images: the last
    `keep` candidates of each class kept, with made-up APs."""
    classes = []
    for entry in document.classes:
        count = len(entry.descriptions)
        candidates = [
            Candidate(text=text, val_ap=float(10 * index), kept=index >= count - keep)
            for index, text in enumerate(entry.descriptions)
        ]
        classes.append(
            entry.model_copy(
                update={
                    "candidates": candidates,
                    "descriptions": [c.text for c in candidates if c.kept],
                }
            )
        )
    selection = Selection(keep=keep, features_key=KEY, images=33, clip="RN101 openai")
    return DescriptionsFile.model_validate(
        {
            **document.model_dump(exclude={"classes"}),
            "classes": [entry.model_dump() for entry in classes],
            "selection": selection.model_dump(),
        }
    )


def one_error(result) -> str:
    code, _, err = result
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err


# ---- candidates and the choice as a lock ----


def test_candidates_ask_for_n_and_say_what_comes_next(project, prompts_cli, fake_openai):
    code, _, err = prompts_cli(
        "build", "--taxonomy", project, "--model", "toy-llm", "--candidates", 6
    )
    assert code == 0, err
    document = read_descriptions(project.with_name("toy.descriptions.json"))
    assert document.generator.params["num_descriptions"] == 6
    assert all(len(entry.descriptions) == 6 for entry in document.classes)
    assert "intclip-train select-descriptions" in err and "--keep K" in err
    assert fake_openai.request_count == 3


def test_candidates_and_another_count_are_refused(project, prompts_cli):
    both = ("--candidates", 6, "--num-descriptions", 3)
    err = one_error(prompts_cli("build", "--taxonomy", project, "--model", "m", *both))
    assert "--candidates" in err
    code, _, err = prompts_cli("build", "--taxonomy", project, "--candidates", 1)
    assert code == 2 and "--candidates" in err


def test_a_file_chosen_on_val_is_a_lock_and_only_a_rebuilt_class_needs_choosing_again(
    project, prompts_cli, fake_openai
):
    out = built(prompts_cli, project, "--candidates", 4)
    write_descriptions(out, chosen_by_hand(read_descriptions(out), keep=2))
    before = out.read_text()
    asked = fake_openai.request_count

    built(prompts_cli, project)  # every class up to date: nothing asked, nothing changed
    assert fake_openai.request_count == asked and out.read_text() == before
    code, out_text, err = prompts_cli("build", "--taxonomy", project, "--check")
    assert code == 0 and "up to date" in out_text, err

    project.write_text(project.read_text().replace("name: Beach", "name: Sandy beach"))
    built(prompts_cli, project)
    assert fake_openai.request_count == asked + 1  # the renamed class alone
    document = read_descriptions(out)
    beach = document.by_label()[2]
    assert beach.candidates is None and len(beach.descriptions) == 4
    assert document.selection is not None  # the others keep their choice
    assert [len(document.by_label()[label].descriptions) for label in (0, 1)] == [2, 2]
    code, _, err = prompts_cli("build", "--taxonomy", project, "--check")
    assert code == 1 and "class 2 'beach'" in err and "select-descriptions again" in err
    err = one_error(prompts_cli("embed", "--descriptions", out))
    assert "class 2 'beach'" in err and "select-descriptions again" in err


def test_descriptions_that_are_not_the_kept_candidates_are_refused_naming_the_class(
    project, prompts_cli
):
    out = built(prompts_cli, project, "--candidates", 4)
    write_descriptions(out, chosen_by_hand(read_descriptions(out), keep=2))
    chosen = out.read_text()
    data = json.loads(chosen)
    data["classes"][1]["descriptions"][0] = "A different sentence written by hand here."
    out.write_text(json.dumps(data))
    err = one_error(prompts_cli("build", "--taxonomy", project, "--check"))
    assert "class 1 'dogs'" in err and "kept candidates" in err

    data = json.loads(chosen)
    del data["selection"]
    out.write_text(json.dumps(data))
    err = one_error(prompts_cli("build", "--taxonomy", project, "--check"))
    assert "no selection block" in err


def test_diff_shows_the_val_ap_of_every_text_kept_or_dropped(project, prompts_cli, tmp_path):
    out = built(prompts_cli, project, "--candidates", 4)
    before = tmp_path / "before.json"
    before.write_text(out.read_text())
    write_descriptions(out, chosen_by_hand(read_descriptions(out), keep=2))
    code, text, _ = prompts_cli("diff", before, out)
    assert code == 1
    assert "selection: none -> best 2 per class by val AP over 33 images" in text
    dropped = [line for line in text.splitlines() if line.startswith("  - ")]
    assert len(dropped) == 6  # 2 of 4 dropped in each of 3 classes
    assert all("(not kept, val AP " in line for line in dropped)


def test_a_revised_class_leaves_its_candidates(project, prompts_cli, fake_openai):
    """`build --review` asks a flagged class again: its old candidates no longer describe it."""
    from pipeline.descriptions.build import BuildSettings, plan_build, revise_flagged
    from pipeline.descriptions.review import ClassReview
    from pipeline.descriptions.taxonomy import load_taxonomy
    from pipeline.descriptions.templates import default_template_dir, load_templates
    from pipeline.llm.client import LLMClient
    from pipeline.llm.settings import LLMSettings

    out = built(prompts_cli, project, "--candidates", 4)
    chosen = chosen_by_hand(read_descriptions(out), keep=2)
    tree = load_taxonomy(project)
    settings = BuildSettings(model="toy-llm", rules={"num_descriptions": 4})
    plan = plan_build(tree, load_templates(default_template_dir(project)), settings, chosen)
    review = ClassReview(
        label=0, id="cats", rank=2, margin=-0.1, nearest_other="dogs", near_duplicates=[],
        reasons=["nearer to dogs"],
    )  # fmt: skip
    client = LLMClient(
        LLMSettings(model="toy-llm", api_key="sk-test", base_url=fake_openai.base_url)
    )
    revised = revise_flagged(plan, chosen, [review], client).by_label()[0]
    assert revised.candidates is None and revised.revised_for == "dogs"


# ---- the random-words control ----


def test_random_words_control_has_the_shape_of_the_descriptions(project, prompts_cli):
    out = built(prompts_cli, project, "--num-descriptions", 3)
    code, text, err = prompts_cli(
        "build", "--taxonomy", project, "--control", "random-words", "--seed", 7
    )
    assert code == 0, err
    control_file = project.with_name("toy.random-words.descriptions.json")
    assert f"wrote {control_file}" in text
    source, control = read_descriptions(out), read_descriptions(control_file)
    assert control.control.kind == "random-words" and control.control.seed == 7
    assert control.generator.model == "random-words"
    assert [(e.label, e.id, e.path) for e in control.classes] == [
        (e.label, e.id, e.path) for e in source.classes
    ]
    for mine, theirs in zip(control.classes, source.classes, strict=True):
        assert len(mine.descriptions) == len(theirs.descriptions)
        for random_text, llm_text in zip(mine.descriptions, theirs.descriptions, strict=True):
            assert random_text.startswith(f"{theirs.path[-1]}, ") and random_text.endswith(".")
            assert len(random_text.split()) == len(llm_text.split())
    assert control.rule_problems() == []  # embed takes it as it is
    assert {t for e in control.classes for t in e.descriptions}.isdisjoint(
        t for e in source.classes for t in e.descriptions
    )

    first = control_file.read_text()
    prompts_cli("build", "--taxonomy", project, "--control", "random-words", "--seed", 7)
    assert control_file.read_text() == first  # seeded: the same file again
    prompts_cli("build", "--taxonomy", project, "--control", "random-words", "--seed", 8)
    assert control_file.read_text() != first


def test_the_control_of_a_chosen_file_has_its_kept_count(project, prompts_cli):
    out = built(prompts_cli, project, "--candidates", 4)
    write_descriptions(out, chosen_by_hand(read_descriptions(out), keep=2))
    code, _, err = prompts_cli("build", "--taxonomy", project, "--control", "random-words")
    assert code == 0, err
    control = read_descriptions(project.with_name("toy.random-words.descriptions.json"))
    assert all(len(entry.descriptions) == 2 for entry in control.classes)
    assert control.generator.params["num_descriptions"] == 2 and control.selection is None


def test_a_control_needs_its_descriptions_and_is_never_built_over(project, prompts_cli):
    err = one_error(prompts_cli("build", "--taxonomy", project, "--control", "random-words"))
    assert "toy.descriptions.json" in err and "build it first" in err
    built(prompts_cli, project, "--num-descriptions", 3)
    prompts_cli("build", "--taxonomy", project, "--control", "random-words")
    control_file = project.with_name("toy.random-words.descriptions.json")
    err = one_error(
        prompts_cli("build", "--taxonomy", project, "--model", "m", "--out", control_file)
    )
    assert "random-words control" in err
    err = one_error(
        prompts_cli(
            "build", "--taxonomy", project, "--out", control_file, "--control", "random-words"
        )
    )
    assert "is itself a random-words control" in err
    code, _, err = prompts_cli("build", "--taxonomy", project, "--control", "waffles")
    assert code == 2 and "--control" in err
