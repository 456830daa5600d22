"""Anomaly detection models: EfficientAD (`efficientad`, teachers in `teachers`) and RX (`rx`)."""
