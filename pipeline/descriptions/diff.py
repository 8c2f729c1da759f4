"""Per-class differences between two descriptions files, for reviewing a rebuild."""

from __future__ import annotations

from pipeline.descriptions.format import ClassDescriptions, DescriptionsFile


def diff_descriptions(old: DescriptionsFile, new: DescriptionsFile) -> list[str]:
    """Readable lines, class by class: added and removed classes, moved paths, changed texts;
    a text chosen or dropped on val says its val AP."""
    lines: list[str] = []
    if old.generator != new.generator:
        lines.append(f"generator: {_generator(old)} -> {_generator(new)}")
    if old.selection != new.selection:
        lines.append(f"selection: {_selection(old)} -> {_selection(new)}")
    before, after = old.by_label(), new.by_label()
    for label in sorted(before.keys() | after.keys()):
        lines += _class_diff(before.get(label), after.get(label))
    return lines


def _generator(document: DescriptionsFile) -> str:
    generator = document.generator
    if generator.imported is not None:
        return f"{generator.model} (sha256 {generator.imported.sha256[:12]})"
    params = ", ".join(f"{k}={v}" for k, v in sorted(generator.params.items()))
    template = (generator.template_sha256 or "none")[:12]
    return f"{generator.model} (templates {template}, {params})"


def _selection(document: DescriptionsFile) -> str:
    chosen = document.selection
    if chosen is None:
        return "none"
    return (
        f"best {chosen.keep} per class by {chosen.split} AP over {chosen.images} images "
        f"(features {chosen.features_key[:12]}, CLIP {chosen.clip})"
    )


def _val_ap(entry: ClassDescriptions, text: str) -> str:
    """` (kept, val AP 41.20)` for a text the choice on val saw; nothing otherwise."""
    for candidate in entry.candidates or []:
        if candidate.text == text:
            ap = "none" if candidate.val_ap is None else f"{candidate.val_ap:.2f}"
            return f"  ({'kept' if candidate.kept else 'not kept'}, val AP {ap})"
    return ""


def _title(entry: ClassDescriptions) -> str:
    return f"class {entry.label} '{entry.id}' ({' > '.join(entry.path)})"


def _class_diff(old: ClassDescriptions | None, new: ClassDescriptions | None) -> list[str]:
    if old is None and new is not None:
        return [f"+ {_title(new)}: added", *(f"  + {t}" for t in new.descriptions)]
    if new is None and old is not None:
        return [f"- {_title(old)}: removed", *(f"  - {t}" for t in old.descriptions)]
    assert old is not None and new is not None
    changes = []
    if (old.id, old.path) != (new.id, new.path):
        changes.append(f"  path: {_title(old)} -> {_title(new)}")
    removed = [t for t in old.descriptions if t not in new.descriptions]
    added = [t for t in new.descriptions if t not in old.descriptions]
    changes += [f"  - {t}{_val_ap(new, t)}" for t in removed]
    changes += [f"  + {t}{_val_ap(new, t)}" for t in added]
    if not changes and old.candidates != new.candidates:
        changes.append("  the same descriptions kept, their val APs changed")
    if not changes and old.inputs_sha256 != new.inputs_sha256:
        changes.append("  inputs changed, descriptions identical")
    return [f"~ {_title(new)}", *changes] if changes else []
