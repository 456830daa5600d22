"""No number measured in a benchmark sits in a docstring or comment under src/specad.

Measurements go stale as the code gets faster; they live in benchmarks/*/*_results.md and
docs/, and the code links there. Constants, bounds and arithmetic (``2,048 x 344 = 2.8 MB``)
are not measurements and pass.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "specad"

_NUM = r"(?<![\w.=])(?<!= )\d+(?:,\d{3})*(?:\.\d+)?"
_DEC = r"(?<![\w.=])(?<!= )\d+(?:,\d{3})*\.\d+"
_SPEED_WORDS = r"faster|slower|as fast|speed-?up|throughput|of .{0,40}time"
PATTERNS = [
    # throughput: any number
    re.compile(
        _NUM + r"\s*(?:img|image|images|cube|cubes|it|steps?)/s\b|\b\d[\d.,]*\s*fps\b", re.I
    ),
    # durations: any number beside a time unit
    re.compile(_NUM + r"(?:-\d+(?:\.\d+)?)?\s*(?:s|ms|min|mins|minutes?|seconds?|hours?|h)\b(?!-)"),
    # memory: decimals beside a size unit, unless the result of written-out arithmetic (``=``)
    re.compile(_DEC + r"\s*(?:[KMGT]i?B)\b"),
    # speed-ups and shares: a number with x, × or % on a line about speed
    re.compile(r"\d(?:\.\d+)?\s*(?:x|×|%)(?=\W|$).*(?:" + _SPEED_WORDS + ")", re.I),
    re.compile(r"(?:" + _SPEED_WORDS + r").*\d(?:\.\d+)?\s*(?:x|×)(?=\W|$)", re.I),
    # accuracy values: a 0.xx or 1.00 on a line that names a measure
    re.compile(
        r"(?:AUROC|AUPRO|F1)\b.*\b(?:0\.\d\d+|1\.00)\b|\b(?:0\.\d\d+|1\.00)\b.*(?:AUROC|AUPRO|F1)\b"
    ),
]


def texts(source: str) -> list[tuple[int, str]]:
    """(line, text) of every docstring line (module, class, function and attribute strings)
    and every comment."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            out += [(node.lineno + i, line) for i, line in enumerate(node.value.value.splitlines())]
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            out.append((tok.start[0], tok.string))
    return out


def measurements(source: str) -> list[tuple[int, str]]:
    return [(n, t.strip()) for n, t in texts(source) if any(p.search(t) for p in PATTERNS)]


@pytest.mark.parametrize(
    "text",
    [
        "56 images/s on two cores",
        "reaches 0.99 AUROC on tray6",
        "image AUROC from 0.89 to 1.00",
        "it runs 3.35x faster than torch",
        "a fit takes 13.9 s",
        "30-60 minutes on 2 cores",
        "the cache held 4.6 GB",
        "one pass: ~5% faster",
        "7 % of knn's ONNX time went to those",
    ],
)
def test_pattern_catches_measurements(text: str) -> None:
    for source in (f'"""{text}"""\n', f"x = 1  # {text}\n"):
        assert measurements(source) == [(1, text if source.startswith('"') else f"# {text}")]


@pytest.mark.parametrize(
    "text",
    [
        "bank: 2,048 x 344 = 2.8 MB",
        "1 GiB as float32",
        "mean 0.45, std 0.225",
        "the 0.9 / 0.995 quantiles",
        "0.5x, 1x and 2x the calibrated threshold",
        "MATLAB v5 and v7.3",
        "[B, 1, S, S]",
        "[B, 1, h, w] maps",
        "within 0.005 of fp32",
    ],
)
def test_pattern_passes_constants(text: str) -> None:
    assert measurements(f'"""{text}"""\n') == []


def test_no_measurements_in_src() -> None:
    found = [
        f"{path.relative_to(SRC.parents[1])}:{line}: {text}"
        for path in sorted(SRC.rglob("*.py"))
        for line, text in measurements(path.read_text(encoding="utf-8"))
    ]
    assert not found, "measured numbers belong in benchmarks/ or docs/:\n" + "\n".join(found)
