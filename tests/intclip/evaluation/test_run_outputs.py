"""What evaluation and prediction leave behind, without a model: the subsets of the report, the
results table, and the prediction file that continues after a kill."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from intclip.evaluation.predict import ImagePrediction, Intent
from intclip.evaluation.prediction_files import PredictionFile, output_suffix
from intclip.evaluation.results_table import (
    FIRST_COLUMNS,
    RESULT_COLUMNS,
    append_result,
    config_hash,
    read_results,
)
from intclip.metrics.report import INTENTONOMY_TAXONOMY, build_report
from intclip.training.config import TrainConfig
from pipeline.common.errors import UserError
from pipeline.descriptions.taxonomy import load_taxonomy

NODES = [("fine", "cats"), ("fine", "dogs"), ("coarse", "animals")]


def scored(seed: int, classes: int = 28) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (rng.random((60, classes)) < 0.2).astype(np.int64)
    labels[0] = 1  # every class has a positive
    return labels, np.clip(labels * 0.6 + rng.random(labels.shape) * 0.5, 0, 1)


def intentonomy_ids() -> list[str]:
    return [fine.id for fine in load_taxonomy(INTENTONOMY_TAXONOMY).classes]


def test_subsets_are_reported_for_intentonomy_classes_only():
    val, test = scored(0), scored(1)
    real = build_report("test", val, test, intentonomy_ids(), None)
    assert set(real.fine.subset_f1) == {"easy", "medium", "hard", "object", "context", "other"}
    other = [f"class_{i}" for i in range(28)]
    assert build_report("test", val, test, other, None).fine.subset_f1 == {}
    shuffled = intentonomy_ids()[::-1]  # Intentonomy's classes in another order are not it
    assert build_report("test", val, test, shuffled, None).fine.subset_f1 == {}


def a_config(tmp_path: Path, lr: float = 0.01) -> TrainConfig:
    return TrainConfig.model_validate(
        {
            "data": {"image_root": str(tmp_path), "train": "t.json", "val": "v.json"},
            "clip": {"embeddings": "e.safetensors"},
            "optim": {"lr": lr},
        }
    )


def test_results_table_gains_one_row_per_evaluation(tmp_path):
    report = build_report("test", scored(0, 4), scored(1, 4), ["a", "b", "c", "d"], None)
    for run, lr in (("first", 0.01), ("second", 0.02)):
        (tmp_path / run).mkdir()
        table = append_result(tmp_path / run, report, a_config(tmp_path, lr))
    assert table == tmp_path / "results.csv"
    rows = pd.read_csv(table)
    assert tuple(rows.columns) == RESULT_COLUMNS
    assert list(rows["run"]) == ["first", "second"] and list(rows["split"]) == ["test"] * 2
    assert rows["macro_f1"][0] == pytest.approx(report.fine.macro_f1)
    assert rows["config_hash"][1] == config_hash(a_config(tmp_path, 0.02))
    assert rows["config_hash"][0] != rows["config_hash"][1]
    assert rows["mAP_voc"][0] == pytest.approx(report.fine.mAP_voc)
    assert rows["per_class_macro_f1"][0] == pytest.approx(report.per_class.macro_f1)
    assert rows["at_0.5_samples_f1"][0] == pytest.approx(report.at_half.samples_f1)


def test_a_table_of_the_first_columns_gains_the_new_ones_and_keeps_its_rows(tmp_path):
    old = tmp_path / "results.csv"
    old.write_text(",".join(FIRST_COLUMNS) + "\nNA,test,0.5,40.0,50.0,45.0,38.0,abc\n")
    (tmp_path / "new").mkdir()
    report = build_report("test", scored(0, 4), scored(1, 4), ["a", "b", "c", "d"], None)
    append_result(tmp_path / "new", report, a_config(tmp_path))
    rows = read_results(old)
    assert tuple(rows.columns) == RESULT_COLUMNS
    assert list(rows["run"]) == ["NA", "new"]  # a run named NA stays a name
    assert rows["macro_f1"][0] == 40.0 and pd.isna(rows["mAP_voc"][0])
    assert rows["mAP_voc"][1] == pytest.approx(report.fine.mAP_voc)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("run,split\nx,test\n", "are not those of a results table"),
        ('run,split,"\n', "not a readable results table"),
        (b"\xff\xfe\x00bad", "not a readable results table"),
    ],
)
def test_a_damaged_results_table_is_refused_in_one_line(tmp_path, content, expected):
    path = tmp_path / "results.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(UserError, match=expected) as info:
        read_results(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def prediction(image: str, error: str | None = None) -> ImagePrediction:
    if error is not None:
        return ImagePrediction(image, [], error)
    return ImagePrediction(
        image,
        [
            Intent("fine", "dogs", "Dogs", 0.7, True),
            Intent("fine", "cats", "Cats", 0.2, False),
            Intent("coarse", "animals", "Animals", 0.7, True),
        ],
    )


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_prediction_file_continues_after_a_partial_last_row(tmp_path, suffix):
    path = tmp_path / f"out{suffix}"
    table = PredictionFile(path, NODES)
    table.append([prediction("a.png"), prediction("b.png", "b.png: cannot read this image")])
    table.close()
    whole = path.read_bytes()
    path.write_bytes(whole + b'c.png,"",fi' if suffix == ".csv" else whole + b'{"image": "c.')
    table = PredictionFile(path, NODES)
    assert table.done == {"a.png", "b.png"}
    assert path.read_bytes() == whole  # the killed run's half row is gone
    table.append([prediction("c.png")])
    table.close()
    if suffix == ".csv":
        rows = pd.read_csv(path, keep_default_na=False)
        assert list(rows["image"]) == ["a.png", "b.png", "c.png"]
        assert list(rows.columns) == [
            "image",
            "error",
            "predicted",
            *(f"{a}:{b}" for a, b in NODES),
        ]
        assert (
            rows["predicted"][0] == "fine:dogs;coarse:animals"
            and float(rows["fine:cats"][2]) == 0.2
        )
        assert rows["error"][1] == "b.png: cannot read this image"
    else:
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        assert [line["image"] for line in lines] == ["a.png", "b.png", "c.png"]
        assert lines[1]["error"] and lines[1]["intents"] == [] and lines[0]["error"] is None


def test_a_prediction_file_of_other_classes_or_a_foreign_file_is_refused(tmp_path):
    csv_path = tmp_path / "out.csv"
    PredictionFile(csv_path, NODES).close()
    with pytest.raises(UserError, match="its columns are not this run's"):
        PredictionFile(csv_path, NODES[:2])
    jsonl = tmp_path / "out.jsonl"
    jsonl.write_text('{"image": "a.png"}\nnot json\n{"image": "b.png"}\n')
    with pytest.raises(UserError, match=r"out.jsonl:2: not a prediction row"):
        PredictionFile(jsonl, NODES)
    with pytest.raises(UserError, match=r"unknown format '.txt'; use .csv or .jsonl"):
        output_suffix(tmp_path / "out.txt")
    (tmp_path / "folder.csv").mkdir()
    with pytest.raises(UserError, match=r"folder.csv: cannot read \(not a regular file: a d"):
        PredictionFile(tmp_path / "folder.csv", NODES)


def test_predict_refuses_an_unknown_output_suffix_before_loading_a_model(train_cli, tmp_path):
    code, out, err = train_cli(
        "predict", "--run", tmp_path / "no-run", tmp_path / "a.png", "--output", tmp_path / "p.txt"
    )
    assert code == 2 and out == "" and err.count("\n") == 1
    assert f"--output {tmp_path / 'p.txt'}: unknown format '.txt'; use .csv or .jsonl" in err


def _append_rows(folder: Path, run: str, start, count: int) -> None:
    report = build_report("test", scored(0, 4), scored(1, 4), ["a", "b", "c", "d"], None)
    start.wait()
    for _ in range(count):
        append_result(folder / run, report, a_config(folder))


def test_results_appended_by_concurrent_processes_are_all_kept(tmp_path):
    """Without the lock, processes that read the table at once each write back their own
    version, and all but one lose their rows."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    start = context.Event()
    workers = [
        context.Process(target=_append_rows, args=(tmp_path, f"run{n}", start, 5)) for n in range(6)
    ]
    for worker in workers:
        worker.start()
    start.set()
    for worker in workers:
        worker.join(timeout=120)
    assert [worker.exitcode for worker in workers] == [0] * 6
    rows = read_results(tmp_path / "results.csv")
    assert sorted(rows["run"].value_counts().items()) == [(f"run{n}", 5) for n in range(6)]
