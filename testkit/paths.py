"""Where the checkout and the committed test data are, for tests and the bench wherever they sit."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
INTENTONOMY = FIXTURES / "intentonomy"
"""The small real Intentonomy files the tests need (CC BY 4.0; see its README)."""
TOY_TAXONOMY = (FIXTURES / "taxonomies" / "toy.yaml").read_text()
"""Two coarse nodes, three fine classes (cats, dogs | beach): every line number is known."""
