"""Outputs into a directory the user may not write: exit 2, one line naming the path and the
cause, and the files already there left as they were.

Tests run as root, for whom chmod restricts nothing: as root the command runs without the
capabilities that bypass file permissions (through util-linux's `setpriv`), so the chmod binds
it as it binds any other user; as anyone else the chmod alone makes the directory read-only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from intclip.data.synthetic import make_synthetic_intentonomy
from pipeline.descriptions.format import write_descriptions
from testkit.descriptions import descriptions_document
from testkit.disk import snapshot
from testkit.fake_openai import FakeOpenAI
from testkit.paths import TOY_TAXONOMY
from testkit.tiny_clip import TINY_CLIP_CONFIGS, save_random_clip

BIN = Path(sys.executable).parent
DENIED = "Permission denied"
AS_ROOT = os.geteuid() == 0
WITHOUT_OVERRIDE = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"]

pytestmark = pytest.mark.skipif(
    AS_ROOT and shutil.which("setpriv") is None, reason="as root this needs util-linux's setpriv"
)


def read_only(folder: Path) -> Path:
    folder.chmod(0o555)
    return folder


def run_unprivileged(tmp_path: Path, *args: object) -> subprocess.CompletedProcess:
    """A console script of this venv, bound by file permissions even when run by root."""
    env = {**os.environ, "INTCLIP_CACHE_DIR": str(tmp_path / "user-cache")}
    command = [str(BIN / str(args[0])), *(str(arg) for arg in args[1:])]
    return subprocess.run(
        [*(WITHOUT_OVERRIDE if AS_ROOT else []), *command],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )  # fmt: skip


def assert_refused(result: subprocess.CompletedProcess, path: Path) -> None:
    """Exit 2 and one error line naming `path` (or a file under it) and the cause; what came
    before it on stderr is progress."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2, result.stderr
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert str(path) in errors[0] and DENIED in errors[0], errors[0]
    assert result.stderr.strip().endswith(errors[0])


def test_build_into_a_read_only_directory(tmp_path, prompts_cli):
    out_dir = tmp_path / "prompts"
    out_dir.mkdir()
    taxonomy = tmp_path / "toy.yaml"
    taxonomy.write_text(TOY_TAXONOMY)
    output = out_dir / "toy.descriptions.json"
    with FakeOpenAI() as server:
        build = ("build", "--taxonomy", taxonomy, "--out", output, "--model", "fake",
                 "--base-url", server.base_url, "--skip-review")  # fmt: skip
        code, _, err = prompts_cli(*build, "--cache-dir", tmp_path / "root-cache")
        assert code == 0, err
        before = snapshot(read_only(out_dir))
        result = run_unprivileged(tmp_path, "intclip-prompts", *build, "--num-descriptions", 2)
    assert_refused(result, output)
    assert snapshot(out_dir) == before


@pytest.mark.slow
def test_embed_into_a_read_only_cache(tmp_path, prompts_cli):
    cache = tmp_path / "cache"
    weights = save_random_clip(TINY_CLIP_CONFIGS["vit"], tmp_path / "tiny-vit.safetensors", seed=0)

    def embed(texts: dict[str, list[str]]) -> tuple[object, ...]:
        descriptions = tmp_path / f"{next(iter(texts))}.descriptions.json"
        write_descriptions(descriptions, descriptions_document(texts))
        return ("embed", "--descriptions", descriptions, "--clip", TINY_CLIP_CONFIGS["vit"],
                "--pretrained", weights, "--device", "cpu", "--cache-dir", cache)  # fmt: skip

    code, _, err = prompts_cli(*embed({"calm": ["A still lake."], "thrill": ["A big wave."]}))
    assert code == 0, err
    before = snapshot(read_only(cache))
    for folder in cache.rglob("*"):
        if folder.is_dir():
            read_only(folder)
    result = run_unprivileged(
        tmp_path, "intclip-prompts", *embed({"joy": ["A party."], "rest": ["A nap."]})
    )
    assert_refused(result, cache)
    assert snapshot(cache) == before


def squares_config(tmp_path: Path, prompts_cli) -> tuple[Path, Path]:
    """A training config over generated squares, with embeddings made; and its output_dir."""
    dataset = make_synthetic_intentonomy(tmp_path / "data", sizes=(8, 4, 4), image_size=32)
    descriptions = tmp_path / "squares.descriptions.json"
    write_descriptions(
        descriptions, descriptions_document({f"c{i}": [f"Colour {i}."] for i in range(4)})
    )
    weights = save_random_clip(TINY_CLIP_CONFIGS["vit"], tmp_path / "tiny-vit.safetensors", seed=0)
    code, out, err = prompts_cli(
        "embed", "--descriptions", descriptions, "--clip", TINY_CLIP_CONFIGS["vit"],
        "--pretrained", weights, "--device", "cpu", "--cache-dir", tmp_path / "embeddings",
    )  # fmt: skip
    assert code == 0, err
    runs = tmp_path / "runs"
    config = tmp_path / "squares.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data": dataset.data_config(num_workers=0),
                "clip": {
                    "name": str(TINY_CLIP_CONFIGS["vit"]),
                    "pretrained": str(weights),
                    "embeddings": out.strip().splitlines()[-1],
                },
                "optim": {"epochs": 2, "batch_size": 4, "eval_batch_size": 4},
                "device": "cpu",
                "output_dir": str(runs),
            }
        )
    )
    return config, runs


@pytest.mark.slow
def test_training_into_a_read_only_output_directory(tmp_path, prompts_cli):
    config, runs = squares_config(tmp_path, prompts_cli)
    (runs / "earlier").mkdir(parents=True)
    (runs / "earlier" / "metrics.csv").write_text("epoch\n1\n")
    before = snapshot(read_only(runs))
    result = run_unprivileged(tmp_path, "intclip-train", "run", "--config", config)
    assert_refused(result, runs)
    assert snapshot(runs) == before
    assert sorted(p.name for p in runs.iterdir()) == ["earlier"]


@pytest.mark.slow
def test_resuming_a_read_only_run_directory(tmp_path, prompts_cli):
    config, _ = squares_config(tmp_path, prompts_cli)
    stopped = subprocess.run(
        [str(BIN / "intclip-train"), "run", "--config", str(config), "--stop-after", "1"],
        capture_output=True, text=True, check=False, timeout=600,
        env={**os.environ, "INTCLIP_CACHE_DIR": str(tmp_path / "user-cache")},
    )  # fmt: skip
    assert stopped.returncode == 0, stopped.stderr
    run_dir = Path(stopped.stdout.strip().splitlines()[-1])
    for path in run_dir.rglob("*"):
        path.chmod(0o555 if path.is_dir() else 0o444)
    before = snapshot(read_only(run_dir))
    result = run_unprivileged(tmp_path, "intclip-train", "run", "--resume", run_dir)
    assert_refused(result, run_dir)
    assert result.stderr == f"error: {run_dir}: cannot write (Permission denied)\n"
    assert snapshot(run_dir) == before
