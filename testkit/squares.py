"""A training workspace on generated coloured squares: all three stages done for real.

Descriptions come from a loopback LLM, embeddings from a random tiny CLIP saved to a file, and
the images are squares whose labels are visible in the pixels, so a few epochs learn them.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from intclip.data.synthetic import make_synthetic_intentonomy
from intclip.training.config import PACKAGED_CONFIGS
from testkit.fake_openai import FakeOpenAI
from testkit.tiny_clip import TINY_CLIP_CONFIGS, save_random_clip

TAXONOMY = """\
name: squares
levels: [coarse, fine]
nodes:
  - id: warm
    name: Warm colours
    children:
      - {id: red_square, name: A red square, label: 0}
      - {id: green_square, name: A yellow-green square, label: 1}
  - id: cold
    name: Cold colours
    children:
      - {id: cyan_square, name: A cyan square, label: 2}
      - {id: violet_square, name: A violet square, label: 3}
"""
EPOCHS = 4
BIN = Path(sys.executable).parent
CPU_RECIPE = PACKAGED_CONFIGS / "intentonomy_vitb32_features_cpu.yaml"


def cli(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """A console script of this venv, as a user runs it."""
    command = [str(BIN / str(args[0])), *(str(a) for a in args[1:])]
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 0, result.stderr
    return result


def make_workspace(root: Path) -> dict[str, Path]:
    """Stages 1 and 2 done, and a config for stage 3: everything a training run needs."""
    dataset = make_synthetic_intentonomy(root / "data", sizes=(128, 33, 33), image_size=32)
    taxonomy = root / "squares.yaml"
    taxonomy.write_text(TAXONOMY)
    env = {**os.environ, "INTCLIP_CACHE_DIR": str(root / "cache")}
    with FakeOpenAI() as server:
        cli("intclip-prompts", "build", "--taxonomy", taxonomy, "--model", "fake",
            "--base-url", server.base_url, env=env)  # fmt: skip
    weights = save_random_clip(TINY_CLIP_CONFIGS["vit"], root / "tiny-vit.safetensors", seed=0)
    embedded = cli(
        "intclip-prompts", "embed", "--descriptions", root / "squares.descriptions.json",
        "--clip", TINY_CLIP_CONFIGS["vit"], "--pretrained", weights, "--device", "cpu", env=env,
    )  # fmt: skip
    embeddings = Path(embedded.stdout.strip().splitlines()[-1])
    config = {
        "data": dataset.data_config(taxonomy=str(taxonomy), num_workers=0),
        "clip": {
            "name": str(TINY_CLIP_CONFIGS["vit"]),
            "pretrained": str(weights),
            "embeddings": str(embeddings),
        },
        "augment": {"randaugment_ops": 1, "crop_scale": [0.8, 1.0]},
        "optim": {
            "optimizer": "adamw",
            "lr": 0.01,
            "weight_decay": 0.01,
            "epochs": EPOCHS,
            "warmup_epochs": 0.5,
            "batch_size": 16,
            "eval_batch_size": 32,
        },
        "device": "cpu",
        "output_dir": str(root / "runs"),
    }
    path = root / "squares.yaml.config.yaml"
    path.write_text(yaml.safe_dump(config))
    return {"root": root, "config": path, "env": env}


def train(workspace, name: str, *args: object) -> Path:
    result = cli(
        "intclip-train", "run", "--config", workspace["config"], "--set", f"run_name={name}", *args,
        env=workspace["env"],
    )  # fmt: skip
    return Path(result.stdout.strip().splitlines()[-1])


def metrics(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open() as handle:
        return list(csv.DictReader(handle))


def trained_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "last.pt", weights_only=True)["model"]


def recipe_config(workspace, folder: Path, **model: object) -> Path:
    """The shipped CPU features recipe on the workspace's data and tiny CLIP, small enough for
    a test; `model` overrides its model keys (the `mlp` head is 32 wide unless they say)."""
    recipe = yaml.safe_load(CPU_RECIPE.read_text())
    squares = yaml.safe_load(workspace["config"].read_text())
    recipe["data"] = squares["data"]
    recipe["clip"] = squares["clip"]
    recipe["model"] |= {"hidden": 32, **model}
    recipe["optim"] |= {"epochs": 3, "batch_size": 16, "eval_batch_size": 32, "warmup_epochs": 1}
    recipe["output_dir"] = str(folder / "runs")
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path
