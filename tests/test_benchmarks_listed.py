"""benchmarks/README.md is the index of the benchmarks: every script in benchmarks/ is listed
there (a measuring script in a table row with what it measures and its results, a helper in a
"Helper" paragraph), and every path it names exists, so a moved or new script cannot go unlisted
and a listed one cannot go stale."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
README = BENCH / "README.md"

HELPERS = {
    "anomalib_venv.sh",
    "speed/harness.py",
    "accuracy/anomalib_real.py",
    "accuracy/mtd_small.py",
    "robustness/fuzzing.py",
    "robustness/fuzz_models.py",
    "robustness/fuzz_cli.py",
    "robustness/fuzz_runner.py",
    "robustness/fuzz_data.py",
}
"""Not measurements themselves: set-up, shared code and data preparation for the scripts."""

GENERATED = ("out/", "benchmarks/out/", ".venv", "benchmarks/.venv")
"""Paths the scripts make (git-ignored), so a fresh clone does not have them."""

FILE = re.compile(r"^[\w./-]+(\.(py|sh|md|json|yaml|txt|toml)|/)$")


def scripts() -> set[str]:
    """Every ``*.py`` and ``*.sh`` under benchmarks/, relative to it, outside what scripts make."""
    found = {p.relative_to(BENCH) for p in [*BENCH.rglob("*.py"), *BENCH.rglob("*.sh")]}
    return {
        p.as_posix()
        for p in found
        if not p.as_posix().startswith(GENERATED) and "__pycache__" not in p.parts
    }


def paragraphs(text: str) -> list[str]:
    return [p.strip() for p in re.split(r"\n\s*\n", text)]


def named_paths(text: str) -> set[str]:
    """Link targets, inline-code paths and ``benchmarks/...`` words: what a reader may open."""
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    links = {t for t in re.findall(r"\]\(([^)#\s]+)", text) if not re.match(r"[a-z]+:", t)}
    code = {t for t in re.findall(r"`([^`\n]+)`", prose) if FILE.match(t)}
    words = set(re.findall(r"benchmarks/[\w./-]*\w(?![\w./<*-])", text))  # not patterns
    return {p for p in links | code | words if not p.startswith(GENERATED)}


def test_every_script_is_listed() -> None:
    text = README.read_text()
    found = scripts()
    assert found >= HELPERS, f"helpers named in this test but gone: {HELPERS - found}"
    rows = [ln for ln in text.splitlines() if ln.startswith("| [")]
    helper_text = "\n".join(p for p in paragraphs(text) if p.startswith("Helper"))
    for name in sorted(found):
        assert name in text, f"benchmarks/{name} is not listed in benchmarks/README.md"
        if name in HELPERS:
            assert name in helper_text, f"helper {name} is not in a 'Helper' paragraph"
            continue
        row = [r for r in rows if r.startswith(f"| [{name}]")]
        assert row, f"{name} has no table row (script | what it measures | results)"
        cells = [c.strip() for c in row[0].strip().strip("|").split("|")]
        assert len(cells) == 3 and all(cells), f"{name}: the row needs all three cells: {row[0]}"


def test_every_named_path_exists() -> None:
    names = named_paths(README.read_text())
    assert "speed/harness.py" in names  # the extraction finds what the README lists
    missing = [n for n in sorted(names) if not (BENCH / n).exists() and not (ROOT / n).exists()]
    assert not missing, f"benchmarks/README.md names paths that do not exist: {missing}"


def test_benchmarks_import_nothing_from_tests() -> None:
    offenders = [
        f"{name}: {line.strip()}"
        for name in sorted(scripts())
        for line in (BENCH / name).read_text().splitlines()
        if re.match(r"\s*(from|import) (conftest|test_\w+)\b", line) or '"tests"' in line
    ]
    assert not offenders, offenders
