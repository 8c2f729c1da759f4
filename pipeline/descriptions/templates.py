"""Prompt templates: plain text files under `prompts/templates/`, reviewed like code.

Their hash is part of every class's provenance, so editing a template regenerates the
descriptions that depend on it and nothing else.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path

from pipeline.common.errors import UserError
from pipeline.common.files import project_prompts, sha256_json
from pipeline.common.safe_load import read_text_file

TEMPLATE_FILES = {"system": "system.txt", "user": "user.txt"}
PLACEHOLDERS = frozenset(
    {"class_name", "path", "siblings", "num_descriptions", "min_words", "max_words"}
)
DEFAULT_TEMPLATE_DIR = project_prompts() / "templates"


@dataclass(frozen=True)
class PromptTemplates:
    directory: Path
    texts: dict[str, str]

    @property
    def sha256(self) -> str:
        return sha256_json(self.texts)

    def render(self, values: dict[str, str]) -> list[dict[str, str]]:
        """The chat messages of one request."""
        return [
            {"role": role, "content": string.Template(self.texts[role]).substitute(values)}
            for role in TEMPLATE_FILES
        ]


def default_template_dir(taxonomy_path: Path) -> Path:
    """`templates/` beside the taxonomy when it exists, else the project's own templates."""
    beside = Path(taxonomy_path).parent / "templates"
    if beside.is_dir():
        return beside
    if DEFAULT_TEMPLATE_DIR.is_dir():
        return DEFAULT_TEMPLATE_DIR
    raise UserError(
        f"no prompt templates: neither {beside} nor intclip's own {DEFAULT_TEMPLATE_DIR} "
        "exists; pass --templates DIR (system.txt and user.txt)"
    )


def load_templates(directory: Path) -> PromptTemplates:
    """Read the templates and reject placeholders that no request can fill."""
    directory = Path(directory)
    texts = {}
    for role, filename in TEMPLATE_FILES.items():
        path = directory / filename
        text = read_text_file(path, "prompt template")
        template = string.Template(text)
        if not template.is_valid():
            raise UserError(f"{path}: malformed placeholder (write a literal '$' as '$$')")
        unknown = sorted(set(template.get_identifiers()) - PLACEHOLDERS)
        if unknown:
            known = ", ".join(sorted(PLACEHOLDERS))
            raise UserError(f"{path}: unknown placeholder(s) {unknown}; known: {known}")
        texts[role] = text
    return PromptTemplates(directory, texts)
