"""specad: unsupervised anomaly detection for spectral cubes with any number of channels."""

__version__ = "0.1.0"
