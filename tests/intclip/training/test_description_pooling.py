"""Per-description scoring in a trained model and re-ranking in evaluation (issue 23): a `text`
head with `model.class_text_pooling` trains and evaluates from its checkpoint; `eval
--rerank-top-k` and `eval.rerank_top_k` report the re-ranked scores beside the plain ones, the
same numbers the protocol gives on the re-ranked matrices."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from intclip.evaluation.results_table import read_results, results_path
from intclip.metrics.report import EvaluationReport, build_report
from intclip.metrics.rerank import rerank_top_k
from intclip.training.checkpoint import read_checkpoint_header
from intclip.training.config import load_config
from intclip.training.factory import build_components
from intclip.training.features import load_split_features
from pipeline.clip.loading import tensor_sha256
from pipeline.embeddings.cache import load_class_embeddings
from pipeline.embeddings.pooling import description_similarity
from testkit.cli import ok
from testkit.squares import recipe_config


def reranked_by_hand(config: Path, scores_dir: Path, split: str, top_k: int):
    """(labels, scores) of `split` re-ranked as the docs say: CLIP's image embedding against
    each cached description embedding, the similarities averaged."""
    settings = load_config(config)
    components = build_components(settings, torch.device("cpu"), with_class_text=False)
    texts = load_class_embeddings(settings.clip.embeddings).description_embeddings
    images = load_split_features(settings, split, components, device="cpu").features.pooled
    by = description_similarity(images, texts, "mean").numpy()
    labels = np.load(scores_dir / f"{split}_labels.npy")
    return labels, rerank_top_k(np.load(scores_dir / f"{split}_scores.npy"), by, top_k)


def test_a_text_head_on_each_description_trains_and_evaluates_from_its_checkpoint(
    train_cli, workspace, tmp_path, cache
):
    config = recipe_config(workspace, tmp_path, head="text", hidden=1024, class_text_pooling="max")
    run_dir = Path(ok(train_cli("run", "--config", config)).strip().splitlines()[-1])
    ok(train_cli("eval", "--run", run_dir))
    header = read_checkpoint_header(run_dir / "best.safetensors")
    assert header.config.class_text_pooling == "max"
    texts = load_class_embeddings(load_config(config).clip.embeddings).description_embeddings
    assert header.class_embeddings_sha256 == tensor_sha256(texts)  # per description, [N, K, D]


def test_evaluation_reranks_beside_the_plain_rows(train_cli, workspace, tmp_path, cache):
    config = recipe_config(workspace, tmp_path)
    run_dir = Path(ok(train_cli("run", "--config", config)).strip().splitlines()[-1])
    out = ok(train_cli("eval", "--run", run_dir, "--rerank-top-k", 2))
    assert "fine, top 2 re-ranked" in out and "gain" in out

    report = EvaluationReport.model_validate_json((run_dir / "eval-test.json").read_text())
    assert report.reranked.top_k == 2 and report.reranked.pooling == "mean"
    val, test = (reranked_by_hand(config, run_dir, split, 2) for split in ("val", "test"))
    assert not np.array_equal(test[1], np.load(run_dir / "test_scores.npy"))  # some moved
    again = build_report("test", val, test, report.class_ids, None)
    assert report.reranked.report.fine == again.fine
    assert report.reranked.report.threshold == again.threshold
    gain = report.reranked.report.fine.macro_f1 - report.fine.macro_f1
    assert f"{gain:+.2f}" in out

    rows = read_results(results_path(run_dir)).tail(2)
    assert list(rows["run"]) == [run_dir.name, f"{run_dir.name} (top 2 re-ranked, mean)"]
    assert list(rows["macro_f1"]) == [report.fine.macro_f1, again.fine.macro_f1]
    assert rows["config_hash"].nunique() == 1

    plain = ok(train_cli("eval", "--run", run_dir))  # without the switch: no re-ranked rows
    assert "re-ranked" not in plain
    assert "re-ranked" not in read_results(results_path(run_dir))["run"].iloc[-1]
    assert (
        EvaluationReport.model_validate_json((run_dir / "eval-test.json").read_text()).reranked
        is None
    )


def test_zero_shot_pools_descriptions_and_reranks_from_the_config(
    train_cli, workspace, tmp_path, cache
):
    config = recipe_config(workspace, tmp_path, head="text", hidden=1024)
    out = tmp_path / "zeroshot"
    ok(train_cli("zeroshot", "--config", config, "--output-dir", out / "embedding"))
    table = ok(train_cli(
        "zeroshot", "--config", config, "--set", "model.class_text_pooling=max",
        "--set", "eval.rerank_top_k=3", "--output-dir", out / "max",
    ))  # fmt: skip
    assert "fine, top 3 re-ranked" in table
    embedding, pooled = (np.load(out / kind / "test_scores.npy") for kind in ("embedding", "max"))
    assert not np.allclose(embedding, pooled)  # another way of scoring, other scores
    report = json.loads((out / "max" / "eval-test.json").read_text())
    assert report["reranked"]["top_k"] == 3

    code, _, err = train_cli("zeroshot", "--config", config, "--set", "eval.rerank_top_k=0")
    assert code == 2 and "eval.rerank_top_k" in err
    code, _, err = train_cli(
        "zeroshot", "--config", config, "--set", "model.class_text_pooling=max",
        "--set", "model.head=mlp",
    )  # fmt: skip
    assert code == 2 and "class_text_pooling" in err
