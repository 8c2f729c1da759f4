"""What training, checkpoints and evaluation need of any model: its trained parts, by role.

Every model (IntCLIP, the frozen-tower heads) keeps CLIP frozen and trains a few named parts;
each part is one optimiser group with its own learning-rate multiplier, and only those parts go
into checkpoints and `last.pt`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from pipeline.clip.loading import ClipIdentity
from pipeline.common.errors import UserError

Role = Literal["semantic", "aggregation", "head", "prompts"]
"""The trained parts of a model; each is one optimiser group with its own lr multiplier."""


@dataclass(frozen=True)
class ParameterGroup:
    """The trained parameters of one role, for an optimiser parameter group."""

    role: Role
    parameters: list[nn.Parameter]

    @property
    def count(self) -> int:
        return sum(parameter.numel() for parameter in self.parameters)


class TrainedModel(nn.Module):
    """A model on a frozen CLIP whose `trained_modules` are all that training changes.

    Subclasses set `config` (their model config), `clip_identity` and `text` (the class-text
    module, whose classes and checksum checkpoints record)."""

    clip_identity: ClipIdentity
    text: nn.Module

    @property
    def num_classes(self) -> int:
        return self.text.num_classes

    @property
    def text_sha256(self) -> str:
        """Checksum of what the class features come from: the cached class embeddings, or the
        descriptions file of the prompts."""
        return self.text.source_sha256

    @property
    def trains_buffers(self) -> bool:
        """Whether training changes any buffer (DDP then sends rank 0's at every step)."""
        return False

    def trained_modules(self) -> dict[Role, nn.Module]:
        """The modules that training changes, by role; everything else is CLIP, frozen."""
        raise NotImplementedError

    def parameter_groups(self) -> list[ParameterGroup]:
        """One group per role, so each can get its own learning rate."""
        return [
            ParameterGroup(role, list(module.parameters()))
            for role, module in self.trained_modules().items()
        ]

    def trained_state_dict(self) -> dict[str, torch.Tensor]:
        """Parameters and buffers of the trained modules only, keyed `role.name`."""
        return {
            f"{role}.{name}": tensor
            for role, module in self.trained_modules().items()
            for name, tensor in module.state_dict().items()
        }

    def load_trained_state_dict(self, state: Mapping[str, torch.Tensor], source: str) -> None:
        """Inverse of `trained_state_dict`; `source` names the origin in error messages."""
        modules = self.trained_modules()
        by_role: dict[str, dict[str, torch.Tensor]] = {role: {} for role in modules}
        for key, tensor in state.items():
            role, _, name = key.partition(".")
            if role not in by_role:
                raise UserError(f"{source}: unexpected tensor {key!r} for this model")
            by_role[role][name] = tensor
        for role, module in modules.items():
            try:
                module.load_state_dict(by_role[role], strict=True)
            except RuntimeError as err:
                reason = " ".join(str(err).split())
                raise UserError(
                    f"{source}: the {role} tensors do not fit this model ({reason})"
                ) from err
