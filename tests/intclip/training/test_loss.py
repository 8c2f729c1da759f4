"""The asymmetric loss: its BCE limit (hard and soft targets), clipping, focusing, reduction."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from intclip.training.loss import AsymmetricLoss


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


def expected_loss(logits, targets, gamma_neg, gamma_pos, clip, eps):
    """The expected asymmetric loss under the label distribution, element by element."""
    p = torch.sigmoid(logits)
    p_neg = torch.clamp(1 - p + clip, max=1.0)
    loss_pos = -torch.log(torch.clamp(p, min=eps)) * (1 - p).detach() ** gamma_pos
    loss_neg = -torch.log(torch.clamp(p_neg, min=eps)) * (1 - p_neg).detach() ** gamma_neg
    return targets * loss_pos + (1 - targets) * loss_neg


@pytest.mark.parametrize(
    ("gamma_neg", "gamma_pos", "clip"), [(2.0, 1.0, 0.05), (4.0, 0.0, 0.0), (1.0, 3.0, 0.2)]
)
def test_soft_targets_give_the_expected_loss_under_the_label_distribution(
    gamma_neg: float, gamma_pos: float, clip: float
) -> None:
    logits, _ = sample(seed=3)
    soft = torch.tensor([0.0, 1 / 3, 2 / 3, 1.0]).repeat(6)[torch.randperm(24)].reshape(4, 6)
    logits.requires_grad_(True)
    reference_logits = logits.detach().clone().requires_grad_(True)

    loss = AsymmetricLoss(gamma_neg, gamma_pos, clip, eps=1e-8)(logits, soft)
    expected = expected_loss(reference_logits, soft, gamma_neg, gamma_pos, clip, 1e-8).mean()
    loss.backward()
    expected.backward()

    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(logits.grad, reference_logits.grad)


def test_soft_target_loss_is_the_mix_of_the_hard_losses() -> None:
    logits, _ = sample(seed=4)
    share = torch.full_like(logits, 1 / 3)
    loss = AsymmetricLoss(gamma_neg=3, gamma_pos=1, reduction="sum")
    mixed = (
        loss(logits, torch.ones_like(logits)) / 3 + 2 * loss(logits, torch.zeros_like(logits)) / 3
    )
    torch.testing.assert_close(loss(logits, share), mixed)


def test_sum_reduction_and_weight() -> None:
    logits, targets = sample()
    mean = AsymmetricLoss()(logits, targets)
    torch.testing.assert_close(
        AsymmetricLoss(reduction="sum", weight=0.03)(logits, targets), 0.03 * mean * targets.numel()
    )


def test_official_form_matches_the_official_two_way_softmax_loss() -> None:
    """The official loss: softmax over (negative, positive) logits, clip 0.05, eps 1e-6, focal
    weight without gradient, summed, times --loss_w 0.03; written here from its formulas."""
    generator = torch.Generator().manual_seed(7)
    negative = 2 * torch.randn(4, 6, generator=generator)
    positive = 2 * torch.randn(4, 6, generator=generator)
    _, targets = sample()
    pair = torch.softmax(torch.stack([negative, positive], dim=1), dim=1)
    xs_pos, xs_neg = pair[:, 1], (pair[:, 0] + 0.05).clamp(max=1)
    ce = targets * torch.log(xs_pos.clamp(min=1e-6)) + (1 - targets) * torch.log(
        xs_neg.clamp(min=1e-6)
    )
    pt = xs_pos * targets + xs_neg * (1 - targets)
    focal = torch.pow(1 - pt, 1.0 * targets + 2.0 * (1 - targets))
    official = 0.03 * -(ce * focal).sum()

    ours = AsymmetricLoss(2.0, 1.0, 0.05, eps=1e-6, reduction="sum", weight=0.03)
    torch.testing.assert_close(ours(positive - negative, targets), official)
