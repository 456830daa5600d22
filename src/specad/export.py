"""ONNX export of a detector's map graph, and the measurement that picks its fastest runtime.

An export exists because onnxruntime runs the fp32 graph faster than torch eager, and the
int8 graph faster again on CPUs with VNNI (benchmarks/speed/results-intel-avx512-vnni.md,
benchmarks/speed/knn_speed_results.md, docs/runtimes.md). The files are opened and chosen among
by `specad.inference.runners`.
"""

from __future__ import annotations

import copy
import json
import math
import time
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from specad.errors import SpecadError
from specad.inference.detector import Detector
from specad.inference.runners import (
    CHOICE_FILE,
    DIGEST_KEY,
    INPUT,
    INT8_FILE,
    ONNX_FILE,
    OUTPUT,
    OnnxRunner,
    onnx_modules,
    weights_digest,
)
from specad.io import atomic_file
from specad.metrics import DEFAULT_FAR
from specad.models.base import BaseDetector, Exportable
from specad.models.modelfile import model_file
from specad.runtime import cpu_has_native_bf16, cpu_model, cpu_speed_flags

AGREEMENT = 0.995
"""A fast runtime must find fp32's top 1 % pixels on normal images with a pixel AUROC of at
least this (the project's rule: within 0.005 of fp32)."""
RANK_AGREEMENT = 0.99
"""The int8 export must also order the validation images' scores as fp32 does, with a Spearman
correlation of at least this, to get its own threshold and with it a place in ``auto``. Pixel
agreement alone let through int8 exports that cost image AUROC, with correlations on val/good
below this (docs/runtimes.md)."""
RANK_MIN_IMAGES = 20
"""Fewer validation images cannot measure that correlation (with 10, one swap of two neighbours
already costs 0.012): below this the int8 export keeps its threshold on pixel agreement alone."""


