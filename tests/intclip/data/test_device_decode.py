"""`data.decode: gpu`: workers read bytes, the device decodes, crops, resizes and augments.

The device half runs on the CPU here (torchvision decodes JPEGs there too); the CUDA test
checks that nvJPEG on the GPU gives the same tensors. The refusal without CUDA is tested
through `intclip-train run` in test_hostile_training.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from bench.workload import write_jpeg
from intclip.data.dataset import ImageDataset
from intclip.data.device_decode import DeviceDecode, EncodedImage
from intclip.data.image_pipeline import ModelInput, build_image_pipeline
from intclip.data.loader import LoaderOptions, scoring_loader, train_loader
from intclip.runtime import distributed
from intclip.training.config import AugmentConfig, DataConfig
from testkit.photos import photo_index

MEAN, STD = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)
SIZE = 64
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Three JPEGs (one smaller than the output), a PNG and a greyscale JPEG."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    shapes = [(600, 400), (300, 500), (48, 80)]
    files = [write_jpeg(folder / f"{i}.jpg", w, h, rng) for i, (w, h) in enumerate(shapes)]
    with Image.open(files[0]) as image:
        image.save(folder / "3.png")
        image.convert("L").save(folder / "4.jpg", quality=90)
    return [*files, folder / "3.png", folder / "4.jpg"]


def _pipeline(decode: str, augment: AugmentConfig = AugmentConfig(), **data):
    config = DataConfig(image_root=".", train="t", val="v", decode=decode, **data)
    return build_image_pipeline(SIZE, MEAN, STD, augment, config)


def _apply(transform, path, seed: int = 0):
    torch.manual_seed(seed)
    with Image.open(path) as image:
        return transform(image)


def _model_input(pipeline) -> ModelInput:
    decode = pipeline.device_decode(CPU) if pipeline.device_decode else None
    return ModelInput(CPU, MEAN, STD, normalize=True, decode=decode)


def test_workers_send_jpeg_bytes_and_decode_other_files_themselves(photos):
    gpu = _pipeline("gpu")
    jpeg = _apply(gpu.eval, photos[0])
    assert isinstance(jpeg, EncodedImage) and jpeg.encoded and jpeg.seed is None
    assert bytes(jpeg.data.numpy()) == photos[0].read_bytes()
    png = _apply(gpu.train, photos[3])
    assert not png.encoded and png.data.shape == (3, SIZE, SIZE) and png.data.dtype == torch.uint8
    assert png.seed is not None
    assert _apply(gpu.eval, photos[4]).encoded  # greyscale JPEGs decode to RGB on the device


@pytest.mark.parametrize("eval_resize", ["crop", "squash"])
def test_device_eval_tensors_match_the_cpu_path(photos, eval_resize):
    gpu, cpu = _pipeline("gpu", eval_resize=eval_resize), _pipeline("cpu", eval_resize=eval_resize)
    new = _model_input(gpu)([_apply(gpu.eval, path) for path in photos])
    old = _model_input(cpu)(torch.stack([_apply(cpu.eval, path) for path in photos]))
    difference = (new - old).abs() * torch.tensor(STD).view(1, 3, 1, 1)
    assert new.shape == (len(photos), 3, SIZE, SIZE)
    assert difference.mean() < 0.01 and difference.amax(dim=(1, 2, 3)).max() < 0.1


def test_device_train_draws_the_same_crops_and_statistics(photos):
    """Same seed, same crop box as the CPU path; flip and RandAugment are drawn per image on
    the device: over many draws the pixel statistics agree."""
    augment = AugmentConfig(randaugment_ops=2)
    gpu, cpu = _pipeline("gpu", augment), _pipeline("cpu", augment)
    crops_only = AugmentConfig(flip=False, randaugment_ops=0)
    bare_gpu, bare_cpu = _pipeline("gpu", crops_only), _pipeline("cpu", crops_only)
    for seed in range(5):  # without flip and RandAugment each draw is the same crop
        new = _model_input(bare_gpu)([_apply(bare_gpu.train, photos[0], seed)])
        old = _model_input(bare_cpu)(_apply(bare_cpu.train, photos[0], seed)[None])
        assert ((new - old).abs() * torch.tensor(STD).view(1, 3, 1, 1)).mean() < 0.02
    new = _model_input(gpu)([_apply(gpu.train, photos[0], seed) for seed in range(60)])
    old = _model_input(cpu)(torch.stack([_apply(cpu.train, photos[0], s) for s in range(60)]))
    for stat in (torch.mean, torch.std):
        assert torch.allclose(stat(new, dim=(0, 2, 3)), stat(old, dim=(0, 2, 3)), atol=0.08)


def test_loaders_keep_the_files_a_list_through_workers(photos):
    index = photo_index(photos)
    gpu = _pipeline("gpu")
    context = distributed.Context(0, 1, CPU)
    loader, seeds = train_loader(ImageDataset(index, gpu.train), 2, 7, context, LoaderOptions(2))
    seeds.set_epoch(0)
    batches = list(loader)
    assert [len(batch.images) for batch in batches] == [2, 2, 1]
    assert all(isinstance(item, EncodedImage) for batch in batches for item in batch.images)
    images, targets, rows = next(iter(scoring_loader(ImageDataset(index, gpu.eval), 5, context,
                                                     LoaderOptions(2))))  # fmt: skip
    assert len(images) == 5 and targets.shape == (5, 2) and rows.tolist() == [0, 1, 2, 3, 4]
    assert _model_input(gpu)(images).shape == (5, 3, SIZE, SIZE)


def test_gpu_decoding_needs_the_fast_pipeline():
    with pytest.raises(ValueError, match="decode: gpu needs pipeline: fast"):
        DataConfig(image_root=".", train="t", val="v", decode="gpu", pipeline="torchvision")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_nvjpeg_on_the_gpu_gives_the_cpu_decoders_tensors(photos):
    gpu = _pipeline("gpu")
    files = [_apply(gpu.eval, path) for path in photos]
    on_gpu = DeviceDecode(SIZE, None, torch.device("cuda"))(files)
    on_cpu = DeviceDecode(SIZE, None, CPU)(files)
    assert on_gpu.device.type == "cuda" and on_gpu.dtype == torch.uint8
    assert (on_gpu.cpu().float() - on_cpu.float()).abs().mean() < 2.0
