"""Descriptions measured on val, and chosen there: does each one help recognise its class?

Every text is scored alone, zero-shot: the cosine similarity of CLIP's image embedding of each
val image (the cached features of `intclip-train features`) with the text's embedding ranks the
images, and the text's AP is that ranking's average precision for its own class's labels
(scikit-learn's, in percent). One text at a time, so a description's AP does not depend on any
other class's texts. Beside each class's single descriptions: the AP of its class embedding (the
normalised mean of its descriptions' embeddings, what `text: cached` trains against), of its
name alone, of each control file's class embedding (random words, `intclip-prompts build
--control random-words`), and the best AP any other class's embedding reaches on the class's
labels, the bar a description must clear to be about its class rather than about images in
general.

Only val is read: the split's images, labels and features. Test is never opened, so a choice
made from these numbers (`choose_descriptions`) leaves test untouched for the final report.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from intclip.metrics.multilabel import average_precision_per_class
from intclip.training.config import TrainConfig
from intclip.training.factory import Components
from intclip.training.features import load_split_features
from pipeline.clip.loading import LoadedClip
from pipeline.common.errors import UserError
from pipeline.descriptions.format import (
    Candidate,
    ClassDescriptions,
    DescriptionsFile,
    Selection,
)
from pipeline.embeddings.cache import check_class_rows, check_context, encode_texts

FORMAT = "intclip-description-scores-v1"
AP_DECIMALS = 4
"""APs are recorded, compared and ranked at this many decimals of a percent: the choice is the
one its recorded numbers show, whatever float noise a machine adds below that."""
DESCRIPTIONS_ROW, NAMES_ROW = "descriptions", "class names"


@dataclass(frozen=True)
class ValImages:
    """The val split as scoring needs it: unit image embeddings [I, D], 0/1 labels [I, C],
    and the cache key of the features they came from."""

    embeddings: torch.Tensor
    labels: np.ndarray
    features_key: str

    @property
    def count(self) -> int:
        return len(self.labels)


def val_images(
    config: TrainConfig, components: Components, device: str, skip_bad: bool = False
) -> ValImages:
    """The val split's cached image features with its labels (computed on `device` when
    missing); nothing of any other split is read."""
    val = load_split_features(config, "val", components, device=device, skip_bad=skip_bad)
    if not val.labels.any():
        raise UserError(f"{config.data.val}: no val image has a label: nothing to score against")
    embeddings = torch.nn.functional.normalize(val.features.pooled.float(), dim=-1)
    return ValImages(embeddings, val.labels, val.features.header.key.digest)


class DescriptionScore(BaseModel):
    model_config = ConfigDict(frozen=True)

    text: str
    ap: float | None
    """This description alone, zero-shot, for its class on val; None without a positive."""
    rank: int | None
    """1 for the class's best description by `ap`, ties to the earlier one."""
    margin: float | None
    """`ap` minus the best AP another class's embedding reaches on this class's labels: below
    0, another class's text finds this class's images better than this description does."""
    kept: bool | None = None
    """Whether the choice on val kept it, in a file chosen from (None otherwise)."""


