"""A fitted model run on cubes: the `Detector` users load (`detector`), the runtimes its maps
are computed on (`runners`: torch, or an ONNX export through onnxruntime), native-resolution
tiling (`tiling`), and scoring files and splits the same way locally and on Dask workers
(`scoring`).

The names callers need are importable from here.
"""

from specad.inference.detector import Detector, Prediction
from specad.inference.scoring import SplitResults, run_split, score_file, score_files

__all__ = ["Detector", "Prediction", "SplitResults", "run_split", "score_file", "score_files"]
