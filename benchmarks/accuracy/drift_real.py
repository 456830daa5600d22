"""Drift watch defaults on real data: knn on MVTec transistor (read in place), the monitor fed
the test split's normal images, then its anomalous ones."""

import warnings
from pathlib import Path

from specad.data import load_dataset
from specad.fit import fit_on_dataset
from specad.inference import run_split
from specad.metrics.drift import DriftMonitor

warnings.simplefilter("ignore")
ds = load_dataset(Path(__file__).resolve().parents[3] / "shared" / "data" / "mvtec_transistor")
det = fit_on_dataset("knn", ds)
test = ds.require("test")
good = [s for s in test if not s.anomalous]
bad = [s for s in test if s.anomalous]
res = {k: run_split(det, v).scores for k, v in (("good", good), ("bad", bad))}
m = DriftMonitor.from_calibration(det.model.calibration_)
alerts = [(i, m.observe(float(x))) for i, x in enumerate(list(res["good"]) + list(res["bad"]))]
fired = [(i, a) for i, a in alerts if a]
print("val scores", len(det.model.calibration_.val_scores), "good", len(good), "bad", len(bad))
print("alarm bound", m.state.alarm_bound, "KS bound", round(m.score_bound, 3))
print("first alert at cube", fired[0][0] if fired else None, "(normals end at", len(good), ")")
print(fired[0][1] if fired else "no alert")
