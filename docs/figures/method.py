"""Draws docs/figures/method.svg, the picture of the method in the README: `python
docs/figures/method.py` rewrites it, and a test checks the committed file is this script's output.

Plain SVG written by hand: boxes, labels and arrows need no plotting library.
"""

from __future__ import annotations

import sys
from pathlib import Path
from xml.sax.saxutils import escape

OUTPUT = Path(__file__).with_suffix(".svg")
WIDTH, HEIGHT = 960, 430
FROZEN, TRAINED, OFFLINE, PLAIN = "#dbe4f0", "#f8d9b8", "#d5ecd4", "#ffffff"
LEGEND = (
    (FROZEN, "frozen CLIP"),
    (TRAINED, "trained"),
    (OFFLINE, "offline stage, cached or reviewed artifact"),
)
# (x, y, width, height, fill, lines of text)
BOXES = {
    "image": (20, 170, 90, 50, PLAIN, ["image"]),
    "trunk": (140, 160, 130, 70, FROZEN, ["CLIP image tower", "shallow stages"]),
    "sight": (305, 85, 165, 60, FROZEN, ["sight branch", "deepest stages, frozen"]),
    "semantic": (305, 245, 165, 60, TRAINED, ["semantic branch", "trained copy of them"]),
    "aggregation": (
        505,
        145,
        235,
        100,
        TRAINED,
        [
            "sight-assisted aggregation",
            "Q, K from semantic; V from sight",
            "\u03b1 \u00b7 attended + (sight + semantic) / 2",
        ],
    ),
    "head": (
        775,
        160,
        165,
        70,
        TRAINED,
        ["class head", "per-position similarity,", "spatial pooling"],
    ),
    "loss": (797, 55, 120, 50, PLAIN, ["asymmetric loss", "(training)"]),
    "scores": (797, 290, 120, 44, PLAIN, ["28 intent scores"]),
    "taxonomy": (20, 355, 155, 60, OFFLINE, ["1. taxonomy", "coarse > middle > fine"]),
    "descriptions": (
        205,
        355,
        185,
        60,
        OFFLINE,
        ["LLM class descriptions", "prompts/*.json, in git"],
    ),
    "text": (420, 355, 180, 60, FROZEN, ["2. CLIP text tower", "class embeddings, cached"]),
    "prompts": (630, 355, 150, 60, TRAINED, ["or learned prompts", "(DualCoOp, official)"]),
}
ARROWS = [
    ("image", "trunk"),
    ("trunk", "sight"),
    ("trunk", "semantic"),
    ("sight", "aggregation"),
    ("semantic", "aggregation"),
    ("aggregation", "head"),
    ("head", "loss"),
    ("head", "scores"),
    ("taxonomy", "descriptions"),
    ("descriptions", "text"),
    ("text", "prompts"),
    ("text", "head"),
    ("prompts", "head"),
]


def centre(name: str) -> tuple[float, float]:
    x, y, w, h, *_ = BOXES[name]
    return x + w / 2, y + h / 2


def edge_point(name: str, towards: tuple[float, float]) -> tuple[float, float]:
    """Where the line from the box's centre to `towards` leaves the box."""
    _, _, w, h, *_ = BOXES[name]
    cx, cy = centre(name)
    dx, dy = towards[0] - cx, towards[1] - cy
    scale = min(
        (w / 2) / abs(dx) if dx else float("inf"),
        (h / 2) / abs(dy) if dy else float("inf"),
    )
    return cx + dx * scale, cy + dy * scale


def box(x: float, y: float, w: float, h: float, fill: str, lines: list[str]) -> str:
    shape = (
        f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="8" fill="{fill}" '
        'stroke="#445" stroke-width="1.2"/>'
    )
    top = y + h / 2 - (len(lines) - 1) * 8
    texts = [
        f'<text x="{x + w / 2}" y="{top + 16 * i + 4:.1f}" text-anchor="middle">'
        f"{escape(line)}</text>"
        for i, line in enumerate(lines)
    ]
    return "\n".join([shape, *texts])


def arrow(source: str, target: str) -> str:
    start = edge_point(source, centre(target))
    end = edge_point(target, centre(source))
    return (
        f'<line x1="{start[0]:.1f}" y1="{start[1]:.1f}" x2="{end[0]:.1f}" y2="{end[1]:.1f}" '
        'stroke="#445" stroke-width="1.4" marker-end="url(#head)"/>'
    )


def legend() -> str:
    items = []
    for i, (fill, label) in enumerate(LEGEND):
        x = 20 + i * 170
        items.append(
            f'<rect x="{x}" y="16" width="18" height="14" fill="{fill}" stroke="#445"/>'
            f'<text x="{x + 26}" y="28">{escape(label)}</text>'
        )
    return "\n".join(items)


def render() -> str:
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="Helvetica, Arial, sans-serif" '
        'font-size="13" fill="#223">',
        "<title>IntCLIP in intclip: a frozen sight branch, a trained semantic branch, "
        "sight-assisted aggregation and a class head scored against class text</title>",
        '<defs><marker id="head" markerWidth="10" markerHeight="8" refX="9" refY="4" '
        'orient="auto"><path d="M0,0 L10,4 L0,8 z" fill="#445"/></marker></defs>',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>',
        legend(),
        *(arrow(source, target) for source, target in ARROWS),
        *(box(*spec) for spec in BOXES.values()),
        "</svg>",
    ]
    return "\n".join(parts) + "\n"


def main() -> None:
    OUTPUT.write_text(render())
    print(OUTPUT, file=sys.stderr)


if __name__ == "__main__":
    main()
