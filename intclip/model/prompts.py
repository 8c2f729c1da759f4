"""Learned prompt contexts (DualCoOp, as in the official IntCLIP), started from the class texts.

Every class gets a positive and a negative context: `n_ctx` vectors in CLIP's token-embedding
space, placed between the start token and the class text (each of the class's descriptions, or
its name). CLIP's frozen text tower turns each prompt into a text feature; a class's feature is
the normalised mean over its prompts, so the LLM's descriptions keep their weight. Only the
contexts train; the token embeddings of the frozen part of every prompt are computed once.

With `n_ctx: 0` a prompt is exactly the tokenised class text, so the features are the cached
embeddings of `intclip-prompts embed` (aggregate `mean`): the two text paths agree.

The official prompt learner (`models/dualcoop.py` of github.com/yan9qu/IntCLIP) tokenises
`"X X ... X <class text>."` and draws every class's contexts independently; `class_text_format:
"{text}."` and `random_init: per_class` are those two settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, NonNegativeInt
from torch import nn

from intclip.model.head import ClassFeatures
from intclip.model.text_tower import FrozenTextTower
from pipeline.clip.loading import LoadedClip
from pipeline.clip.text_features import needed_length
from pipeline.common.errors import UserError
from pipeline.common.files import sha256_file
from pipeline.descriptions.format import read_descriptions

PLACEHOLDER = "X"  # the token the contexts replace; any token but the end-of-text one would do
INIT_STD = 0.02


class PromptConfig(BaseModel):
    """The learned contexts of `model.text: prompts`."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    n_ctx: NonNegativeInt = 16
    """Context tokens per prompt, positive and negative each."""
    class_specific: bool = True
    """One context per class (as the official code), or one shared by all classes."""
    init: str | None = None
    """A phrase whose token embeddings start every context (it must have n_ctx tokens);
    default: normal, std 0.02."""
    random_init: Literal["per_class", "shared"] = "per_class"
    """Without `init`, class-specific contexts are drawn independently for every class
    (`per_class`, the official code: normal(0, 0.02) of shape [classes, n_ctx, width]), or drawn
    once and copied to every class (`shared`), so that all classes start alike. Seeded by `seed`."""
    class_text: Literal["descriptions", "name"] = "descriptions"
    """What follows the context: each of the class's descriptions, or the class name."""
    class_text_format: Literal["{text}", "{text}."] = "{text}"
    """How the class text is written after the context: as it is, or followed by a full stop
    (`"{text}."`, the official code's `"X ... X <text>."`). The whole formatted text is
    tokenised at once, as the official code tokenises its prompt."""


class ClassText(NamedTuple):
    label: int
    id: str
    texts: tuple[str, ...]


@dataclass(frozen=True)
class ClassTexts:
    """The class texts the prompts are built on, and the descriptions file they came from."""

    classes: tuple[ClassText, ...]
    sha256: str
    """sha256 of the descriptions file, recorded in checkpoints like a class-embedding checksum."""
    source: str

    @property
    def ids(self) -> list[str]:
        return [entry.id for entry in self.classes]

    @property
    def labels(self) -> list[int]:
        return [entry.label for entry in self.classes]


def read_class_texts(path: Path, class_text: Literal["descriptions", "name"]) -> ClassTexts:
    """Each class's descriptions (or its name, the last element of its path) from the file."""
    document = read_descriptions(path)
    classes = tuple(
        ClassText(
            entry.label,
            entry.id,
            tuple(entry.descriptions) if class_text == "descriptions" else (entry.path[-1],),
        )
        for entry in document.classes
    )
    if not classes:
        raise UserError(f"{path}: no classes")
    return ClassTexts(classes, sha256_file(path), str(path))


