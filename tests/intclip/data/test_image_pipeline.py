"""The fast image pipeline against the plain torchvision one, its loaders and the step options."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from bench.workload import write_jpeg
from intclip.data.crops import draft_resize
from intclip.data.dataset import ImageDataset
from intclip.data.image_pipeline import ModelInput, build_image_pipeline
from intclip.data.loader import LoaderOptions, scoring_loader, train_loader
from intclip.model.intclip import IntCLIP, ModelConfig
from intclip.runtime import distributed
from intclip.runtime.acceleration import compiled, to_channels_last
from intclip.training.config import AugmentConfig, DataConfig, OptimConfig
from intclip.training.scoring import predict_scores
from testkit.photos import photo_index
from testkit.tiny_clip import random_class_embeddings

MEAN, STD = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)
SIZE = 64


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    shapes = [(600, 400), (300, 500), (256, 256), (48, 80)]  # the last one is upsampled
    rng = np.random.default_rng(0)
    return [write_jpeg(folder / f"{i}.jpg", w, h, rng) for i, (w, h) in enumerate(shapes)]


def _pipelines(augment: AugmentConfig = AugmentConfig(), **data):
    return tuple(
        build_image_pipeline(
            SIZE, MEAN, STD, augment, DataConfig(image_root=".", train="t", val="v", **data)
        )
        for data in ({**data, "pipeline": "fast"}, {**data, "pipeline": "torchvision"})
    )


def _apply(transform, path, seed: int | None = None) -> torch.Tensor:
    if seed is not None:
        torch.manual_seed(seed)
    with Image.open(path) as image:
        return transform(image)


@pytest.mark.parametrize("eval_resize", ["crop", "squash"])
def test_fast_eval_tensors_match_the_plain_path(photos, eval_resize):
    fast, plain = _pipelines(eval_resize=eval_resize)
    model_input = ModelInput(torch.device("cpu"), MEAN, STD, normalize=fast.normalized_on_device)
    for path in photos:
        new = _apply(fast.eval, path)
        assert new.dtype == torch.uint8 and new.shape == (3, SIZE, SIZE)
        old = _apply(plain.eval, path)
        difference = (model_input(new[None])[0] - old).abs() * torch.tensor(STD).view(3, 1, 1)
        assert difference.mean() < 0.01 and difference.max() < 0.08, path.name


def test_fast_train_draws_the_same_crops_and_statistics(photos):
    """Same seed, same crop, flip and RandAugment ops: each draw matches up to decoding; over
    many draws the pixel statistics agree."""
    fast, plain = _pipelines(AugmentConfig(randaugment_ops=2))
    model_input = ModelInput(torch.device("cpu"), MEAN, STD, normalize=True)
    new = torch.stack([_apply(fast.train, photos[0], seed) for seed in range(40)])
    old = torch.stack([_apply(plain.train, photos[0], seed) for seed in range(40)])
    new = model_input(new)
    per_draw = (new - old).abs().mean(dim=(1, 2, 3))
    assert per_draw.median() < 0.05
    for stat in (torch.mean, torch.std):
        assert torch.allclose(stat(new, dim=(0, 2, 3)), stat(old, dim=(0, 2, 3)), atol=0.05)


def test_switches_off_augmentation_and_normalisation_on_both_paths(photos):
    fast, plain = _pipelines(AugmentConfig(enabled=False), normalize=False)
    assert fast.train is fast.eval
    unscaled = ModelInput(torch.device("cpu"), (0, 0, 0), (1, 1, 1), normalize=True)
    new, old = unscaled(_apply(fast.train, photos[0])[None])[0], _apply(plain.train, photos[0])
    assert old.min() >= 0 and (new - old).abs().mean() < 0.01


def test_plain_pipeline_still_normalises_in_the_worker(photos):
    _, plain = _pipelines()
    assert not plain.normalized_on_device
    assert _apply(plain.eval, photos[0]).dtype == torch.float32


def test_draft_decodes_smaller_but_never_below_the_output_size(photos):
    with Image.open(photos[0]) as image:  # 600 x 400, a 300 x 200 box to 64 px: 1/2 fits
        draft_resize(image, (0, 0, 300, 200), SIZE)
        assert image.size == (300, 200)
    with Image.open(photos[0]) as image:  # the whole image to 64 px: 1/4 keeps 150 x 100
        draft_resize(image, (0, 0, 600, 400), SIZE)
        assert min(image.size) >= SIZE and image.size[0] < 600
    with Image.open(photos[3]) as image:  # smaller than the output: decoded at full size
        crop = draft_resize(image, (0, 0, 48, 48), SIZE)
        assert image.size == (48, 80) and crop.size == (SIZE, SIZE)


def test_model_input_converts_on_the_device_as_normalize_would():
    images = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    expected = (images.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(
        STD
    ).view(1, 3, 1, 1)
    result = ModelInput(torch.device("cpu"), MEAN, STD, normalize=True, channels_last=True)(images)
    assert torch.allclose(result, expected, atol=1e-5)
    assert result.is_contiguous(memory_format=torch.channels_last)
    floats = torch.randn(2, 3, 4, 4)
    assert torch.equal(ModelInput(torch.device("cpu"), MEAN, STD, normalize=False)(floats), floats)


def _loader_batches(photos, workers: int, epoch: int) -> list[torch.Tensor]:
    index = photo_index(photos)
    fast, _ = _pipelines()
    context = distributed.Context(0, 1, torch.device("cpu"))
    loader, seeds = train_loader(
        ImageDataset(index, fast.train), 2, 7, context, LoaderOptions(workers)
    )
    seeds.set_epoch(epoch)
    return [batch.images for batch in loader]


def test_augmentation_depends_on_seed_and_epoch_not_on_the_workers(photos):
    """Each item carries its own seed, so persistent workers and --resume change nothing."""
    in_process = _loader_batches(photos, 0, epoch=1)
    with_workers = _loader_batches(photos, 2, epoch=1)
    assert all(torch.equal(a, b) for a, b in zip(in_process, with_workers, strict=True))
    other_epoch = _loader_batches(photos, 0, epoch=2)
    assert not all(torch.equal(a, b) for a, b in zip(in_process, other_epoch, strict=True))


def test_a_persistent_val_loader_scores_every_epoch_as_a_fresh_one(photos):
    index = photo_index(photos)
    dataset = ImageDataset(index, _pipelines()[0].eval)
    context = distributed.Context(0, 1, torch.device("cpu"))
    persistent = scoring_loader(dataset, 3, context, LoaderOptions(2), persistent=True)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(2))
    model.num_classes = 2
    model_input = ModelInput(torch.device("cpu"), MEAN, STD, normalize=True)
    fresh = predict_scores(model, dataset, 3, context, model_input, options=LoaderOptions(2))
    first = predict_scores(model, dataset, 3, context, model_input, loader=persistent)
    workers = persistent._iterator
    second = predict_scores(model, dataset, 3, context, model_input, loader=persistent)
    assert persistent._iterator is workers  # the same worker processes served both passes
    assert np.array_equal(first, fresh) and np.array_equal(second, fresh)


def test_loader_options_default_to_the_machines_cores(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 6)
    data = DataConfig(image_root=".", train="t.json", val="v.json")
    options = LoaderOptions.from_config(data, torch.device("cuda"))
    assert options == LoaderOptions(workers=6, prefetch_factor=4, pin_memory=True)
    kwargs = options.kwargs(persistent=True)
    assert kwargs["persistent_workers"] and kwargs["prefetch_factor"] == 4
    assert "prefetch_factor" not in LoaderOptions(0).kwargs(persistent=True)


@pytest.mark.slow
def test_compiled_channels_last_resnet_gives_the_eager_logits(tiny_clip_files):
    from pipeline.clip.loading import load_clip
    from testkit.tiny_clip import TINY_CLIP_CONFIGS

    clip = load_clip(str(TINY_CLIP_CONFIGS["resnet"]), tiny_clip_files["resnet"])
    model = IntCLIP(clip, random_class_embeddings(3, seed=0), ModelConfig()).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        eager = model(images)
        optim = OptimConfig(compile=True, channels_last=True)
        assert to_channels_last(model, clip.module.visual, optim.channels_last)
        fast = compiled(model, optim.compile)(images.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(fast, eager, atol=1e-4)


def test_channels_last_is_left_to_resnet_towers(tiny_clip_files):
    from pipeline.clip.loading import load_clip
    from testkit.tiny_clip import TINY_CLIP_CONFIGS

    clip = load_clip(str(TINY_CLIP_CONFIGS["vit"]), tiny_clip_files["vit"])
    model = IntCLIP(clip, random_class_embeddings(3, seed=0), ModelConfig())
    assert not to_channels_last(model, clip.module.visual, True)
    assert compiled(model, False) is model


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_model_input_moves_uint8_to_cuda_and_normalises_there():
    images = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8).pin_memory()
    result = ModelInput(torch.device("cuda"), MEAN, STD, normalize=True)(images)
    expected = ModelInput(torch.device("cpu"), MEAN, STD, normalize=True)(images)
    assert result.device.type == "cuda" and torch.allclose(result.cpu(), expected, atol=1e-5)
