"""`intclip-train score` through its entry point, on the real Intentonomy val/test labels.

The reference numbers are computed here without intclip's metrics: scikit-learn for the F1s
and its AP, and by hand (`independent_*`) for the per-class thresholds and both APs."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, f1_score

from testkit.cli import CliResult
from testkit.paths import INTENTONOMY, TOY_TAXONOMY

VAL_LABELS = INTENTONOMY / "val_label_vectors_intentonomy2020.npy"
TEST_LABELS = INTENTONOMY / "test_label_vectors_intentonomy2020.npy"
FIXTURE_VAL_SCORES = INTENTONOMY / "scores" / "val_scores.npy"
FIXTURE_TEST_SCORES = INTENTONOMY / "scores" / "test_scores.npy"
GRID = [step / 20 for step in range(1, 20)]
CONSOLE_SCRIPT = Path(sys.executable).parent / "intclip-train"


def noisy_logits(labels: np.ndarray, seed: int) -> np.ndarray:
    """Deterministic logits that rank positives higher, with enough noise for imperfect F1."""
    rng = np.random.default_rng(seed)
    return 2.0 * labels - 1.0 + rng.normal(0.0, 1.5, labels.shape)


def squash(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))


def score_args(
    val_scores: Path, val_labels: Path, test_scores: Path, test_labels: Path
) -> list[str | Path]:
    return [
        "score",
        "--val-scores",
        val_scores,
        "--val-labels",
        val_labels,
        "--test-scores",
        test_scores,
        "--test-labels",
        test_labels,
    ]


def save(path: Path, array: np.ndarray) -> Path:
    np.save(path, array, allow_pickle=True)
    return path


@pytest.fixture
def real_inputs(tmp_path: Path) -> dict[str, Path]:
    """Synthetic probabilities for the real val and test labels, keyed like `score_args`."""
    return {
        "val_scores": save(tmp_path / "val.npy", squash(noisy_logits(np.load(VAL_LABELS), 0))),
        "val_labels": VAL_LABELS,
        "test_scores": save(tmp_path / "test.npy", squash(noisy_logits(np.load(TEST_LABELS), 1))),
        "test_labels": TEST_LABELS,
    }


def flat(document: object, prefix: str = "") -> dict[str, object]:
    """A JSON document as {dotted key: leaf}, for `pytest.approx`."""
    if isinstance(document, dict | list):
        items = document.items() if isinstance(document, dict) else enumerate(document)
        return {k: v for key, value in items for k, v in flat(value, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): document}


def f1s(labels: np.ndarray, scores: np.ndarray, threshold: object) -> dict[str, float]:
    predictions = (scores > threshold).astype(int)
    return {
        f"{average}_f1": 100 * f1_score(labels, predictions, average=average, zero_division=0)
        for average in ("macro", "micro", "samples")
    }


def present(labels: np.ndarray) -> list[int]:
    return [c for c in range(labels.shape[1]) if labels[:, c].any()]


def mean_ap(labels: np.ndarray, scores: np.ndarray) -> float:
    return 100 * np.mean(
        [average_precision_score(labels[:, c], scores[:, c]) for c in present(labels)]
    )


def scikit_learn_protocol(
    val_labels: np.ndarray, val_scores: np.ndarray, test_labels: np.ndarray, test_scores: np.ndarray
) -> dict[str, object]:
    """The Intentonomy protocol written out directly with scikit-learn, as the reference; the
    per-class thresholds and VOC mAP by hand."""
    val_macro = [f1s(val_labels, val_scores, threshold)["macro_f1"] for threshold in GRID]
    threshold = GRID[val_macro.index(max(val_macro))]
    val = f1s(val_labels, val_scores, threshold) | {
        "mAP": mean_ap(val_labels, val_scores),
        "mAP_voc": independent_voc_map(val_labels, val_scores),
    }
    test = f1s(test_labels, test_scores, threshold) | {
        "mAP": mean_ap(test_labels, test_scores),
        "mAP_voc": independent_voc_map(test_labels, test_scores),
    }
    per_class = independent_class_thresholds(val_labels, val_scores)
    return {
        "threshold": threshold,
        **test,
        **{f"val_{key}": value for key, value in val.items()},
        "per_class_thresholds": per_class,
        "per_class": f1s(test_labels, test_scores, np.array(per_class)),
        "at_0.5": f1s(test_labels, test_scores, 0.5),
    }


def class_f1(labels: np.ndarray, predicted: np.ndarray) -> float:
    """F1 of one class from its counts; 0 when it has neither positives nor predictions."""
    true_positives = int(np.sum((labels == 1) & predicted))
    wrong = int(np.sum((labels == 0) & predicted)) + int(np.sum((labels == 1) & ~predicted))
    return 0.0 if true_positives == 0 else 2 * true_positives / (2 * true_positives + wrong)


def independent_class_thresholds(labels: np.ndarray, scores: np.ndarray) -> list[float]:
    """Per class, the lowest grid value with the highest F1 of that class."""
    chosen = []
    for c in range(labels.shape[1]):
        best, best_f1 = GRID[0], -1.0
        for threshold in GRID:
            value = class_f1(labels[:, c], scores[:, c] > threshold)
            if value > best_f1:
                best, best_f1 = threshold, value
        chosen.append(best)
    return chosen


def independent_voc_ap(labels: np.ndarray, scores: np.ndarray) -> float:
    """VOC's all-point AP by its definition: for each rank where a positive is found, the best
    precision at that recall or beyond, times the recall it adds (1 / positives)."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])  # stable: ties keep their order
    hits = [labels[i] == 1 for i in order]
    precisions = [sum(hits[: k + 1]) / (k + 1) for k in range(len(hits))]
    positives = sum(hits)
    total = 0.0
    for k, hit in enumerate(hits):
        if hit:
            total += max(precisions[k:]) / positives
    return 100 * total


