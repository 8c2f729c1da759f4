"""`intclip-train download` within bounds: file names that name no file inside the image root
are refused before any request (nothing is written beside the root), every request has a total
deadline (a trickling server is cut off and asked again), and a gzip bomb is refused at
--max-bytes as it inflates, in bounded memory."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.disk import snapshot
from testkit.fake_image_server import ImageServer, gzip_bombed, image, trickling

FAST = ("--timeout", "5", "--max-attempts", "2", "--rate", "200")


@pytest.fixture
def server() -> Iterator[ImageServer]:
    with ImageServer() as started:
        yield started


def manifest(path: Path, server: ImageServer, names: dict[str, str]) -> Path:
    """A JSONL manifest: file name -> the path served at /img/<key>.jpg."""
    rows = [{"image": name, "url": server.url(f"/img/{key}.jpg")} for key, name in names.items()]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def report_of(root: Path) -> dict:
    return json.loads((root / "download-report.json").read_text())


def test_names_that_are_no_file_inside_the_root_are_refused_unfetched(tmp_path, server, train_cli):
    root = tmp_path / "images"
    (root / "low").mkdir(parents=True)
    names = {"dot": ".", "slash": "low/", "up": "low/..", "dir": "low", "ok": "low/ok.jpg"}
    listed = manifest(tmp_path / "train.jsonl", server, names)
    before = snapshot(tmp_path)

    code, _, err = train_cli("download", "--annotations", listed, "--image-root", root, *FAST)

    assert code == 1, err
    assert err.splitlines()[-1] == (
        f"error: 4 of 5 images could not be fetched; their ids, URLs and reasons are in "
        f"{root / 'download-report.json'} (rerun to retry them, or train with --skip-bad)"
    )
    failures = {f["filename"]: (f["reason"], f["error"], f["attempts"])
                for f in report_of(root)["failures"]}  # fmt: skip
    assert failures == {
        ".": ("unsafe filename", "outside the image root: '.' names no file (empty, '.', '..' "
              "or ending in '/')", 0),
        "low/": ("unsafe filename", "outside the image root: 'low/' names no file (empty, "
                 "'.', '..' or ending in '/')", 0),
        "low/..": ("unsafe filename", "outside the image root: 'low/..' names no file (empty, "
                   "'.', '..' or ending in '/')", 0),
        "low": ("unsafe filename", "low is a directory", 0),
    }  # fmt: skip
    assert [path for _, path in server.log] == ["/img/ok.jpg"]
    after = snapshot(tmp_path)
    new = {"images/download-report.json", "images/low/ok.jpg"}
    assert set(after) - set(before) == new
    assert {k: v for k, v in after.items() if k not in new} == before


@pytest.mark.parametrize("part", ["headers", "body"])
def test_a_trickling_answer_is_cut_at_the_deadline_and_asked_again(
    tmp_path, server, train_cli, part
):
    server.script("/img/slow.jpg", trickling(0.2, part), image())
    root = tmp_path / "images"
    listed = manifest(tmp_path / "train.jsonl", server, {"slow": "slow.jpg"})

    code, out, err = train_cli(
        "download", "--annotations", listed, "--image-root", root, "--deadline", "1", *FAST
    )

    assert code == 0, err
    assert out.startswith("1 downloaded, 0 already present, 0 failed of 1 images")
    assert server.requests_for("/img/slow.jpg") == 2
    assert (root / "slow.jpg").is_file() and not list(root.glob("*.part"))


def test_a_server_that_always_trickles_fails_that_image_naming_the_deadline(
    tmp_path, server, train_cli
):
    server.script("/img/slow.jpg", trickling(0.2))
    root = tmp_path / "images"
    listed = manifest(tmp_path / "train.jsonl", server, {"slow": "slow.jpg"})

    code, _, err = train_cli(
        "download", "--annotations", listed, "--image-root", root, "--deadline", "0.5", *FAST
    )

    assert code == 1, err
    (failure,) = report_of(root)["failures"]
    assert (failure["reason"], failure["attempts"], failure["error"]) == (
        "timeout",
        2,
        "DeadlinePassed: not complete within its total deadline of 0.5 s (--deadline)",
    )
    assert sorted(p.name for p in root.iterdir()) == ["download-report.json"]


def test_a_gzip_bomb_is_refused_at_max_bytes_in_bounded_memory(tmp_path, server, train_cli):
    server.script("/img/bomb.jpg", gzip_bombed(200 << 20))  # 200 KB that inflates to 200 MB
    root = tmp_path / "images"
    listed = manifest(tmp_path / "train.jsonl", server, {"bomb": "bomb.jpg"})
    gzip_bombed(200 << 20)  # made before measuring
    tracemalloc.start()
    try:
        code, _, err = train_cli("download", "--annotations", listed, "--image-root", root, *FAST)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert code == 1, err
    (failure,) = report_of(root)["failures"]
    assert (failure["reason"], failure["attempts"], failure["error"]) == (
        "too large",
        1,
        f"over {20 << 20} bytes once decoded (--max-bytes)",
    )
    assert server.requests_for("/img/bomb.jpg") == 1
    assert peak < 80 << 20, peak
    assert sorted(p.name for p in root.iterdir()) == ["download-report.json"]
