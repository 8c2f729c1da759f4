"""CLIP's text tokens without torch, for the 77-token rule of every description.

open_clip's tokenizer module imports torch, which costs seconds before a command that never
touches a tensor (`build`, `build --check`) can even start. This is the same byte-pair encoding
read from open_clip's own vocabulary file (found, not imported): the same cleaning (ftfy, HTML
unescaping, whitespace, lower case), the same split pattern and the same merges, so it gives
exactly open_clip's `SimpleTokenizer.encode` ids (the tests compare them on many strings).
ftfy and regex are imported by the first tokenizer made: commands that check no description
(`--help`, `validate`) do not pay for them.
"""

from __future__ import annotations

import gzip
import html
import importlib.util
import itertools
import threading
from functools import cache
from pathlib import Path

VOCABULARY_FILE = "bpe_simple_vocab_16e6.txt.gz"
MERGES = 49152 - 256 - 2  # the merges open_clip reads: a 49,408-entry vocabulary in all
SPECIAL_TOKENS = ("<start_of_text>", "<end_of_text>")
SPLIT_PATTERN = (
    "|".join(SPECIAL_TOKENS) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters, as CLIP uses it."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes), strict=True))


def vocabulary_file() -> Path:
    """open_clip's BPE vocabulary, located without importing open_clip (and torch)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("open_clip is not installed: pip install open_clip_torch")
    return Path(next(iter(spec.submodule_search_locations))) / VOCABULARY_FILE


class ClipTokenizer:
    """CLIP's byte-pair encoder; `encode` gives the ids without the start and end tokens."""

    def __init__(self, path: Path) -> None:
        import ftfy
        import regex

        self.fix_text = ftfy.fix_text
        self.split = regex.compile(SPLIT_PATTERN, regex.IGNORECASE)
        with gzip.open(path, "rt", encoding="utf-8") as merges_file:
            lines = merges_file.read().split("\n")[1 : MERGES + 1]
        merges = [tuple(line.split()) for line in lines]
        self.byte_encoder = _bytes_to_unicode()
        symbols = list(self.byte_encoder.values())
        vocabulary = [*symbols, *(s + "</w>" for s in symbols), *("".join(m) for m in merges)]
        vocabulary += SPECIAL_TOKENS
        self.encoder = {token: index for index, token in enumerate(vocabulary)}
        self.ranks = {merge: rank for rank, merge in enumerate(merges)}
        self.words: dict[str, tuple[str, ...]] = {t: (t,) for t in SPECIAL_TOKENS}

    def bpe(self, token: str) -> tuple[str, ...]:
        """Merge the characters of one pre-split token, lowest-ranked pair first."""
        if token in self.words:
            return self.words[token]
        word = (*token[:-1], token[-1] + "</w>")
        while len(word) > 1:
            pairs = set(itertools.pairwise(word))
            best = min(pairs, key=lambda pair: self.ranks.get(pair, float("inf")))
            if best not in self.ranks:
                break
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        self.words[token] = word
        return word

    def encode(self, text: str) -> list[int]:
        cleaned = " ".join(html.unescape(html.unescape(self.fix_text(text))).strip().split())
        ids = []
        for token in self.split.findall(cleaned.lower()):
            mapped = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids += [self.encoder[piece] for piece in self.bpe(mapped)]
        return ids


_tokenizer_lock = threading.Lock()


@cache
def _load_tokenizer() -> ClipTokenizer:
    return ClipTokenizer(vocabulary_file())


def clip_tokenizer() -> ClipTokenizer:
    """The one tokenizer, built once: `build`'s threads all check their first answers at about
    the same moment, and `functools.cache` alone would let each of them build its own."""
    with _tokenizer_lock:
        return _load_tokenizer()


def clip_token_count(text: str) -> int:
    """Tokens CLIP's text tower sees for `text`, start and end tokens included."""
    return len(clip_tokenizer().encode(text)) + 2


@cache
def vocabulary_words(shortest: int = 3, longest: int = 10) -> tuple[str, ...]:
    """The whole English-looking words of CLIP's vocabulary, in its order: tokens that end a
    word, of `shortest` to `longest` lower-case ASCII letters. Each is one token to CLIP, so a
    sentence of them is as long in tokens as in words (near enough)."""
    tokenizer = clip_tokenizer()
    stems = (token.removesuffix("</w>") for token in tokenizer.encoder if token.endswith("</w>"))
    return tuple(
        stem
        for stem in stems
        if shortest <= len(stem) <= longest and stem.isascii() and stem.isalpha() and stem.islower()
    )
