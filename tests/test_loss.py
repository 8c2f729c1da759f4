"""The asymmetric loss: its BCE limit (hard and soft targets), clipping, focusing, reduction."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from intclip.loss import AsymmetricLoss


def sample(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(4, 6, generator=generator)
    targets = (torch.rand(4, 6, generator=generator) > 0.7).float()
    return logits, targets


def test_without_focusing_and_clipping_it_is_binary_cross_entropy() -> None:
    logits, targets = sample()
    soft_targets = torch.rand(4, 6, generator=torch.Generator().manual_seed(1))
    plain = AsymmetricLoss(gamma_neg=0, gamma_pos=0, clip=0)

    for target in (targets, soft_targets):
        expected = F.binary_cross_entropy_with_logits(logits, target)
        torch.testing.assert_close(plain(logits, target), expected)


def test_easy_negatives_below_the_clip_margin_cost_nothing() -> None:
    logits = torch.tensor([[-5.0, -2.0, 0.0]], requires_grad=True)
    targets = torch.zeros(1, 3)
    clip = torch.sigmoid(torch.tensor(-2.9)).item()  # between the sigmoids of -5 and -2

    per_element = [
        AsymmetricLoss(clip=clip)(logits[:, [index]], targets[:, [index]]) for index in range(3)
    ]
    sum(per_element).backward()

    assert per_element[0].item() == 0.0
    assert logits.grad[0, 0].item() == 0.0
    assert per_element[1].item() > 0 and per_element[2].item() > per_element[1].item()


def test_focusing_down_weights_confident_correct_predictions() -> None:
    confident = torch.tensor([[4.0]])
    unsure = torch.tensor([[0.0]])
    positive = torch.ones(1, 1)
    focal = AsymmetricLoss(gamma_pos=2, clip=0)
    plain = AsymmetricLoss(gamma_pos=0, clip=0)

    ratio_confident = focal(confident, positive) / plain(confident, positive)
    ratio_unsure = focal(unsure, positive) / plain(unsure, positive)

    torch.testing.assert_close(ratio_confident, (1 - torch.sigmoid(confident[0, 0])) ** 2)
    assert ratio_confident < ratio_unsure


def test_mean_reduction_over_all_elements() -> None:
    logits, targets = sample()
    loss = AsymmetricLoss()
    per_element = torch.stack(
        [loss(logits[i : i + 1, j : j + 1], targets[i : i + 1, j : j + 1])
         for i in range(4) for j in range(6)]
    )  # fmt: skip
    torch.testing.assert_close(loss(logits, targets), per_element.mean())


def test_gradient_raises_positives_and_lowers_negatives() -> None:
    logits = torch.zeros(1, 2, requires_grad=True)
    AsymmetricLoss()(logits, torch.tensor([[1.0, 0.0]])).backward()
    assert logits.grad[0, 0] < 0 < logits.grad[0, 1]


def test_low_precision_logits_give_a_float32_loss() -> None:
    logits, targets = sample()
    assert AsymmetricLoss()(logits.bfloat16(), targets).dtype == torch.float32


def test_mismatched_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match=r"logits \(2, 3\) and targets \(2, 4\)"):
        AsymmetricLoss()(torch.zeros(2, 3), torch.zeros(2, 4))
