"""`intclip-train download` against a loopback image server with scripted faults."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from PIL import Image

from intclip.data.image_files import decode_problem
from intclip.data.shrink import RESIZE_JPEG_QUALITY
from testkit.cli import interrupt_when
from testkit.fake_image_server import (
    ImageServer,
    hang,
    html_page,
    image,
    oversized,
    redirect,
    slow_image,
    status,
    truncated,
)

# Few attempts keep every fault quick; the timeout is long enough for a loaded test machine.
FAST = ("--timeout", "5", "--max-attempts", "2", "--rate", "200")
CLI = [sys.executable, "-c", "from intclip.cli.main import main; main()"]
WAIT_LIMIT_S = 60.0  # a bound on waiting for a subprocess, never an expectation of speed
CHILD_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


@pytest.fixture
def server() -> Iterator[ImageServer]:
    with ImageServer() as started:
        yield started


def write_annotations(path: Path, server: ImageServer, names: list[str], **filenames: str) -> Path:
    """An official-layout annotation file: image `name` at /img/<name>.jpg, saved as
    low/<name>.jpg unless `filenames` says otherwise; one label each, so check-data can pass."""
    images = [
        {
            "id": name,
            "filename": filenames.get(name, f"low/{name}.jpg"),
            "original_id": name.upper(),
            "unsplash_url": server.url(f"/img/{name}.jpg"),
        }
        for name in names
    ]
    annotations = [{"image_id": name, "category_ids": [0]} for name in names]
    document = {"categories": [], "images": images, "annotations": annotations}
    path.write_text(json.dumps(document))
    return path


def read_report(path: Path) -> dict:
    return json.loads(path.read_text())


def failures_by_id(report: dict) -> dict[str, dict]:
    return {failure["id"]: failure for failure in report["failures"]}


def real_files(root: Path) -> list[Path]:
    return sorted(path for path in root.rglob("*.jpg") if path.is_file())


GOOD = ["ok1", "ok2", "ok3"]
RECOVERING = ["rate", "flaky", "moved"]
BAD = ["gone", "down", "cut", "cutshort", "html", "text", "garbage", "big", "bigstream"]


def script_faults(server: ImageServer) -> None:
    server.script("/img/rate.jpg", status(429, {"Retry-After": "1"}), image())
    server.script("/img/flaky.jpg", status(500), image())
    server.script("/img/moved.jpg", redirect("/img/elsewhere.jpg"))
    server.script("/img/gone.jpg", status(404))
    server.script("/img/down.jpg", status(503))
    server.script("/img/cut.jpg", truncated(declare_length=True))
    server.script("/img/cutshort.jpg", truncated(declare_length=False))
    server.script("/img/html.jpg", html_page())
    server.script("/img/text.jpg", image(content_type="text/plain"))
    server.script("/img/garbage.jpg", status(200, {"Content-Type": "image/jpeg"}, b"\xff\xd8 no"))
    server.script("/img/big.jpg", oversized(8000, declare_length=True))
    server.script("/img/bigstream.jpg", oversized(8000, declare_length=False))


EXPECTED_FAILURES = {
    "gone": ("HTTP error", 404, 1),
    "down": ("HTTP error", 503, 2),
    "cut": ("network error", None, 2),
    "cutshort": ("not decodable", 200, 1),
    "html": ("not an image", 200, 1),
    "text": ("not an image", 200, 1),
    "garbage": ("not decodable", 200, 1),
    "big": ("too large", 200, 1),
    "bigstream": ("too large", 200, 1),
}


def test_faults_are_retried_or_reported_and_a_rerun_asks_only_for_the_failures(
    tmp_path, server, train_cli
):
    script_faults(server)
    names = GOOD + RECOVERING + BAD
    annotations = write_annotations(tmp_path / "train.json", server, names)
    root = tmp_path / "images"
    args = ("download", "--annotations", annotations, "--image-root", root, "--max-bytes", 4000)

    code, out, err = train_cli(*args, *FAST)

    assert code == 1
    report_path = root / "download-report.json"
    assert "9 failed of 15 images" in out and str(report_path) in out
    assert "9 of 15 images could not be fetched" in err and str(report_path) in err
    landed = real_files(root)
    assert [path.stem for path in landed] == sorted(GOOD + RECOVERING)
    assert all(decode_problem(path) is None for path in landed)
    assert not list(root.rglob("*.part"))
    report = read_report(report_path)
    assert (report["downloaded"], report["skipped"], report["failed"]) == (6, 0, 9)
    failures = failures_by_id(report)
    for name, (reason, last_status, attempts) in EXPECTED_FAILURES.items():
        failure = failures[name]
        assert (failure["reason"], failure["status"], failure["attempts"]) == (
            reason,
            last_status,
            attempts,
        ), failure
        assert failure["url"] == server.url(f"/img/{name}.jpg") and failure["error"]
    assert "expected" in failures["cut"]["error"]
    assert server.requests_for("/img/rate.jpg") == server.requests_for("/img/flaky.jpg") == 2
    rate_arrivals = [when for when, path in server.log if path == "/img/rate.jpg"]
    assert rate_arrivals[1] - rate_arrivals[0] >= 0.9  # Retry-After: 1 was honoured

    server.log.clear()
    code, out, _ = train_cli(*args, *FAST)

    assert code == 1 and "6 already present, 9 failed" in out
    asked = {path.removeprefix("/img/").removesuffix(".jpg") for _, path in server.log}
    assert asked == set(BAD)


def test_a_hang_past_the_timeout_is_retried_then_reported(tmp_path, server, train_cli):
    server.script("/img/hang.jpg", hang())
    annotations = write_annotations(tmp_path / "train.json", server, ["hang", "fine"])
    root = tmp_path / "images"

    code, _, _ = train_cli(
        "download",
        "--annotations",
        annotations,
        "--image-root",
        root,
        "--timeout",
        "0.5",
        "--max-attempts",
        "2",
    )

    assert code == 1
    (failure,) = read_report(root / "download-report.json")["failures"]
    assert (failure["id"], failure["reason"], failure["status"]) == ("hang", "timeout", None)
    assert failure["attempts"] == server.requests_for("/img/hang.jpg") == 2
    assert "0.5 s (--timeout)" in failure["error"]
    assert not (root / "low" / "hang.jpg").exists()


@pytest.mark.slow
def test_sigkill_half_way_then_a_rerun_fetches_only_what_is_missing(tmp_path, server, train_cli):
    names = [f"img{i:02d}" for i in range(12)]
    for name in names:
        server.script(f"/img/{name}.jpg", slow_image(0.3))
    annotations = write_annotations(tmp_path / "train.json", server, names)
    root = tmp_path / "images"
    args = ["download", "--annotations", str(annotations), "--image-root", str(root)]
    process = subprocess.Popen(
        [*CLI, *args, "--concurrency", "2"], stderr=subprocess.DEVNULL, env=CHILD_ENV
    )
    try:
        deadline = time.monotonic() + WAIT_LIMIT_S
        while len(real_files(root)) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        process.kill()
        process.wait()
    present = real_files(root)
    assert 3 <= len(present) < len(names)
    assert all(decode_problem(path) is None for path in present)
    server.log.clear()

    code, out, _ = train_cli(*args)

    assert code == 0, out
    assert len(server.log) == len(names) - len(present)
    assert not {f"/img/{path.stem}.jpg" for path in present} & {path for _, path in server.log}
    assert len(real_files(root)) == len(names) and not list(root.rglob("*.part"))
    assert f"{len(present)} already present" in out


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_and_sigterm_stop_a_hanging_download_at_once(tmp_path, server, stop):
    names = [f"img{i}" for i in range(4)]
    for name in names:
        server.script(f"/img/{name}.jpg", hang())
    annotations = write_annotations(tmp_path / "train.json", server, names)
    root = tmp_path / "images"
    args = ["download", "--annotations", str(annotations), "--image-root", str(root)]
    code, err = interrupt_when(
        [*CLI, *args, "--timeout", "600"], lambda: bool(server.log), stop, CHILD_ENV, WAIT_LIMIT_S
    )
    assert code == 130, err
    assert "stopped: done 0, skipped 0, failed 0" in err and "Traceback" not in err
    assert not real_files(root) and not list(root.rglob("*.part"))
    assert not (root / "download-report.json").exists()


def test_the_rate_limit_holds_as_the_server_sees_it(tmp_path, server, train_cli):
    names = [f"img{i:02d}" for i in range(16)]
    annotations = write_annotations(tmp_path / "train.json", server, names)
    rate = 10.0

    code, _, err = train_cli(
        "download",
        "--annotations",
        annotations,
        "--image-root",
        tmp_path / "images",
        "--rate",
        rate,
        "--concurrency",
        8,
    )

    assert code == 0, err
    arrivals = server.arrivals()
    assert len(arrivals) == len(names)
    measured = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
    assert measured <= rate * 1.2


def test_filenames_and_urls_that_escape_are_refused_and_nothing_is_written_outside(
    tmp_path, server, train_cli
):
    root = tmp_path / "images"
    outside = tmp_path / "outside"
    outside.mkdir()
    root.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    server.script("/img/bounce.jpg", redirect("ftp://127.0.0.1/x.jpg"))
    (root / "low" / "taken.jpg").mkdir(parents=True)
    unsafe = {
        "dotdot": "../dotdot.jpg",
        "deep": "low/../../deep.jpg",
        "absolute": str(outside / "absolute.jpg"),
        "linked": "link/linked.jpg",
        "nul": "low/a\0b.jpg",
    }
    annotations = write_annotations(
        tmp_path / "train.json", server, [*unsafe, "fine", "bounce", "taken", "ftp"], **unsafe
    )
    document = json.loads(annotations.read_text())
    document["images"][-1]["unsplash_url"] = "file:///etc/passwd"
    annotations.write_text(json.dumps(document))

    code, _, _ = train_cli("download", "--annotations", annotations, "--image-root", root, *FAST)

    assert code == 1
    failures = failures_by_id(read_report(root / "download-report.json"))
    assert {name: failures[name]["reason"] for name in unsafe} == dict.fromkeys(
        unsafe, "unsafe filename"
    )
    assert failures["ftp"]["reason"] == failures["bounce"]["reason"] == "unsupported URL"
    assert failures["ftp"]["attempts"] == 0
    assert failures["taken"]["reason"] == "unsafe filename"  # a directory, never requested
    assert list(outside.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "outside", "train.json"]
    assert {path for _, path in server.log} == {"/img/fine.jpg", "/img/bounce.jpg"}
    assert [path.name for path in real_files(root)] == ["fine.jpg"]


def test_manifests_with_a_url_column_or_key_several_files_after_one_flag(
    tmp_path, server, train_cli
):
    csv_manifest = tmp_path / "train.csv"
    csv_manifest.write_text(
        f"image,labels,url\na/one.jpg,0;1,{server.url('/img/one.jpg')}\n"
        f"a/two.jpg,2,{server.url('/img/two.jpg')}\n"
    )
    jsonl_manifest = tmp_path / "val.jsonl"
    jsonl_manifest.write_text(
        json.dumps({"image": "b/three.jpg", "labels": [1], "url": server.url("/img/three.jpg")})
        + "\n\n"
    )
    root = tmp_path / "images"
    report = tmp_path / "reports" / "fetch.json"
    report.parent.mkdir()

    code, out, err = train_cli(
        "download",
        "--annotations",
        csv_manifest,
        jsonl_manifest,
        "--image-root",
        root,
        "--report",
        report,
    )

    assert code == 0, err
    assert "3 downloaded, 0 already present, 0 failed of 3 images" in out
    assert "3/3 done 3, skipped 0, failed 0" in err  # the progress bar's last state
    assert [p.relative_to(root).as_posix() for p in real_files(root)] == [
        "a/one.jpg",
        "a/two.jpg",
        "b/three.jpg",
    ]
    assert read_report(report)["failures"] == []
    assert not (root / "download-report.json").exists()
    (agent,) = server.user_agents
    assert agent.startswith("intclip-download/") and "research" in agent


def test_resized_images_are_small_recorded_and_pass_check_data(tmp_path, server, train_cli):
    names = ["wide", "tall", "tiny"]
    server.script("/img/wide.jpg", image(size=(120, 80)))
    server.script("/img/tall.jpg", image(size=(50, 150)))
    server.script("/img/tiny.jpg", image(size=(30, 20)))
    annotations = write_annotations(tmp_path / "train.json", server, names)
    root = tmp_path / "images"

    code, _, err = train_cli(
        "download",
        "--annotations",
        annotations,
        "--image-root",
        root,
        "--resize-short-side",
        40,
    )

    assert code == 0, err
    sizes = {}
    for path in real_files(root):
        with Image.open(path) as stored:
            sizes[path.stem] = (stored.format, stored.size)
    assert sizes == {
        "wide": ("JPEG", (60, 40)),
        "tall": ("JPEG", (40, 120)),
        "tiny": ("JPEG", (30, 20)),
    }
    report = read_report(root / "download-report.json")
    assert (report["resize_short_side"], report["jpeg_quality"]) == (40, RESIZE_JPEG_QUALITY)
    data = {"image_root": str(root), "train": str(annotations), "val": str(annotations)}
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data": {**data, "num_classes": 1},  # every label is 0
                "clip": {"name": "RN50", "embeddings": "unused.safetensors"},
            }
        )
    )
    code, out, err = train_cli("check-data", "--config", config)
    assert code == 0, err
    assert "train: 3 entries, ok" in out


def test_present_images_are_checked_unless_only_missing(tmp_path, server, train_cli):
    annotations = write_annotations(tmp_path / "train.json", server, ["a", "b"])
    root = tmp_path / "images"
    args = ("download", "--annotations", annotations, "--image-root", root)
    assert train_cli(*args)[0] == 0
    broken = root / "low" / "a.jpg"
    broken.write_bytes(broken.read_bytes()[:100])
    server.log.clear()

    code, out, _ = train_cli(*args, "--only-missing")
    assert code == 0 and "0 downloaded, 2 already present" in out and server.log == []

    code, out, _ = train_cli(*args)
    assert code == 0 and "1 downloaded, 1 already present" in out
    assert [path for _, path in server.log] == ["/img/a.jpg"]
    assert decode_problem(broken) is None


BAD_ANNOTATIONS = [
    ("missing.json", None, "annotation file not found"),
    ("broken.json", '{"images": [', "broken.json:1: invalid JSON"),
    ("nolist.json", '{"annotations": []}', "needs an images list"),
    (
        "nourl.json",
        '{"images": [{"id": "a", "filename": "a.jpg"}]}',
        "nourl.json: images[0]: needs id, filename, unsplash_url",
    ),
    ("nourl.csv", "image,labels\na.jpg,1\n", "nourl.csv:1: the header must name"),
    ("bad.jsonl", '{"image": "a.jpg", "url": "http://x/a"}\n{"image": 3\n', "bad.jsonl:2"),
    ("nourl.jsonl", '{"image": "a.jpg"}\n', "nourl.jsonl:1: needs image, url"),
    ("notes.txt", "hello", "must end in .json, .csv, .jsonl"),
    ("empty.json", '{"images": []}', "no images listed"),
    (
        "clash.csv",
        "image,url\na.jpg,http://x/1.jpg\na.jpg,http://x/2.jpg\n",
        "clash.csv:3: a.jpg has another URL at",
    ),
]


@pytest.mark.parametrize(("name", "text", "expected"), BAD_ANNOTATIONS)
def test_bad_annotation_files_are_one_line_errors(tmp_path, train_cli, name, text, expected):
    path = tmp_path / name
    if text is not None:
        path.write_text(text)

    code, _, err = train_cli("download", "--annotations", path, "--image-root", tmp_path / "i")

    assert code == 2
    assert err.startswith("error: ") and expected in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "i").exists()


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--rate", "0", "--rate: Input should be greater than 0"),
        ("--concurrency", "0", "--concurrency: Input should be greater than 0"),
        ("--max-bytes", "-1", "--max-bytes: Input should be greater than 0"),
        ("--resize-short-side", "0", "--resize-short-side: Input should be greater than 0"),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path, train_cli, option, value, expected):
    manifest = tmp_path / "m.csv"
    manifest.write_text("image,url\na.jpg,http://127.0.0.1:9/a.jpg\n")
    args = ("download", "--annotations", manifest, "--image-root", tmp_path / "i")

    code, _, err = train_cli(*args, option, value)

    assert code == 2 and err.strip() == f"error: {expected}"


def test_an_image_root_that_is_a_file_is_bad_input(tmp_path, train_cli):
    manifest = tmp_path / "m.csv"
    manifest.write_text("image,url\na.jpg,http://127.0.0.1:9/a.jpg\n")
    code, _, err = train_cli("download", "--annotations", manifest, "--image-root", manifest)
    assert code == 2 and "--image-root is not a directory" in err


def test_the_download_modules_do_not_import_torch():
    probe = (
        "import sys, intclip.cli.download, intclip.acquisition.settings; "
        "sys.exit('torch' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", probe], env=CHILD_ENV).returncode == 0