def calibration_images(x: Sequence, count: int = 32) -> Sequence:
    """Evenly spaced training images (or samples) that calibrate int8: int8 held AUROC on tray6
    with 32, not 16."""
    return x[:: max(1, len(x) // count)][:count]


def _stamp(path: Path, digest: str) -> None:
    """Record the weights' digest in the graph, and drop the empty optional inputs that the
    exporter writes at the end of some nodes: onnxruntime folds a zero ``Pad`` into the next
    convolution only when the pad has no such input (with them, knn's graph ran a sixth of
    its time in pads on a 2-core AMD EPYC)."""
    onnx, _ = onnx_modules()
    model = onnx.load(str(path))
    for node in model.graph.node:
        while node.input and not node.input[-1]:
            node.input.pop()
    del model.metadata_props[:]
    model.metadata_props.add(key=DIGEST_KEY, value=digest)
    onnx.save(model, str(path))


def export_onnx(
    model: torch.nn.Module, in_channels: int, size: int, out: Path, digest: str
) -> Path:
    """Write the model's anomaly-map graph (dynamic batch) to ``out``, atomically.

    The TorchScript-based exporter is used on purpose: its graph ran faster in onnxruntime than
    the dynamo exporter's for this network (benchmarks/speed/knn_speed_results.md), and it
    exports quickly.
    """
    onnx_modules()
    model = model.cpu().eval().to(memory_format=torch.contiguous_format)
    dummy = torch.zeros(1, in_channels, size, size)
    with atomic_file(out) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                model,
                (dummy,),
                str(tmp),
                input_names=[INPUT],
                output_names=[OUTPUT],
                dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
        except OSError:  # the disk, not the model: `atomic_file` names the file and the cause
            raise
        except Exception as err:  # the exporter raises many types, all meaning "unsupported"
            reason = str(err).splitlines()[0][:160]
            raise SpecadError(f"this model cannot be exported to ONNX ({reason})", out) from err
        _stamp(tmp, digest)
    return out


def quantize_int8(
    fp32: Path,
    out: Path,
    calibration: Iterable[np.ndarray],
    digest: str,
    scope: str = "",
) -> Path:
    """Static int8 quantisation (per-channel weights, uint8 activations) calibrated on images,
    of the nodes whose names start with ``scope`` ("": every node onnxruntime quantises).

    Weights use 7 of their 8 bits (``reduce_range``). Without VNNI, onnxruntime's u8s8 kernels
    add pairs of uint8 x int8 products in 16-bit lanes, which can saturate (2 x 255 x 127 >
    32767); with 7-bit weights they cannot (2 x 255 x 63 < 32767). On an AVX2-only CPU 8-bit
    weights left the benchmark model's int8 maps below `AGREEMENT` and 7-bit ones above it, at
    the same speed (docs/runtimes.md). On a VNNI CPU the lost bit buys nothing:
    `measure_runtimes` still decides whether int8 runs.
    """
    onnx, _ = onnx_modules()
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {INPUT: np.ascontiguousarray(batch, np.float32)}

    with atomic_file(out) as tmp:
        pre = tmp.with_name(tmp.name + ".pre.onnx")
        try:
            quant_pre_process(str(fp32), str(pre))
            names = [n.name for n in onnx.load(str(pre)).graph.node if n.name.startswith(scope)]
            quantize_static(
                str(pre),
                str(tmp),
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                reduce_range=True,
                nodes_to_quantize=names if scope else None,
            )
        finally:
            pre.unlink(missing_ok=True)
        _stamp(tmp, digest)
    return out


def measure_runtimes(
    detector: Detector, model_path: str | Path, images: torch.Tensor, repeats: int = 3
) -> dict:
    """Time each runtime these weights have on this CPU and check its maps against torch fp32;
    the fastest accurate one is written to ``runtime.json`` beside the model with the CPU model,
    for ``auto``. Speed is measured two ways, as specad runs (median of ``repeats``): one image
    at a time (``predict``) and the whole batch ``images`` at once (``evaluate``, batches of
    8), and ranked by their geometric mean. On a 2-core AMD EPYC, knn's ONNX graph scored 46
    images/s one at a time against torch's 30, but 38 against 42 in a batch of 8: the batch
    alone chose torch. bf16 is measured only on CPUs that have it in hardware, int8 only with
    its own threshold."""
    from sklearn.metrics import roc_auc_score

    path = model_file(model_path)
    detector.use_runtime("torch")
    reference = detector.maps(images)
    top = reference >= torch.quantile(reference.flatten()[:: max(1, reference.numel() >> 20)], 0.99)
    singles = images[: min(len(images), 4)].split(1)

    def median_seconds(batches: Sequence[torch.Tensor]) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            for b in batches:
                detector.maps(b)
            times.append(time.perf_counter() - start)
        return float(np.median(times))

    rows: dict[str, dict[str, float]] = {}
    own = detector.model.calibration_.runtime_thresholds
    for runtime in detector.model.runtimes:
        if (runtime == "bf16" and not cpu_has_native_bf16()) or (
            runtime == "int8" and "int8" not in own
        ):
            continue
        try:
            detector.use_runtime(runtime, path)
        except SpecadError:  # no such export
            continue
        maps = detector.maps(images)  # also the warm-up: first-call allocations, kernel choice
        agreement = float(roc_auc_score(top.flatten().numpy(), maps.flatten().float().numpy()))
        one = len(singles) / median_seconds(singles)
        batch = len(images) / median_seconds([images])
        rows[runtime] = {
            "images_per_s": round(math.sqrt(one * batch), 2),
            "images_per_s_b1": round(one, 2),
            f"images_per_s_b{len(images)}": round(batch, 2),
            "agreement": round(agreement, 4),
        }
    accurate = [r for r, row in rows.items() if row["agreement"] >= AGREEMENT]
    choice = max(accurate, key=lambda r: rows[r]["images_per_s"])
    record = {
        "cpu": cpu_model(),
        "cpu_flags": cpu_speed_flags(),
        "weights": weights_digest(path),
        "choice": choice,
        "rule": f"fastest runtime (geometric mean of images/s one by one and in a batch) whose "
        f"maps find fp32's top 1 % pixels with AUROC >= {AGREEMENT}",
        "images": len(images),
        "runtimes": rows,
    }
    with atomic_file(path.with_name(CHOICE_FILE)) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    detector.use_runtime(choice, path)
    return record


def exportable(model: BaseDetector, path: Path) -> Exportable:
    """``model`` where it is `Exportable`; else one line naming its file ``path``."""
    if not isinstance(model, Exportable):
        raise SpecadError(
            f"{model.kind} models are not exportable (their maps have no ONNX graph)", path
        )
    return model


def export_detector(
    detector: Detector,
    model_path: str | Path,
    images: torch.Tensor | None = None,
    *,
    int8: bool = False,
    validation: torch.Tensor | None = None,
    far: float = DEFAULT_FAR,
) -> dict[str, float]:
    """Write ``model.onnx`` (and ``model.int8.onnx``) beside a saved `Exportable` model (knn's:
    the patch map, `specad.models.knn_graph.PatchMap`; spectral maps stay in torch).

    ``images`` are preprocessed normal images [B, C, S, S]: the int8 calibration set and the
    parity check. With ``validation`` images the int8 export gets its own threshold, at the
    false-alarm rate ``far``, saved with the model, if it ranks their scores as fp32 does
    (`RANK_AGREEMENT`, from `RANK_MIN_IMAGES` of them); only then does ``auto`` choose it.
    Returns each export's largest absolute map difference from the torch fp32 maps on
    ``images`` and, where measured, ``int8_rank``: that Spearman correlation. An fp32 export that
    differs by more than 1e-3 is refused.
    """
    path = model_file(model_path)
    model = exportable(detector.model, path)
    size = detector.meta.preprocess.image_size
    if not size:
        raise SpecadError("ONNX export needs a fixed image_size (model.json says 0)", path)
    if int8 and images is None:
        raise SpecadError("int8 export needs calibration images", path)
    channels = len(detector.meta.preprocess.channels)
    if images is None:
        images = torch.rand(2, channels, size, size, generator=torch.Generator().manual_seed(0))
    digest = weights_digest(path)
    batches = images.split(8)
    with torch.inference_mode():
        reference = torch.cat(
            [detector.model.score_maps(b.to(detector.device)).cpu() for b in batches]
        )

    def parity(runner: OnnxRunner) -> float:
        maps = torch.cat([model.export_maps(b, runner(b)) for b in batches])
        return float((maps - reference).abs().max())

    network = copy.deepcopy(model.export_graph())
    onnx = export_onnx(network, channels, size, path.with_name(ONNX_FILE), digest)
    fp32_runner = OnnxRunner(onnx, digest)
    diffs = {"onnx": parity(fp32_runner)}
    # fp32 kernels sum in other orders; knn's distances by matrix product lose digits near 0
    allowed = 1e-3 * max(1.0, float(reference.abs().max()))
    if diffs["onnx"] > allowed:
        onnx.unlink()
        raise SpecadError(
            f"ONNX export's maps differ from torch by {diffs['onnx']:.2g} (allowed "
            f"{allowed:.2g}: 0.1 % of the largest map value)",
            onnx,
        )
    if int8:  # a new int8 file needs a new threshold, or none
        singles = (b.float().numpy() for b in images.split(1))
        int8_file = quantize_int8(
            onnx, path.with_name(INT8_FILE), singles, digest, model.int8_scope
        )
        runner = OnnxRunner(int8_file, digest)
        diffs["int8"] = parity(runner)
        detector.model.calibrate(None, far, runtime="int8")  # the old file's threshold is void
        if validation is not None:
            scores = _scores(model, runner, validation)
            if len(validation) >= RANK_MIN_IMAGES:
                fp32 = _scores(model, fp32_runner, validation)
                diffs["int8_rank"] = _spearman(fp32, scores)
            if diffs.get("int8_rank", 1.0) >= RANK_AGREEMENT:
                detector.model.calibrate(scores, far, runtime="int8")
            else:
                warnings.warn(
                    f"the int8 export orders the validation images' scores unlike fp32 "
                    f"(Spearman {diffs['int8_rank']}, below {RANK_AGREEMENT}): `auto` will not "
                    f"choose it; `--runtime int8` still runs it",
                    stacklevel=2,
                )
        # the weights are unchanged, so the exports' digest still holds
        with atomic_file(path) as tmp:
            detector.model.save(tmp)
    return diffs


def _scores(model: Exportable, runner: OnnxRunner, images: torch.Tensor) -> np.ndarray:
    """Image scores of ``images`` through an export (fp32 ONNX stands in for torch: its maps
    were just checked equal, and it is faster on a CPU)."""
    maps = (model.export_maps(b, runner(b)) for b in images.split(8))
    return np.array([BaseDetector.score(m) for b in maps for m in b])


def _spearman(reference: np.ndarray, scores: np.ndarray) -> float:
    """Rank correlation; 1.0 where the reference scores are all tied (nothing to order), 0.0
    where only the others are."""
    from scipy.stats import spearmanr

    if np.ptp(reference) == 0:
        return 1.0
    rho = spearmanr(reference, scores).statistic
    return 0.0 if np.isnan(rho) else round(float(rho), 4)