def independent_voc_map(labels: np.ndarray, scores: np.ndarray) -> float:
    return float(np.mean([independent_voc_ap(labels[:, c], scores[:, c]) for c in present(labels)]))


def independent_sklearn_ap(labels: np.ndarray, scores: np.ndarray) -> float:
    """scikit-learn's AP by hand: precision at each distinct score (ties one step), times the
    recall it adds."""
    total, found, seen = 0.0, 0, 0
    positives = int(labels.sum())
    for value in sorted(set(scores.tolist()), reverse=True):
        at = scores == value
        seen += int(at.sum())
        gained = int(labels[at].sum())
        found += gained
        total += (gained / positives) * (found / seen)
    return 100 * total


def test_json_agrees_with_scikit_learn_on_real_labels(
    train_cli: Callable[..., CliResult], real_inputs: dict[str, Path]
) -> None:
    code, out, err = train_cli(*score_args(**real_inputs), "--json")
    assert (code, err) == (0, "")
    reported = json.loads(out)
    expected = scikit_learn_protocol(
        np.load(VAL_LABELS),
        np.load(real_inputs["val_scores"]),
        np.load(TEST_LABELS),
        np.load(real_inputs["test_scores"]),
    )
    assert set(reported) == set(expected)
    assert flat(reported) == pytest.approx(flat(expected))
    assert 0.05 <= reported["threshold"] <= 0.95


