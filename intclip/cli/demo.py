"""`make demo`: all three stages end to end in a few minutes, on CPU, offline. A SMOKE RUN.

It generates a dataset of coloured squares in the Intentonomy format, asks a stand-in LLM (a
loopback server that fills a sentence template, no model at all) for candidate descriptions
through the real `intclip-prompts build --candidates`, keeps the best on val
(`intclip-train select-descriptions`), scores them against the class names and a random-words
control (`score-descriptions`), embeds them with a small randomly initialised CLIP saved to a
file, then checks the data, trains, evaluates, predicts and runs the zero-shot baseline with
`intclip-train`. Its numbers say the pipeline works, nothing about Intentonomy.
"""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import torch
import yaml

from intclip.data.synthetic import make_synthetic_intentonomy
from pipeline.clip.loading import load_clip
from pipeline.common.console import fail
from pipeline.common.errors import EXIT_BAD_INPUT

BANNER = "SMOKE RUN: random CLIP weights, template LLM, generated images; numbers mean nothing"
COLOURS = ("red", "yellow-green", "cyan", "violet")
DEMO_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 3, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
TEMPLATES = (
    "A photo showing a {colour} square on a dark background.",
    "An image where a small {colour} square stands out clearly.",
    "A dark picture with one bright {colour} square in it.",
    "A single {colour} patch sits somewhere in a dim frame.",
)
CANDIDATES, KEEP = 4, 3


def asked_colour(messages: list[dict[str, str]]) -> str:
    """The colour of the class asked about, from the request's `Intent class:` line: the prompt
    also names the sibling classes, and any of their colours would describe the wrong class."""
    prompt = next(m["content"] for m in messages if m["role"] == "user")
    found = re.search(r"^Intent class: A (.+) square$", prompt, re.MULTILINE)
    if found is None or found.group(1) not in COLOURS:
        raise ValueError("the demo LLM understands only the demo's taxonomy")
    return found.group(1)


def asked_count(request: dict) -> int:
    """How many descriptions the request's JSON schema asks for."""
    schema = request["response_format"]["json_schema"]["schema"]
    count = schema["properties"]["descriptions"]["minItems"]
    if count > len(TEMPLATES):
        raise ValueError(f"the demo LLM knows {len(TEMPLATES)} sentences, not {count}")
    return count


