"""Synthetic inspection data: sawdust in a wooden tray seen by RGB and SWIR cameras.

The scenes are physically grounded (measured and modelled spectra in ``materials.json``,
Beer-Lambert soaking, Fresnel foil, PROSPECT-D leaf) so that the classes differ the way they
would on a real rig: some stand out in RGB, some only in the SWIR bands.
"""

from specad.synth.dataset import contrast_table, synthesize
from specad.synth.presets import CLASSES, PRESETS, Camera, SynthConfig

__all__ = ["CLASSES", "PRESETS", "Camera", "SynthConfig", "contrast_table", "synthesize"]
