"""Frozen features (issue 22): `intclip-train features`, its cache, and training on it.

The shipped CPU-sized frontier recipe (intclip/configs/intentonomy_vitb32_features_cpu.yaml)
trains on the generated squares with the random tiny ViT of test_train, its data and CLIP set
by the test. A features run and an images run of the same head must give the same predictions:
the cache changes the cost, not the results.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import intclip.training.features
from intclip.data.dataset import load_split
from intclip.data.feature_cache import FEATURES_DIR, read_header
from intclip.evaluation.results_table import METRIC_COLUMNS
from intclip.model.frozen_clip import FrozenTower
from intclip.training.config import PACKAGED_CONFIGS, load_config
from intclip.training.features import load_split_features
from testkit.cli import TORCHRUN, interrupt_when, ok
from testkit.squares import BIN, CPU_RECIPE, cli, recipe_config
from testkit.tiny_clip import TINY_CLIP_CONFIGS, save_random_clip

FRONTIER = PACKAGED_CONFIGS / "intentonomy_vitl14_features.yaml"
TRAIN_IMAGES, VAL_IMAGES = 128, 33


def one_line_error(result, alone: bool = True) -> str:
    """The one `error:` line, last; `alone`: nothing else was printed either."""
    code, out, err = result
    assert code == 2 and out == "", (code, err)
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and err.endswith(errors[0] + "\n"), err
    assert not alone or len(err.splitlines()) == 1, err
    return errors[0]


def run_dir_of(out: str) -> Path:
    return Path(out.strip().splitlines()[-1])


# ---- the features command and its cache ----


def test_killed_extraction_keeps_its_shards_and_computes_only_the_rest(
    train_cli, workspace, tmp_path, cache, monkeypatch
):
    config = recipe_config(workspace, tmp_path)
    args = ("features", "--config", config, "--split", "train", "--shard-size", "16")
    original = intclip.training.features.write_features
    written = []

    def killed_after_three(path, *rest):
        if len(written) == 3:
            raise KeyboardInterrupt
        written.append(path)
        original(path, *rest)

    monkeypatch.setattr(intclip.training.features, "write_features", killed_after_three)
    code, _, _ = train_cli(*args)
    assert code == 130 and len(written) == 3
    assert all(read_header(path) is not None for path in written)
    monkeypatch.setattr(intclip.training.features, "write_features", original)

    seen = []
    forward = FrozenTower.forward
    monkeypatch.setattr(
        FrozenTower, "forward", lambda self, x: seen.append(len(x)) or forward(self, x)
    )
    code, out, err = train_cli(*args)
    assert code == 0, err
    assert f"{TRAIN_IMAGES:,} images in 8 shards, 3 already computed; computing 80 images" in err
    assert sum(seen) == TRAIN_IMAGES - 3 * 16  # only the missing shards went through the tower
    resumed = Path(out.strip())
    assert not any((cache / FEATURES_DIR).glob("*.parts"))  # merged, shards removed

    monkeypatch.setenv("INTCLIP_CACHE_DIR", str(tmp_path / "straight"))
    straight = Path(ok(train_cli(*args)).strip())
    assert straight.name == resumed.name  # the same key
    features = [load_file(path) for path in (straight, resumed)]
    assert torch.allclose(features[0]["pooled"], features[1]["pooled"], atol=1e-5)


def load_file(path: Path) -> dict[str, torch.Tensor]:
    import safetensors.torch

    return safetensors.torch.load_file(path)


@pytest.mark.slow
def test_a_killed_process_leaves_whole_shards_that_the_rerun_keeps(workspace, tmp_path):
    config = recipe_config(workspace, tmp_path)
    env = {**workspace["env"], "INTCLIP_CACHE_DIR": str(tmp_path / "cache")}
    command = [str(BIN / "intclip-train"), "features", "--config", str(config), "--split",
               "train", "--shard-size", "8", "--batch-size", "8"]  # fmt: skip
    features = tmp_path / "cache" / FEATURES_DIR

    def two_shards() -> bool:
        return len(list(features.glob("*.parts/*.safetensors"))) >= 2

    code, _ = interrupt_when(command, two_shards, signal.SIGKILL, env, limit=120)
    assert code == -signal.SIGKILL
    kept = len(list(features.glob("*.parts/*.safetensors")))
    assert 2 <= kept < 16
    rerun = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{kept} already computed; computing {TRAIN_IMAGES - 8 * kept} images" in rerun.stderr


def test_a_changed_image_or_weights_file_is_a_cache_miss(train_cli, workspace, tmp_path, cache):
    weights = tmp_path / "weights.safetensors"
    shutil.copy(workspace["root"] / "tiny-vit.safetensors", weights)
    config = recipe_config(workspace, tmp_path)
    args = ("features", "--config", config, "--split", "val", "--set", f"clip.pretrained={weights}")
    computing = f"computing {VAL_IMAGES} images"

    first = train_cli(*args)
    assert computing in first[2]
    again = train_cli(*args)
    assert again[1] == first[1] and "computing" not in again[2]  # read, not computed

    index = load_split(load_config(config).data, "val")
    image = index.image_root / index.paths[5]
    stamp = image.stat()
    os.utime(image, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 1_000_000_000))
    touched = train_cli(*args)
    assert computing in touched[2] and touched[1] != first[1]

    save_random_clip(TINY_CLIP_CONFIGS["vit"], weights, seed=1)  # same path, other weights
    reweighted = train_cli(*args)
    assert computing in reweighted[2] and reweighted[1] not in (first[1], touched[1])


def test_a_swapped_or_damaged_cache_file_is_refused_in_one_line(
    train_cli, workspace, tmp_path, cache
):
    config = recipe_config(workspace, tmp_path)
    val = Path(ok(train_cli("features", "--config", config, "--split", "val")).strip())
    test = Path(ok(train_cli("features", "--config", config, "--split", "test")).strip())
    shutil.copy(test, val)  # same image count: only the header tells them apart
    err = one_line_error(train_cli("features", "--config", config, "--split", "val"))
    assert f"error: {val}: not made from the inputs asked for: images" in err
    err = one_line_error(train_cli("run", "--config", config), alone=False)  # after train's
    assert f"{val}: not made from the inputs asked for" in err
    val.write_bytes(val.read_bytes()[:100])
    err = one_line_error(train_cli("features", "--config", config, "--split", "val"))
    assert f"error: {val}: damaged or not a safetensors file" in err


def test_dense_features_serve_pooled_requests_and_the_public_reader(
    train_cli, workspace, tmp_path, cache
):
    config = recipe_config(workspace, tmp_path)
    dense = ok(train_cli("features", "--config", config, "--split", "val", "--dense"))
    code, pooled, err = train_cli("features", "--config", config, "--split", "val")
    assert code == 0 and pooled == dense and "computing" not in err

    settings = load_config(config)
    found = load_split_features(settings, "val", device="cpu", dense=True)
    assert found.features.pooled.shape == (VAL_IMAGES, 32)
    assert found.features.dense.shape[:2] == (VAL_IMAGES, 32)
    assert found.features.paths == list(found.index.paths)
    assert found.labels.shape == (VAL_IMAGES, 4) and set(np.unique(found.labels)) == {0, 1}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (["augment.enabled=true"], "set augment.enabled: false"),
        (["model={input: features}"], "IntCLIP trains the deep stages of the image tower"),
        (["model.head=linear", "model.hidden=8"], "hidden is a setting of head: mlp"),
        (["model.features=dense"], "features: dense needs head: text"),
        (["model.head=nope"], "model.head: Input should be"),
    ],
)
def test_config_mistakes_are_one_line(train_cli, workspace, tmp_path, settings, message):
    config = recipe_config(workspace, tmp_path)
    overrides = [arg for setting in settings for arg in ("--set", setting)]
    err = one_line_error(train_cli("features", "--config", config, *overrides))
    assert message in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--split", "nope"], "--split nope: not a split"),
        (["--split", "val", "--manifest", "m.csv"], "give --split or --manifest, not both"),
    ],
)
def test_command_mistakes_are_one_line(train_cli, workspace, tmp_path, args, message):
    config = recipe_config(workspace, tmp_path)
    assert message in one_line_error(train_cli("features", "--config", config, *args))


def test_a_manifest_names_the_images_to_compute(train_cli, workspace, tmp_path, cache):
    config = recipe_config(workspace, tmp_path)
    index = load_split(load_config(config).data, "val")
    manifest = tmp_path / "some.csv"
    manifest.write_text("image,labels\n" + "".join(f"{p},0\n" for p in index.paths[:5]))
    code, out, err = train_cli("features", "--config", config, "--manifest", manifest)
    assert code == 0 and "features of some.csv: 5 images in 1 shards" in err
    assert read_header(Path(out.strip())).paths == list(index.paths[:5])


# ---- training on the features ----


def train_and_eval(train_cli, config: Path, name: str, *settings: str) -> Path:
    overrides = [arg for setting in (f"run_name={name}", *settings) for arg in ("--set", setting)]
    run_dir = run_dir_of(ok(train_cli("run", "--config", config, *overrides)))
    ok(train_cli("eval", "--run", run_dir, "--json"))
    return run_dir


@pytest.mark.slow
@pytest.mark.parametrize(
    "model",
    [{"head": "mlp"}, {"head": "text", "features": "dense", "hidden": 1024}],
    ids=["mlp", "text-dense"],
)
def test_features_and_images_runs_of_one_head_give_the_same_predictions(
    train_cli, workspace, tmp_path, cache, model
):
    config = recipe_config(workspace, tmp_path, **model)
    features = train_and_eval(train_cli, config, "features")
    images = train_and_eval(train_cli, config, "images", "model.input=images")
    for split in ("val", "test"):
        one, other = (np.load(run / f"{split}_scores.npy") for run in (features, images))
        assert np.allclose(one, other, atol=1e-5), np.abs(one - other).max()
    rows = [pd.read_csv(run / "metrics.csv") for run in (features, images)]
    assert np.allclose(rows[0]["val_mAP"], rows[1]["val_mAP"], atol=1e-4)
    assert len(rows[0]) == 3 and rows[0]["images_per_s"].min() > 0


@pytest.mark.slow
def test_a_features_run_resumes_exactly_predicts_images_and_gives_the_zero_shot_baseline(
    train_cli, workspace, tmp_path, cache
):
    config = recipe_config(workspace, tmp_path)
    straight = train_and_eval(train_cli, config, "straight")
    halves = run_dir_of(ok(train_cli("run", "--config", config, "--set", "run_name=halves",
                                     "--stop-after", "1")))  # fmt: skip
    ok(train_cli("run", "--resume", halves))
    first, second = (
        torch.load(run / "last.pt", weights_only=True)["model"] for run in (straight, halves)
    )
    assert all(torch.equal(first[name], second[name]) for name in first)

    index = load_split(load_config(config).data, "test")
    images = [index.image_root / path for path in index.paths[:6]]
    predicted = json.loads(ok(train_cli("predict", "--run", straight, *images, "--format", "json",
                                        "--top", "4")))  # fmt: skip
    scores = np.load(straight / "test_scores.npy")
    ids = json.loads((straight / "eval-test.json").read_text())["class_ids"]
    for row, prediction in enumerate(predicted):
        fine = {i["id"]: i["probability"] for i in prediction["intents"] if i["level"] == "fine"}
        assert [fine[c] for c in ids] == pytest.approx(scores[row], abs=1e-4)

    matrices = [f"--{split}-{kind}={straight / f'{split}_{kind}.npy'}"
                for split in ("val", "test") for kind in ("scores", "labels")]  # fmt: skip
    taxonomy = load_config(config).data.taxonomy
    results = tmp_path / "scored.csv"
    ok(train_cli("score", *matrices, "--taxonomy", taxonomy, "--name", "straight", "--results",
                 results))  # fmt: skip
    evaluated, scored = (pd.read_csv(path) for path in (straight.parent / "results.csv", results))
    evaluated = evaluated[evaluated["run"] == "straight"].reset_index(drop=True)
    for column in METRIC_COLUMNS:  # score --name and eval: the same row for the same matrices
        assert scored[column][0] == pytest.approx(evaluated[column][0]), column

    out = tmp_path / "zeroshot"
    ok(train_cli("zeroshot", "--config", config, "--output-dir", out / "features"))
    ok(train_cli("zeroshot", "--config", config, "--set", "model.input=images", "--output-dir",
                 out / "images"))  # fmt: skip
    cached, plain = (np.load(out / kind / "test_scores.npy") for kind in ("features", "images"))
    assert np.allclose(cached, plain, atol=1e-5)


@pytest.mark.slow
def test_torchrun_ranks_share_the_shards_and_rank_0_merges(workspace, tmp_path):
    config = recipe_config(workspace, tmp_path)
    single_env = {**workspace["env"], "INTCLIP_CACHE_DIR": str(tmp_path / "single")}
    single = cli("intclip-train", "features", "--config", config, "--split", "train",
                 "--shard-size", "16", env=single_env)  # fmt: skip
    env = {**workspace["env"], "INTCLIP_CACHE_DIR": str(tmp_path / "ddp"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [*TORCHRUN, str(BIN / "intclip-train"), "features", "--config", str(config), "--split",
         "train", "--shard-size", "16"],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "on 2 processes" in done.stderr
    paths = [Path(single.stdout.strip()), Path(done.stdout.strip())]
    assert paths[0].name == paths[1].name
    one, other = (load_file(path)["pooled"] for path in paths)
    assert torch.allclose(one, other, atol=1e-5)


# ---- seeds ----


@pytest.mark.slow
def test_seeds_summarise_every_metric_and_eval_and_score_read_it(
    train_cli, workspace, tmp_path, cache
):
    config = recipe_config(workspace, tmp_path)
    args = ("run", "--config", config, "--set", "run_name=group", "--set", "optim.epochs=2")
    group = run_dir_of(ok(train_cli(*args, "--seeds", "0,1")))
    summary = json.loads((group / "seeds.json").read_text())
    assert summary["seeds"] == [0, 1] and summary["split"] == "test"
    for spread in summary["metrics"].values():
        assert spread["mean"] == pytest.approx(np.mean(spread["values"]))
        assert spread["std"] == pytest.approx(np.std(spread["values"], ddof=1))
    seed_rows = pd.read_csv(group / "results.csv")
    assert list(seed_rows["run"]) == ["seed-0", "seed-1"]
    assert summary["metrics"]["macro_f1"]["values"] == pytest.approx(list(seed_rows["macro_f1"]))
    assert summary["metrics"]["mAP"]["values"][0] != summary["metrics"]["mAP"]["values"][1]
    table = pd.read_csv(group.parent / "results.csv", dtype={"seeds": str})
    assert list(table["statistic"]) == ["mean", "std"] and set(table["seeds"]) == {"0,1"}
    assert table["mAP_voc"][0] == pytest.approx(summary["metrics"]["mAP_voc"]["mean"])

    evaluated = json.loads(ok(train_cli("eval", "--run", group, "--json")))
    scored = json.loads(ok(train_cli("score", "--seeds", group, "--json")))
    for again in (evaluated, scored):
        for name, spread in summary["metrics"].items():
            assert again["metrics"][name]["mean"] == pytest.approx(spread["mean"]), name

    code, _, err = train_cli(*args, "--seeds", "0,1")  # the same group: nothing to train
    assert code == 0 and "seed 0: continuing" in err and "epoch 1/2" not in err
    err = one_line_error(train_cli(*args, "--seeds", "0,2"))
    assert "holds the seeds [0, 1], not [0, 2]" in err
    assert "expected integers" in one_line_error(train_cli(*args, "--seeds", "0,x"))


def test_the_shipped_recipes_load_and_name_their_head():
    for path in (FRONTIER, CPU_RECIPE):
        config = load_config(path)
        assert (config.model.input, config.model.head, config.augment.enabled) == (
            "features",
            "mlp",
            False,
        )
    assert load_config(FRONTIER).clip.name == "ViT-L-14"
    assert load_config(FRONTIER).clip.pretrained == "openai"


def test_seeds_that_cannot_start_leave_no_group_behind(train_cli, workspace, tmp_path):
    config = recipe_config(workspace, tmp_path)
    missing = tmp_path / "missing.json"
    code, _, err = train_cli(
        "run", "--config", config, "--set", f"data.train={missing}", "--seeds", "0,1"
    )
    assert code == 2 and f"{missing}: annotation file not found" in err, err
    assert not (tmp_path / "runs").exists()
    err = one_line_error(train_cli("run", "--config", config, "--seeds", "0", "--stop-after", "1"))
    assert "without --resume or --stop-after" in err