class _TemplateLLM(BaseHTTPRequestHandler):
    """Answers chat completions by filling TEMPLATES with the colour of the class asked about,
    as many as asked for."""

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        colour = asked_colour(request["messages"])
        texts = [template.format(colour=colour) for template in TEMPLATES[: asked_count(request)]]
        content = json.dumps({"descriptions": [{"text": text} for text in texts]})
        body = json.dumps(
            {
                "id": "demo",
                "object": "chat.completion",
                "created": 0,
                "model": request["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content, "refusal": None},
                        "finish_reason": "stop",
                    }
                ],
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the demo prints its own steps."""


def start_template_llm() -> ThreadingHTTPServer:
    """The stand-in LLM, serving on a free loopback port until `shutdown()`."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _TemplateLLM)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def demo_taxonomy() -> str:
    """Two coarse groups of two colours each."""
    fine = [
        {"id": f"{colour.replace('-', '_')}_square", "name": f"A {colour} square", "label": label}
        for label, colour in enumerate(COLOURS)
    ]
    nodes = [
        {"id": "warm", "name": "Warm colours", "children": fine[:2]},
        {"id": "cold", "name": "Cold colours", "children": fine[2:]},
    ]
    return yaml.safe_dump({"name": "squares", "levels": ["coarse", "fine"], "nodes": nodes})


def _step(title: str, *command: object, env: dict[str, str] | None = None) -> str:
    print(f"\n==> {title}\n$ {' '.join(str(c) for c in command)}", flush=True)
    result = subprocess.run(
        [str(c) for c in command], env=env, check=False, stdout=subprocess.PIPE, text=True
    )
    print(result.stdout, end="", flush=True)
    if result.returncode != 0:
        sys.exit(f"demo failed at: {title}")
    return result.stdout


def write_config(path: Path, settings: dict, **clip: str) -> None:
    """The demo's training config, its class text named by `clip`."""
    document = {**settings, "clip": {**settings["clip"], **clip}}
    path.write_text(yaml.safe_dump(document))


def main(workdir: str = "demo-run") -> None:
    """The demo in `workdir`; a folder it cannot write (read-only, a file in its place, a full
    disk) is one error line and exit 2, as in every command."""
    root = Path(workdir).resolve()
    try:
        _demo(root)
    except OSError as err:
        where = err.filename or root
        fail(f"{where}: cannot write the demo there ({err.strerror or err})")
        sys.exit(EXIT_BAD_INPUT)


def _demo(root: Path) -> None:
    bin_dir = Path(sys.executable).parent
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(root))
    root.mkdir(parents=True, exist_ok=True)
    print(f"{BANNER}\nworking in {root}", flush=True)
    dataset = make_synthetic_intentonomy(root / "data", sizes=(192, 48, 48), image_size=32)
    taxonomy = root / "prompts" / "squares.yaml"
    taxonomy.parent.mkdir(parents=True, exist_ok=True)
    taxonomy.write_text(demo_taxonomy())
    env = {**os.environ, "INTCLIP_CACHE_DIR": str(root / "cache")}
    env.pop("OPENAI_API_KEY", None)

    server = start_template_llm()
    try:
        _step(
            "stage 1: candidate descriptions (template LLM on loopback)",
            bin_dir / "intclip-prompts", "build", "--taxonomy", taxonomy, "--model",
            "demo-template-llm", "--candidates", CANDIDATES,
            "--base-url", f"http://127.0.0.1:{server.server_address[1]}/v1", env=env,
        )  # fmt: skip
    finally:
        server.shutdown()

    config_file, weights = root / "demo-clip.json", root / "demo-clip.pt"
    config_file.write_text(json.dumps(DEMO_CLIP, indent=2))
    torch.manual_seed(0)
    torch.save(load_clip(str(config_file), None).module.state_dict(), weights)
    descriptions = taxonomy.with_name("squares.descriptions.json")
    settings = {
        "data": dataset.data_config(taxonomy=str(taxonomy), num_workers=0),
        "clip": {"name": str(config_file), "pretrained": str(weights)},
        # the label is the colour and place of a square: no colour jitter, light crops
        "augment": {"randaugment_ops": 0, "crop_scale": [0.8, 1.0]},
        "optim": {"optimizer": "adamw", "lr": 0.01, "epochs": 6, "batch_size": 16},
        "device": "cpu",
        "output_dir": str(root / "runs"),  # a fresh run directory each time
    }
    config = root / "demo.yaml"
    write_config(config, settings, descriptions=str(descriptions))
    train = bin_dir / "intclip-train"
    _step(
        f"stage 1: keep the {KEEP} best of each class's candidates on val",
        train, "select-descriptions", "--config", config, "--keep", KEEP, env=env,
    )  # fmt: skip
    _step(
        "stage 1: a random-words control of the same shape",
        bin_dir / "intclip-prompts", "build", "--taxonomy", taxonomy,
        "--control", "random-words", env=env,
    )  # fmt: skip
    _step(
        "stage 1: descriptions vs class names vs random words, on val",
        train, "score-descriptions", "--config", config, "--control",
        taxonomy.with_name("squares.random-words.descriptions.json"), env=env,
    )  # fmt: skip
    embedded = _step(
        "stage 2: class embeddings (random tiny CLIP)",
        bin_dir / "intclip-prompts", "embed", "--descriptions", descriptions,
        "--clip", config_file, "--pretrained", weights, "--device", "cpu", env=env,
    )  # fmt: skip
    # from here on the config names the embeddings file itself, so that it works from any cache
    write_config(config, settings, embeddings=embedded.strip().splitlines()[-1])
    _step("stage 3: data preflight", train, "check-data", "--config", config, env=env)
    _step("baseline: plain CLIP, nothing trained", train, "zeroshot", "--config", config, env=env)
    run_dir = _step("stage 3: training", train, "run", "--config", config, env=env)
    run_dir = run_dir.strip().splitlines()[-1]
    _step(
        "evaluation on test, and re-ranking each image's top 2 classes by its descriptions",
        train, "eval", "--run", run_dir, "--rerank-top-k", 2, env=env,
    )  # fmt: skip
    _step(
        "prediction", train, "predict", "--run", run_dir, "--top", 2,
        dataset.image_root / "low" / "test00000.png", env=env,
    )  # fmt: skip
    print(f"\n{BANNER}\nall three stages ran; outputs are in {root}")


if __name__ == "__main__":
    main(*sys.argv[1:])
