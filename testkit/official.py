"""Stand-ins for a checkout of the official IntCLIP code, holding made-up sentences only.

`intclip-prompts import-official` reads `dataloaders/intenton.py` of a checkout of
github.com/yan9qu/IntCLIP. That repository has no licence, so no test may hold its text: these
files follow its layout (the class names assigned to `self.classnames`, then the sentences that
replace them) with sentences invented here, punctuated to catch tokenisation slips.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

SHAPES = (
    "Made-up test sentence number {n}, about nothing official",
    "Test text {n} (a bracket closes it)",
    "Test_text {n} with under_scores and it's apostrophes",
    "Invented line {n}... ending in dots!",
)


def made_up_sentences(count: int) -> list[str]:
    """`count` invented class sentences, none of them official."""
    return [SHAPES[n % len(SHAPES)].format(n=n) for n in range(count)]


DATALOADER = '''"""A stand-in for the official dataloaders/intenton.py, by intclip's tests."""
import torch.utils.data as data


class intentonomy(data.Dataset):
    def __init__(self, root, data_split):
        self.classnames = {names!r}
        self.classnames = [
{sentences}
]
        self.root = root
        self.data_split = data_split
'''


def write_official_checkout(root: Path, sentences: list[str], commit: bool = False) -> Path:
    """`root/dataloaders/intenton.py` holding `sentences`; a git repository with one commit
    when `commit` is set. Returns `root`."""
    source = root / "dataloaders" / "intenton.py"
    source.parent.mkdir(parents=True, exist_ok=True)
    names = [f"Class {n}" for n in range(len(sentences))]
    lines = "\n".join(f"{sentence!r}," for sentence in sentences)
    source.write_text(DATALOADER.format(names=names, sentences=lines))
    if commit:
        for command in (
            ["init", "-q"],
            ["add", "dataloaders"],
            ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "stand-in"],
        ):
            subprocess.run(["git", "-C", str(root), *command], check=True, timeout=30)
    return root


def commit_of(root: Path) -> str:
    return subprocess.run(
        ["git", "-C", str(root), "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()
