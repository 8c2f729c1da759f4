"""`python -m bench`: one tiny measure through the command, and its bad input."""

from __future__ import annotations

import pytest

from bench.__main__ import main


def run_bench(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as stopped:
        main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return stopped.value.code, captured.out, captured.err


def test_one_tiny_measure_prints_both_sides_and_writes_the_report(tmp_path, capsys):
    report = tmp_path / "BENCHMARKS.md"
    code, out, _ = run_bench(
        capsys, "--only", "annotation_index", "--quick", "--set", "annotation_index.images=50",
        "--set", "annotation_index.lookups=200", "--out", report, "--write",
    )  # fmt: skip
    assert code == 0
    line = next(line for line in out.splitlines() if "200 lookups in 50 entries" in line)
    assert "index (parse included)" in line and "re-parse per item" in line and "ratio" in line
    text = report.read_text()
    assert "## Machine" in text and "cores" in text and "torch " in text and "UTC" in text
    assert "| annotation_index | 200 lookups in 50 entries |" in text
    assert "'images': 50" in text


def test_a_quick_run_writes_no_report_unless_asked(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "BENCHMARKS.md").write_text("the committed numbers\n")
    args = ("--only", "annotation_index", "--quick", "--set", "annotation_index.images=20",
            "--set", "annotation_index.lookups=20")  # fmt: skip
    code, out, _ = run_bench(capsys, *args)
    assert code == 0 and "writes no report (BENCHMARKS.md unchanged; --write writes it)" in out
    assert (tmp_path / "BENCHMARKS.md").read_text() == "the committed numbers\n"
    code, out, _ = run_bench(capsys, *args, "--write")
    assert code == 0 and "wrote BENCHMARKS.md" in out
    assert (
        "| annotation_index | 20 lookups in 20 entries |"
        in (tmp_path / "BENCHMARKS.md").read_text()
    )


def test_list_names_every_measure_of_the_issues(capsys):
    code, out, _ = run_bench(capsys, "--list")
    names = [line.split(":")[0] for line in out.splitlines()]
    assert code == 0 and names == [
        "image_pipeline", "loader_vs_step", "cli_start", "build_concurrency",
        "annotation_index", "text_embedding", "train_step", "prompts_step", "features_epoch",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--only", "nope"], "--only nope: no such measure"),
        (["--only", "cli_start", "--set", "cli_start.nope=1"], "is not a setting"),
        (["--only", "cli_start", "--set", "repeats=1"], "expected NAME.KEY=VALUE"),
        (["--only", "cli_start", "--set", "cli_start.repeats=[1"], "not valid YAML"),
    ],
)
def test_bad_selection_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    report = tmp_path / "BENCHMARKS.md"
    code, _, err = run_bench(capsys, *args, "--out", report)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not report.exists()


def test_prompts_step_compares_both_text_modes_on_the_same_model(capsys, tmp_path):
    code, out, _ = run_bench(
        capsys, "--only", "prompts_step", "--quick", "--out", str(tmp_path / "b.md")
    )
    assert code == 0 and "168 prompts of 16 contexts" in out
    assert "prompts " in out and "cached " in out and "ratio" in out


def test_image_pipeline_labels_what_the_fast_path_reads(capsys, tmp_path):
    report = tmp_path / "b.md"
    code, out, _ = run_bench(capsys, "--only", "image_pipeline", "--quick", "--out", report)
    assert code == 0
    for originals in ("regular originals (400-1080 px)", "full-size originals (1500-3000 px)"):
        for kind in ("train", "eval"):
            assert f"{kind}, {originals}: fast on originals " in out
            assert f"{kind}, {originals}: fast on prepared 366 px " in out
        assert f"prepare once, {originals}: prepare --resize-short-side 366 " in out
    assert out.count("| torchvision on originals ") == 10


@pytest.mark.slow
def test_features_epoch_runs_both_epochs_and_both_extraction_sides(capsys, tmp_path):
    code, out, _ = run_bench(
        capsys, "--only", "features_epoch", "--quick", "--out", str(tmp_path / "b.md")
    )
    assert code == 0
    assert "cached features " in out and "images through the tower, " in out
    assert "intclip-train features " in out and "one eval pass through the tower " in out
    assert out.count("ratio") == 2