class PromptContexts(nn.Module):
    """The trained part: positive and negative contexts, [N, n_ctx, W] or shared [n_ctx, W]."""

    def __init__(self, positive: torch.Tensor, negative: torch.Tensor) -> None:
        super().__init__()
        self.positive = nn.Parameter(positive)
        self.negative = nn.Parameter(negative)

    def per_prompt(self, owner: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both contexts for every prompt [P, n_ctx, W], `owner` giving each prompt's class."""
        if self.positive.ndim == 2:
            count = len(owner)
            return (
                self.positive.expand(count, -1, -1),
                self.negative.expand(count, -1, -1),
            )
        return self.positive[owner], self.negative[owner]


class PromptedClassText(nn.Module):
    """Class features from learned contexts and the class texts, through the frozen tower."""

    def __init__(self, clip: LoadedClip, texts: ClassTexts, config: PromptConfig) -> None:
        super().__init__()
        self.tower = FrozenTextTower(clip)
        self.source_sha256 = texts.sha256
        self.num_classes = len(texts.classes)
        tokens, owner = _prompt_tokens(self.tower, texts, config)
        tokens = tokens[:, : needed_length(self.tower, tokens)]  # the rest is padding
        embedded = self.tower.embed(tokens)
        self.register_buffer("tokens", tokens.to(embedded.device), persistent=False)
        self.register_buffer("owner", owner.to(embedded.device), persistent=False)
        self.register_buffer("prefix", embedded[:, :1].clone(), persistent=False)
        self.register_buffer("suffix", embedded[:, 1 + config.n_ctx :].clone(), persistent=False)
        self.contexts = PromptContexts(
            _initial_contexts(self.tower, config, self.num_classes),
            _initial_contexts(self.tower, config, self.num_classes),
        )

        self._without_grad: tuple[tuple, ClassFeatures] | None = None

    @property
    def trained(self) -> PromptContexts:
        """The only trained text-side part: the contexts."""
        return self.contexts

    def forward(self) -> ClassFeatures:
        """The class features; without autograd (eval, predict) computed once per state of the
        contexts rather than once per batch, since nothing else they depend on changes."""
        if torch.is_grad_enabled():
            self._without_grad = None
            return self._features()
        key = self._contexts_state()
        if self._without_grad is None or self._without_grad[0] != key:
            self._without_grad = (key, self._features())
        return self._without_grad[1]

    def _contexts_state(self) -> tuple:
        """What identifies the contexts' values: storage, in-place version counter (bumped by
        optimiser steps and `load_state_dict`), device, dtype, and the autocast setting."""
        contexts = [
            (p.data_ptr(), p._version, p.device, p.dtype) for p in self.contexts.parameters()
        ]
        return (*contexts, torch.is_autocast_enabled(self.prefix.device.type))

    def _features(self) -> ClassFeatures:
        """Positive and negative prompts go through the tower as one batch."""
        positive, negative = self.contexts.per_prompt(self.owner)
        contexts = torch.cat([positive, negative]).to(self.prefix.dtype)
        prefix, suffix = self.prefix.repeat(2, 1, 1), self.suffix.repeat(2, 1, 1)
        prompts = torch.cat([prefix, contexts, suffix], dim=1)
        features = F.normalize(self.tower(prompts, self.tokens.repeat(2, 1)).float(), dim=-1)
        return ClassFeatures(*(self._class_means(half) for half in features.chunk(2)))

    def _class_means(self, features: torch.Tensor) -> torch.Tensor:
        """The normalised mean [N, D] of each class's prompt features [P, D]."""
        pooled = features.new_zeros(self.num_classes, features.shape[-1])
        return F.normalize(pooled.index_add(0, self.owner, features), dim=-1)


def _prompt_tokens(
    tower: FrozenTextTower, texts: ClassTexts, config: PromptConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids [P, L] of every prompt (start, n_ctx placeholders, formatted text, end,
    padding), and the class of each prompt [P]; a text that no longer fits is refused, never
    truncated."""
    tokenizer = tower.tokenizer
    n_ctx = config.n_ctx
    placeholder = tokenizer.encode(PLACEHOLDER)
    rows, owner = [], []
    for index, entry in enumerate(texts.classes):
        for text in entry.texts:
            ids = [
                tokenizer.sot_token_id,
                *placeholder * n_ctx,
                *tokenizer.encode(config.class_text_format.format(text=text)),
                tokenizer.eot_token_id,
            ]
            if len(ids) > tower.context_length:
                raise UserError(
                    f"{texts.source}: class {entry.label} '{entry.id}': {len(ids)} tokens with "
                    f"{n_ctx} learned context tokens, CLIP's context holds "
                    f"{tower.context_length}: {text!r}; shorten it or lower model.prompts.n_ctx"
                )
            rows.append(ids + [0] * (tower.context_length - len(ids)))
            owner.append(index)
    return torch.tensor(rows, dtype=torch.long), torch.tensor(owner, dtype=torch.long)


def _initial_contexts(tower: FrozenTextTower, config: PromptConfig, classes: int) -> torch.Tensor:
    """Normal(0, 0.02), drawn for every class or once (`random_init`), or the token embeddings
    of `config.init`; [classes, n_ctx, W] if class-specific, else [n_ctx, W]."""
    if config.init is None and config.class_specific and config.random_init == "per_class":
        initial = torch.empty(classes, config.n_ctx, tower.width).normal_(std=INIT_STD)
        return initial.to(tower.token_embedding.weight.device)
    if config.init is None:
        initial = torch.empty(config.n_ctx, tower.width).normal_(std=INIT_STD)
    else:
        ids = tower.tokenizer.encode(config.init)
        if len(ids) != config.n_ctx:
            raise UserError(
                f"model.prompts.init {config.init!r} has {len(ids)} tokens but "
                f"model.prompts.n_ctx is {config.n_ctx}: set model.prompts.n_ctx={len(ids)}"
            )
        initial = tower.embed(torch.tensor([ids], dtype=torch.long))[0].float().cpu()
    if config.class_specific:
        initial = initial.unsqueeze(0).repeat(classes, 1, 1)
    return initial.to(tower.token_embedding.weight.device)
