"""Anomaly detectors on one contract (`base`), by name in `registry`: knn, the default (`knn`:
frozen EfficientNet-Lite0 features from `backbones` against a coreset of normal ones),
EfficientAD (the `efficientad` package: network, teachers, training loop and run), RX (`rx`)
and the scene detectors (`scene`). A saved model's files and their checks are `modelfile`'s."""