class BestOther(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    ap: float


class ClassScores(BaseModel):
    model_config = ConfigDict(frozen=True)

    label: int
    id: str
    positives: int
    """Val images of the class: APs rest on this many."""
    texts: dict[str, float | None]
    """The AP of the class's one text under each row (`TextRow.name`): its class embedding,
    its name, each control's class embedding."""
    best_other: BestOther | None
    """The other class whose embedding has the best AP on this class's labels."""
    descriptions: list[DescriptionScore]


class TextRow(BaseModel):
    """One way of writing class text, over every class."""

    model_config = ConfigDict(frozen=True)

    name: str
    source: str | None
    """The descriptions file it came from (None for the class names)."""
    mAP: float
    """Mean over the classes with a positive of the AP of each class's one text."""
    mean_description_ap: float | None
    """Mean over those classes of the mean AP of their single descriptions."""


class DescriptionScoresReport(BaseModel):
    """`score-descriptions`' JSON report, written beside the descriptions."""

    model_config = ConfigDict(frozen=True)

    format: Literal["intclip-description-scores-v1"] = FORMAT
    split: Literal["val"] = "val"
    images: int
    features_key: str
    clip: str
    descriptions: str
    rows: list[TextRow]
    classes: list[ClassScores]


def report_path(descriptions: Path) -> Path:
    """`<name>.description-scores.json` beside `<name>.descriptions.json` (else beside any
    other name, `<stem>.description-scores.json`)."""
    name = descriptions.name.removesuffix(".json").removesuffix(".descriptions")
    return descriptions.with_name(f"{name}.description-scores.json")


def clip_name(clip: LoadedClip) -> str:
    return f"{clip.identity.model} {clip.identity.pretrained}"


class _Texts:
    """Every text to score, embedded once in one pass of the text tower."""

    def __init__(self, clip: LoadedClip, documents: list[DescriptionsFile]) -> None:
        for document in documents:
            check_context(document, clip.tokenizer)
        texts = [
            text
            for document in documents
            for entry in document.classes
            for text in (*entry.answer, *entry.descriptions, entry.path[-1])
        ]
        self.row = {text: row for row, text in enumerate(dict.fromkeys(texts))}
        self.embeddings = encode_texts(clip, list(self.row)) if self.row else None

    def of(self, texts: list[str]) -> torch.Tensor:
        return self.embeddings[[self.row[text] for text in texts]]

    def class_embeddings(self, document: DescriptionsFile) -> torch.Tensor:
        """[C, D]: each class's descriptions averaged and normalised, as `embed` makes them."""
        means = [self.of(entry.descriptions).mean(dim=0) for entry in document.classes]
        return torch.nn.functional.normalize(torch.stack(means), dim=-1)

    def names(self, document: DescriptionsFile) -> torch.Tensor:
        return self.of([entry.path[-1] for entry in document.classes])


def _ap(labels: np.ndarray, scores: torch.Tensor) -> np.ndarray:
    """AP [columns] of image scores [I, columns] against labels [I, columns], rounded; NaN
    for a column without a positive."""
    return np.round(average_precision_per_class(labels, scores.numpy()), AP_DECIMALS)


def _listed(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def _mean(values: list[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return round(float(np.mean(present)), AP_DECIMALS) if present else None


def ranked(aps: list[float | None]) -> list[int | None]:
    """Ranks, 1 = best AP; ties to the earlier text; texts without an AP have none."""
    order = sorted(
        (index for index, ap in enumerate(aps) if ap is not None),
        key=lambda index: (-aps[index], index),
    )
    ranks: list[int | None] = [None] * len(aps)
    for rank, index in enumerate(order, start=1):
        ranks[index] = rank
    return ranks


def check_classes(
    document: DescriptionsFile, source: Path, config: TrainConfig, ids: list[str] | None
) -> None:
    """The file's classes must be the dataset's, in its order."""
    check_class_rows(
        source,
        [entry.label for entry in document.classes],
        [entry.id for entry in document.classes],
        list(range(config.data.num_classes)),
        ids,
    )


def score_descriptions(
    documents: dict[str, tuple[Path, DescriptionsFile]],
    clip: LoadedClip,
    images: ValImages,
) -> DescriptionScoresReport:
    """Score the descriptions file (`documents[DESCRIPTIONS_ROW]`) text by text, and every
    file (descriptions, controls) and the class names by class embedding; val only."""
    source, document = documents[DESCRIPTIONS_ROW]
    texts = _Texts(clip, [found for _, found in documents.values()])
    labels = images.labels

    def per_class_ap(class_texts: torch.Tensor) -> np.ndarray:
        return _ap(labels, images.embeddings @ class_texts.T)

    own_scores = images.embeddings @ texts.class_embeddings(document).T
    class_aps = {
        name: per_class_ap(texts.class_embeddings(found)) for name, (_, found) in documents.items()
    }
    class_aps[NAMES_ROW] = per_class_ap(texts.names(document))
    singles = {}
    classes = []
    for column, entry in enumerate(document.classes):
        answer = entry.answer
        truth = np.repeat(labels[:, column : column + 1], len(answer), axis=1)
        aps = [_listed(v) for v in _ap(truth, images.embeddings @ texts.of(answer).T)]
        singles[column] = aps
        best_other = _best_other(labels[:, column], own_scores, column, document)
        kept = {c.text: c.kept for c in entry.candidates} if entry.candidates else {}
        classes.append(
            ClassScores(
                label=entry.label,
                id=entry.id,
                positives=int(labels[:, column].sum()),
                texts={name: _listed(aps_[column]) for name, aps_ in class_aps.items()},
                best_other=best_other,
                descriptions=[
                    DescriptionScore(
                        text=text,
                        ap=ap,
                        rank=rank,
                        margin=(
                            round(ap - best_other.ap, AP_DECIMALS)
                            if ap is not None and best_other is not None
                            else None
                        ),
                        kept=kept.get(text),
                    )
                    for text, ap, rank in zip(answer, aps, ranked(aps), strict=True)
                ],
            )
        )
    rows = []
    for name, aps_ in class_aps.items():  # val has a positive (`val_images`): no mean is empty
        file = documents.get(name)
        rows.append(
            TextRow(
                name=name,
                source=str(file[0]) if file else None,
                mAP=round(float(np.nanmean(aps_)), AP_DECIMALS),
                mean_description_ap=(
                    _mean([_mean(aps) for aps in singles.values()])
                    if name == DESCRIPTIONS_ROW
                    else None
                ),
            )
        )
    return DescriptionScoresReport(
        images=images.count,
        features_key=images.features_key,
        clip=clip_name(clip),
        descriptions=str(source),
        rows=_ordered(rows),
        classes=classes,
    )


def _ordered(rows: list[TextRow]) -> list[TextRow]:
    """Descriptions, class names, then the controls: the comparison reads top to bottom."""
    first = [DESCRIPTIONS_ROW, NAMES_ROW]
    return sorted(rows, key=lambda row: first.index(row.name) if row.name in first else 2)


def _best_other(
    truth: np.ndarray, scores: torch.Tensor, column: int, document: DescriptionsFile
) -> BestOther | None:
    """The other class embedding that ranks this class's images best."""
    if not truth.any() or scores.shape[1] < 2:
        return None
    aps = _ap(np.repeat(truth[:, None], scores.shape[1], axis=1), scores)
    aps[column] = -np.inf
    other = int(np.argmax(aps))
    return BestOther(id=document.classes[other].id, ap=float(aps[other]))


def choose_descriptions(
    document: DescriptionsFile,
    report: DescriptionScoresReport,
    keep: int,
) -> DescriptionsFile:
    """The file with each class's `keep` best candidates by val AP kept (ties to the earlier
    candidate), every candidate recorded with its AP, and how the choice was made."""
    fewest = min(len(entry.answer) for entry in document.classes)
    if keep >= fewest:
        raise UserError(
            f"--keep {keep}: a class has only {fewest} candidates to choose from; ask for more "
            "with intclip-prompts build --candidates N"
        )
    entries = []
    for entry, scores in zip(document.classes, report.classes, strict=True):
        entries.append(_chosen(entry, [s.ap for s in scores.descriptions], keep))
    selection = Selection(
        keep=keep, features_key=report.features_key, images=report.images, clip=report.clip
    )
    return DescriptionsFile.model_validate(
        {
            **document.model_dump(exclude={"classes", "selection"}),
            "classes": [entry.model_dump() for entry in entries],
            "selection": selection.model_dump(),
        }
    )


def _chosen(entry: ClassDescriptions, aps: list[float | None], keep: int) -> ClassDescriptions:
    ranks = ranked(aps)
    order = sorted(range(len(aps)), key=lambda i: (ranks[i] is None, ranks[i] or 0, i))
    kept = set(order[:keep])
    candidates = [
        Candidate(text=text, val_ap=ap, kept=index in kept)
        for index, (text, ap) in enumerate(zip(entry.answer, aps, strict=True))
    ]
    return ClassDescriptions.model_validate(
        {
            **entry.model_dump(exclude={"candidates", "descriptions"}),
            "descriptions": [c.text for c in candidates if c.kept],
            "candidates": [c.model_dump() for c in candidates],
        }
    )
