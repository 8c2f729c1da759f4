"""Finding the images a user names, reading them, and CLIP's evaluation transform."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image

from intclip.data.image_files import decode_problem
from pipeline.clip.images import eval_transform, list_images, open_image
from pipeline.common.errors import UserError


def save_image(path: Path, size: tuple[int, int] = (40, 30), colour=(200, 100, 50)) -> Path:
    Image.new("RGB", size, colour).save(path)
    return path


def test_directories_give_their_images_sorted_and_files_keep_their_order(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("b.JPG", "a.png", "c.webp"):
        save_image(folder / name)
    (folder / "notes.txt").write_text("not an image")
    (folder / "nested").mkdir()
    single = save_image(tmp_path / "z.png")
    found = list_images([single, folder])
    assert found == [single, folder / "a.png", folder / "b.JPG", folder / "c.webp"]


def test_nothing_to_score_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match=r"no images \(.*\.png.*\) in .*empty"):
        list_images([empty])
    with pytest.raises(UserError, match=r"missing\.png: no such image or directory"):
        list_images([tmp_path / "missing.png"])


def test_a_file_that_is_not_an_image_is_named(tmp_path):
    fake = tmp_path / "fake.png"
    fake.write_text("plain text")
    with pytest.raises(UserError, match=r"fake\.png: cannot read this image"):
        open_image(fake)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(save_image(tmp_path / "whole.png", (64, 64)).read_bytes()[:60])
    with pytest.raises(UserError, match=r"truncated\.png: cannot read this image"):
        open_image(truncated)


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload))
    )


def write_broken_png(path: Path) -> Path:
    """A 4x4 PNG whose pixels span two IDAT chunks, the second with a garbage chunk type: PIL
    opens it, then raises SyntaxError (not OSError) while decoding."""
    pixels = zlib.compress(b"".join(b"\0" + b"\xff\0\0" * 4 for _ in range(4)))
    header = struct.pack(">IIBBBBB", 4, 4, 8, 2, 0, 0, 0)
    broken = struct.pack(">I", len(pixels) - 5) + b"\x00\x01\x02\x03" + pixels[5:] + bytes(4)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", pixels[:5])
        + broken + png_chunk(b"IEND", b"")
    )  # fmt: skip
    return path


def test_a_broken_png_is_named_by_every_reader(tmp_path):
    broken = write_broken_png(tmp_path / "broken.png")
    with pytest.raises(SyntaxError), Image.open(broken) as image:
        image.load()
    with pytest.raises(UserError, match=r"broken\.png: cannot read this image \(broken PNG"):
        open_image(broken)
    assert decode_problem(broken) == (
        "corrupt",
        f"{broken}: broken PNG file (chunk b'\\x00\\x01\\x02\\x03')",
    )


def test_open_image_gives_rgb(tmp_path):
    grey = tmp_path / "grey.png"
    Image.new("L", (10, 12), 128).save(grey)
    image = open_image(grey)
    assert image.mode == "RGB" and image.size == (10, 12)


def test_eval_transform_crops_to_a_square_and_normalises_with_the_clip_statistics(tmp_path):
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    colour = (200, 100, 50)
    image = open_image(save_image(tmp_path / "wide.png", (90, 45), colour))
    tensor = eval_transform(32, mean, std)(image)
    assert tensor.shape == (3, 32, 32)
    for channel in range(3):
        expected = (colour[channel] / 255 - mean[channel]) / std[channel]
        assert torch.allclose(tensor[channel], torch.full((32, 32), expected), atol=1e-2)


def test_recursive_walks_subdirectories_after_each_folders_own_images(tmp_path):
    folder = tmp_path / "photos"
    (folder / "b" / "deep").mkdir(parents=True)
    (folder / "a").mkdir()
    top = save_image(folder / "z.png")
    in_a = save_image(folder / "a" / "x.jpg")
    in_b = save_image(folder / "b" / "y.png")
    deep = save_image(folder / "b" / "deep" / "w.png")
    (folder / "loop").symlink_to(folder, target_is_directory=True)
    assert list_images([folder]) == [top]
    assert list_images([folder], recursive=True) == [top, in_a, in_b, deep]
