"""Choose ``specad scene``'s default by leave-one-scene-out on the shared HAD scenes.

Every setting (band preparation x single-scene detector) maps every scene; each candidate is a
single setting or the rank fusion of several (`specad.models.scene.rank_fuse`: the mean of
each map's pixel ranks, so no detector's scale dominates). Two families of candidates: all of
them, and global RX alone on each band preparation (and their fusions). For each scene held
out, the candidate of a family with the best mean pixel AUROC on the other scenes is scored on
it: that is what choosing from that family earns on a scene it did not see. The default is the
candidate that the family which held best picks on all scenes. Maps are cached under
``benchmarks/out/scene_maps`` (git-ignored); results go to
``benchmarks/accuracy/scene_default_results.md`` with the CPU. Usage::

    nice -n 10 .venv/bin/python benchmarks/accuracy/scene_default.py
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
from had import HAD, PREPS, cpu_model

from specad.metrics import pixel_auroc
from specad.models.scene import SCENE_DEFAULT, SCENE_DETECTORS, rank_fuse
from specad.scenes import read_truth, scene_scores

HERE = Path(__file__).resolve().parent
CACHE = HERE.parent / "out" / "scene_maps"
OUT = HERE / "scene_default_results.md"
MAX_FUSED = 3
"""Largest ensemble tried: more members cost their seconds for no measured gain."""


def settings_maps(scene: Path) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Every setting's map of ``scene`` ("PCA 20 / crd" -> map) and its seconds, cached."""
    cache = CACHE / f"{scene.stem}.npz"
    if cache.is_file():
        with np.load(cache) as f:
            maps = {k: f[k] for k in f.files if not k.startswith("seconds:")}
            seconds = {k.split(":", 1)[1]: float(f[k]) for k in f.files if k.startswith("seconds:")}
        return maps, seconds
    maps, seconds = {}, {}
    for label, prep in PREPS.items():
        runs, _ = scene_scores(scene, "map", "data", None, list(SCENE_DETECTORS), None, prep)
        for run in runs:
            maps[f"{label} / {run.detector}"] = run.score_map
            seconds[f"{label} / {run.detector}"] = run.seconds
            print(scene.stem, label, run.detector, run.auroc, file=sys.stderr, flush=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **maps, **{f"seconds:{k}": np.float64(v) for k, v in seconds.items()})
    return maps, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    scenes = sorted(HAD.glob("*.mat"))
    if not scenes:
        sys.exit(f"error: no .mat scenes in {HAD}")
    maps, seconds, truth = {}, {}, {}
    for scene in scenes:
        maps[scene.stem], seconds[scene.stem] = settings_maps(scene)
        truth[scene.stem] = read_truth(scene, "map")
    names = sorted(next(iter(maps.values())))
    candidates = [
        combo for k in range(1, MAX_FUSED + 1) for combo in itertools.combinations(names, k)
    ]
    auroc: dict[tuple[str, ...], dict[str, float]] = {}
    for combo in candidates:
        auroc[combo] = {
            s: float(pixel_auroc([rank_fuse([maps[s][n] for n in combo])], [truth[s]]))
            for s in maps
        }

    families = {
        "every detector": candidates,
        "global RX only": [c for c in candidates if all(n.endswith("/ global-rx") for n in c)],
    }

    def best(family: str, on: list[str]) -> tuple[str, ...]:
        return max(families[family], key=lambda c: (np.mean([auroc[c][s] for s in on]), -len(c)))

    stems = list(maps)
    baseline = ("all bands / global-rx",)
    shipped = tuple(sorted(str(m) for m in SCENE_DEFAULT))
    lines = [
        "# `specad scene`'s default, chosen by leave-one-scene-out",
        "",
        f"CPU: {cpu_model()}. Command: "
        "`nice -n 10 .venv/bin/python benchmarks/accuracy/scene_default.py`"
        f". {len(candidates)} candidates: each of the {len(names)} settings (band preparation "
        "x detector, `benchmarks/accuracy/had.py`'s) alone and rank-fused in groups of up to "
        f"{MAX_FUSED}.",
        "",
        "## Leave one scene out",
        "",
        "| family | held-out scene | chosen on the others | pixel AUROC there "
        "| global RX, all bands |",
        "|---|---|---|---|---|",
    ]
    held_out = {}
    for family in families:
        for held in stems:
            chosen = best(family, [s for s in stems if s != held])
            held_out.setdefault(family, []).append(auroc[chosen][held])
            lines.append(
                f"| {family} | {held} | {' + '.join(chosen)} | {auroc[chosen][held]:.4f} "
                f"| {auroc[baseline][held]:.4f} |"
            )
    lines.append("")
    for family, values in held_out.items():
        lines.append(
            f"- {family}: held-out mean {np.mean(values):.4f} (global RX, all bands: "
            f"{np.mean([auroc[baseline][s] for s in stems]):.4f})"
        )
    family = max(held_out, key=lambda f: np.mean(held_out[f]))
    overall = best(family, stems)
    lines += [
        "",
        f"The family that held best: {family}; chosen from it on all {len(stems)} scenes: "
        f"**{' + '.join(overall)}**. The family was itself compared on these three scenes, "
        "so the held-out means above flatter it; with three scenes that is the evidence there "
        "is. "
        f"Shipped default (`specad.models.scene.SCENE_DEFAULT`): **{' + '.join(shipped)}**.",
        "",
        "## Candidates by mean pixel AUROC (top 15, the shipped default and global RX)",
        "",
        "| candidate | " + " | ".join(stems) + " | mean | seconds (sum over scenes) |",
        "|---" * (len(stems) + 3) + "|",
    ]
    ranked = sorted(candidates, key=lambda c: -np.mean(list(auroc[c].values())))
    shown = list(dict.fromkeys(ranked[:15] + [shipped, baseline]))
    for combo in shown:
        secs = sum(seconds[s][n] for s in stems for n in combo)
        cells = " | ".join(f"{auroc[combo][s]:.4f}" for s in stems)
        mean = np.mean(list(auroc[combo].values()))
        lines.append(f"| {' + '.join(combo)} | {cells} | {mean:.4f} | {secs:.1f} |")
    OUT.write_text("\n".join(lines) + "\n")
    print(f"wrote {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