def test_real_28_class_matrices_give_every_row_as_an_independent_implementation(
    train_cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    """The committed 28-class score matrices (tests/fixtures/intentonomy/README.md): global,
    per-class and 0.5 rows and both mAPs, each against the implementation in this file."""
    val_labels, test_labels = np.load(VAL_LABELS), np.load(TEST_LABELS)
    val_scores = np.load(FIXTURE_VAL_SCORES).astype(np.float64)
    test_scores = np.load(FIXTURE_TEST_SCORES).astype(np.float64)
    args = score_args(FIXTURE_VAL_SCORES, VAL_LABELS, FIXTURE_TEST_SCORES, TEST_LABELS)
    code, out, err = train_cli(*args, "--json")
    assert (code, err) == (0, "")
    reported = json.loads(out)

    thresholds = independent_class_thresholds(val_labels, val_scores)
    assert reported["per_class_thresholds"] == thresholds
    assert len(set(thresholds)) > 3  # the classes really differ
    expected_rows = {
        "per_class": np.array(thresholds),
        "at_0.5": 0.5,
    }
    for key, threshold in expected_rows.items():
        predicted = test_scores > threshold
        per_class = [class_f1(test_labels[:, c], predicted[:, c]) for c in range(28)]
        assert reported[key]["macro_f1"] == pytest.approx(100 * np.mean(per_class)), key
        assert set(reported[key]) == {"macro_f1", "micro_f1", "samples_f1"}
    assert reported["per_class"]["macro_f1"] > reported["macro_f1"] > reported["at_0.5"]["macro_f1"]
    for prefix, labels, scores in (
        ("", test_labels, test_scores),
        ("val_", val_labels, val_scores),
    ):
        voc = [independent_voc_ap(labels[:, c], scores[:, c]) for c in present(labels)]
        plain = [independent_sklearn_ap(labels[:, c], scores[:, c]) for c in present(labels)]
        assert reported[f"{prefix}mAP_voc"] == pytest.approx(np.mean(voc))
        assert reported[f"{prefix}mAP"] == pytest.approx(np.mean(plain))
        assert reported[f"{prefix}mAP_voc"] > reported[f"{prefix}mAP"]

    code, table, _ = train_cli(*args)
    assert code == 0
    rows = {line.split("│")[1].strip(): line for line in table.splitlines() if "│" in line}
    for name in ("fine", "fine @ per class", "fine @ 0.5", "middle", "coarse"):
        assert name in rows, name
    assert f"{reported['at_0.5']['macro_f1']:.2f}" in rows["fine @ 0.5"]
    assert f"{reported['mAP_voc']:.2f}" in rows["fine"]
    assert "hard classes" in table and "threshold" in table  # subsets and the per-class table


def test_table_shows_the_same_numbers(
    train_cli: Callable[..., CliResult], real_inputs: dict[str, Path]
) -> None:
    _, out, _ = train_cli(*score_args(**real_inputs), "--json")
    reported = json.loads(out)
    code, table, _ = train_cli(*score_args(**real_inputs))
    assert code == 0
    assert f"threshold {reported['threshold']}, chosen on val" in table
    rows = {line.split("│")[1].strip(): line for line in table.splitlines() if "│" in line}
    for key in ("macro_f1", "samples_f1", "mAP", "mAP_voc"):
        assert f"{reported[key]:.2f}" in rows["fine"]
        assert f"{reported['val_' + key]:.2f}" in rows["val"]


def test_name_appends_the_row_eval_writes_for_the_same_matrices(
    train_cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    from intclip.evaluation.results_table import RESULT_COLUMNS, report_row
    from intclip.metrics.report import build_report, score_classes

    args = score_args(FIXTURE_VAL_SCORES, VAL_LABELS, FIXTURE_TEST_SCORES, TEST_LABELS)
    results = tmp_path / "runs" / "results.csv"
    for name in ("method-a", "method-b"):
        code, _, err = train_cli(*args, "--name", name, "--results", results)
        assert (code, err) == (0, "")
    table = pd.read_csv(results)
    assert list(table["run"]) == ["method-a", "method-b"] and tuple(table.columns) == RESULT_COLUMNS
    ids, taxonomy = score_classes(None, 28)
    val = (np.load(VAL_LABELS), np.load(FIXTURE_VAL_SCORES).astype(np.float64))
    test = (np.load(TEST_LABELS), np.load(FIXTURE_TEST_SCORES).astype(np.float64))
    eval_row = report_row("method-a", build_report("test", val, test, ids, taxonomy))
    written = table.iloc[0].to_dict()
    for column in RESULT_COLUMNS:
        if column in ("config_hash", "statistic", "seeds"):
            assert pd.isna(written[column]), column  # no config: score rows have no hash
        elif column in ("run", "split"):
            assert written[column] == eval_row[column]
        else:
            assert written[column] == pytest.approx(eval_row[column]), column


def test_taxonomy_must_name_as_many_classes_as_the_matrices(
    train_cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    paths = write_small_inputs(tmp_path)
    toy = tmp_path / "toy.yaml"
    toy.write_text(TOY_TAXONOMY)
    code, _, err = train_cli(*score_args(**paths), "--taxonomy", toy)
    assert code == 2 and err == f"error: {toy}: 3 classes, but the score matrices have 4\n"
    small = write_small_inputs(tmp_path, val_classes=3, test_classes=3)
    code, out, _ = train_cli(*score_args(**small), "--taxonomy", toy)
    assert code == 0 and "│ coarse" in out and "beach" in out


def test_sigmoid_flag_scores_logits_like_their_probabilities(
    train_cli: Callable[..., CliResult], real_inputs: dict[str, Path], tmp_path: Path
) -> None:
    val_logits = save(tmp_path / "val_logits.npy", noisy_logits(np.load(VAL_LABELS), 0))
    test_logits = save(tmp_path / "test_logits.npy", noisy_logits(np.load(TEST_LABELS), 1))
    logit_args = score_args(val_logits, VAL_LABELS, test_logits, TEST_LABELS)

    code, _, err = train_cli(*logit_args)
    assert code == 2
    assert "pass --sigmoid" in err

    _, from_logits, _ = train_cli(*logit_args, "--sigmoid", "--json")
    _, from_probabilities, _ = train_cli(*score_args(**real_inputs), "--json")
    assert flat(json.loads(from_logits)) == pytest.approx(flat(json.loads(from_probabilities)))


def test_val_class_without_positives_warns_and_is_left_out_of_map(
    train_cli: Callable[..., CliResult], real_inputs: dict[str, Path], tmp_path: Path
) -> None:
    val_labels = np.load(VAL_LABELS)
    val_labels[:, 25] = 0.0
    real_inputs["val_labels"] = save(tmp_path / "val_labels_no_25.npy", val_labels)
    code, out, err = train_cli(*score_args(**real_inputs), "--json")
    assert code == 0
    assert err.startswith("warning: ")
    assert "val_labels_no_25.npy: classes 25 have no positive label" in err
    present = [c for c in range(28) if c != 25]
    val_scores = np.load(real_inputs["val_scores"])
    expected_map = 100 * np.mean(
        [average_precision_score(val_labels[:, c], val_scores[:, c]) for c in present]
    )
    assert json.loads(out)["val_mAP"] == pytest.approx(expected_map)


def test_installed_console_script_runs_and_fails_cleanly(
    train_cli: Callable[..., CliResult], real_inputs: dict[str, Path]
) -> None:
    args = [CONSOLE_SCRIPT, *score_args(**real_inputs), "--json"]
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    _, in_process, _ = train_cli(*score_args(**real_inputs), "--json")
    assert json.loads(done.stdout) == json.loads(in_process)

    real_inputs["val_scores"] = Path("no/such/scores.npy")
    args = [CONSOLE_SCRIPT, *score_args(**real_inputs)]
    failed = subprocess.run(args, capture_output=True, text=True, check=False)
    assert failed.returncode == 2
    assert failed.stderr.splitlines() == [
        "error: no/such/scores.npy: cannot read (No such file or directory)"
    ]


def small_split(images: int, classes: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(images)
    labels = (rng.random((images, classes)) < 0.4).astype(np.float64)
    labels[0] = 1.0
    return rng.random((images, classes)), labels


def npy_bytes(array: np.ndarray) -> bytes:
    """The bytes `np.save` writes, to cut or corrupt."""
    buffer = BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def npz_archive(path: Path) -> None:
    with path.open("wb") as handle:
        np.savez(handle, scores=small_split(20)[0])


def with_value(array: np.ndarray, value: float) -> np.ndarray:
    changed = array.copy()
    changed[3, 2] = value
    return changed


WriteInput = Callable[[Path], object]


def array_input(array: np.ndarray) -> WriteInput:
    return lambda path: save(path, array)


def bytes_input(data: bytes) -> WriteInput:
    return lambda path: path.write_bytes(data)


def terabyte_header(path: Path) -> None:
    """A .npy whose header claims 8 TB of float64 and holds 16 bytes (issue 12)."""
    with path.open("wb") as handle:
        np.lib.format.write_array_header_1_0(
            handle, {"descr": "<f8", "fortran_order": False, "shape": (1_000_000, 1_000_000)}
        )
        handle.write(b"\0" * 16)


VAL_SCORES, VAL_TRUTH = small_split(20)
TEST_SCORES, TEST_TRUTH = small_split(30)

BAD_INPUTS = [
    pytest.param("val_scores", None, "cannot read (No such file", id="missing"),
    pytest.param("val_scores", bytes_input(b"0.1,0.2\n"), "not a .npy file", id="text"),
    pytest.param("val_scores", npz_archive, "not a .npy file", id="npz"),
    pytest.param(
        "val_scores", bytes_input(npy_bytes(VAL_SCORES)[:60]), "corrupt .npy header", id="cut-head"
    ),
    pytest.param("val_scores", bytes_input(npy_bytes(VAL_SCORES)[:-8]), "truncated", id="cut-data"),
    pytest.param(
        "val_scores",
        terabyte_header,
        "header claims shape (1000000, 1000000) (8,000,000,000,000 bytes) but the file holds 16",
        id="terabytes",
    ),
    pytest.param(
        "test_scores",
        array_input(TEST_SCORES.astype(object)),
        "holds Python objects",
        id="object",
    ),
    pytest.param(
        "test_labels", array_input(TEST_TRUTH.astype(str)), "dtype <U32 is not numeric", id="str"
    ),
    pytest.param("val_scores", array_input(VAL_SCORES[:, 0]), "expected a 2-D", id="1-d"),
    pytest.param("val_scores", array_input(VAL_SCORES[None]), "expected a 2-D", id="3-d"),
    pytest.param("val_labels", array_input(VAL_TRUTH[:0]), "empty array", id="empty"),
    pytest.param(
        "val_scores", array_input(VAL_SCORES[:-1]), "scores and labels must match", id="rows"
    ),
    pytest.param(
        "test_scores",
        array_input(TEST_SCORES[:, :1]),
        "scores and labels must match",
        id="columns",
    ),
    pytest.param(
        "test_labels",
        array_input(with_value(TEST_TRUTH, 0.5)),
        "labels must be 0 or 1, found 0.5 at row 3, class 2",
        id="soft-label",
    ),
    pytest.param(
        "val_labels", array_input(np.zeros_like(VAL_TRUTH)), "no positive label", id="no-positive"
    ),
    pytest.param(
        "val_scores",
        array_input(with_value(VAL_SCORES, np.nan)),
        "score nan at row 3, class 2 is not finite",
        id="nan",
    ),
    pytest.param(
        "test_scores",
        array_input(with_value(TEST_SCORES, np.inf)),
        "score inf at row 3, class 2 is not finite",
        id="inf",
    ),
    pytest.param(
        "test_scores",
        array_input(with_value(TEST_SCORES, 1.5)),
        "outside [0, 1]; pass --sigmoid",
        id="above-one",
    ),
]


def write_small_inputs(
    folder: Path, val_classes: int = 4, test_classes: int = 4
) -> dict[str, Path]:
    """Valid inputs keyed like `score_args`, keeping the first classes of each split."""
    arrays = {
        "val_scores": VAL_SCORES[:, :val_classes],
        "val_labels": VAL_TRUTH[:, :val_classes],
        "test_scores": TEST_SCORES[:, :test_classes],
        "test_labels": TEST_TRUTH[:, :test_classes],
    }
    return {role: save(folder / f"{role}.npy", array) for role, array in arrays.items()}


@pytest.mark.parametrize(("faulty", "write", "message"), BAD_INPUTS)
def test_bad_input_is_one_line_naming_the_file(
    train_cli: Callable[..., CliResult],
    tmp_path: Path,
    faulty: str,
    write: WriteInput | None,
    message: str,
) -> None:
    paths = write_small_inputs(tmp_path)
    paths[faulty].unlink()
    if write is not None:
        write(paths[faulty])
    code, out, err = train_cli(*score_args(**paths))
    assert (code, out) == (2, "")
    assert len(err.splitlines()) == 1
    assert err.startswith(f"error: {paths[faulty]}")
    assert message in err


def test_val_and_test_class_counts_must_agree(
    train_cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    paths = write_small_inputs(tmp_path, test_classes=3)
    code, _, err = train_cli(*score_args(**paths))
    assert code == 2
    assert err == (
        f"error: {paths['val_scores']} has 4 classes but {paths['test_scores']} has 3; "
        "val and test must score the same classes\n"
    )


def test_a_single_class_is_not_multi_label(
    train_cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    paths = write_small_inputs(tmp_path, val_classes=1, test_classes=1)
    code, _, err = train_cli(*score_args(**paths))
    assert code == 2
    assert err == (
        f"error: {paths['val_labels']}: one class column; multi-label scoring needs at least 2\n"
    )
