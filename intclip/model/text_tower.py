"""CLIP's frozen text tower, driven from token embeddings instead of token ids.

Learned prompts live in the token-embedding space, so `encode_text` (which starts from ids)
cannot take them. `FrozenTextTower` runs the same steps as open_clip's `CLIP.encode_text` after
the token lookup (`pipeline.clip.text_features`): position embeddings, transformer with the causal
mask, final layer norm, pooling at the end-of-text token and projection, over the positions the
prompts need (cut once, when they are built). Only `open_clip.CLIP`'s built-in text
transformer, with open_clip's own CLIP tokenizer, is driven this way; a Hugging Face or other
custom text tower (`CustomTextCLIP`) is refused, because its embedding layer and pooling differ.
"""

from __future__ import annotations

import open_clip
import torch
from torch import nn

from pipeline.clip.loading import LoadedClip
from pipeline.clip.text_features import text_transformer_features
from pipeline.common.errors import UserError


class FrozenTextTower(nn.Module):
    """CLIP's text transformer, frozen and always in eval mode; shares CLIP's weights."""

    def __init__(self, clip: LoadedClip) -> None:
        super().__init__()
        module = clip.module
        if type(module) is not open_clip.CLIP:
            tower = getattr(module, "text", module)
            raise UserError(
                f"text tower {type(tower).__name__} of {type(module).__name__} cannot take "
                "learned prompts: model.text: prompts needs open_clip's built-in CLIP text "
                "transformer; use model.text: cached with this CLIP"
            )
        if not isinstance(clip.tokenizer, open_clip.SimpleTokenizer):
            raise UserError(
                f"tokenizer {type(clip.tokenizer).__name__} cannot place learned prompts: "
                "model.text: prompts needs open_clip's CLIP tokenizer; use model.text: cached"
            )
        self.tokenizer = clip.tokenizer
        self.context_length = int(module.context_length)
        self.token_embedding = module.token_embedding
        self.positional_embedding = module.positional_embedding
        self.transformer = module.transformer
        self.ln_final = module.ln_final
        self.text_projection = module.text_projection
        self.text_pool_type = module.text_pool_type
        self.text_eos_id = getattr(module, "text_eos_id", None)
        self.register_buffer("attn_mask", module.attn_mask, persistent=False)
        self.requires_grad_(False)
        self.eval()

    @property
    def width(self) -> int:
        """Width of the token-embedding space the contexts live in."""
        return int(self.token_embedding.embedding_dim)

    def train(self, mode: bool = True) -> FrozenTextTower:
        """Frozen means frozen: the tower stays in eval mode whatever its parent does."""
        return super().train(False)

    @torch.no_grad()
    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token embeddings [P, L, W] of token ids [P, L], computed once for the frozen parts."""
        return self.token_embedding(tokens.to(self.token_embedding.weight.device))

    def forward(self, embedded: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Text features [P, D] of token embeddings [P, L, W] whose ids are `tokens` [P, L]."""
        return text_transformer_features(self, embedded, tokens)
