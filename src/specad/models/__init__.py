"""Anomaly detectors on one contract (`base`), by name in `registry`: knn, the default (`knn`:
frozen EfficientNet-Lite0 features against a coreset of normal ones), EfficientAD (`efficientad`,
trained by `efficientad_train`, teachers in `teachers`), RX (`rx`) and the scene detectors
(`scene`)."""
