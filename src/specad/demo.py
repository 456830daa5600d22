"""The one-command demo: synthesise tray6, train the CPU preset, evaluate beside RX, report."""

from __future__ import annotations

import time
from pathlib import Path

from specad.config import load_config
from specad.io import refuse_nonempty

CPU_PRESET = Path(__file__).parent / "cpu.yaml"


def run_demo(
    out: str | Path,
    *,
    force: bool = False,
    overrides: list[str] | None = None,
    size: int | None = None,
) -> Path:
    """Everything from nothing to ``report/index.html``; returns that path.

    ``size`` shrinks the synthetic images for a quick look (the model input follows it).
    """
    from specad.report import ReportConfig, write_report
    from specad.synth import synthesize
    from specad.train import train

    out = Path(out)
    refuse_nonempty(out, force)
    started = time.perf_counter()
    synth = {"size": size} if size else {}
    data = synthesize(out / "tray6", preset="tray6", seed=1, force=force, **synth)
    sets = [f"data.root={data}"] + ([f"data.image_size={size}"] if size else [])
    cfg = load_config(CPU_PRESET, sets + list(overrides or []))
    model = train(cfg, out / "run", force=force)
    report = write_report(
        ReportConfig(
            models={"efficientad": str(model), "rx": "rx"},
            datasets=[data],
            out=out / "report",
            force=force,
        ),
        progress=True,
    )
    print(f"demo finished in {(time.perf_counter() - started) / 60:.1f} min")
    return report
