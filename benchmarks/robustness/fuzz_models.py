"""Generated parameters and model files: `--set` items for fitting and training, and mutations
of both files of a saved model of every registered detector (issue 30).

The only allowed outcome is a result or specad's one-line error. Shared by
``tests/test_validation.py`` (a few dozen cases each) and ``fuzz.py`` (thousands).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import resource
import warnings
from pathlib import Path

import numpy as np
from fuzz_runner import clear_peak, status_mb
from fuzzing import _yaml_seeds
from hypothesis import strategies as st

from specad.data import load_dataset
from specad.errors import SpecadError
from specad.inference import Detector
from specad.io import Cube
from specad.models.efficientad.config import load_config
from specad.models.modelfile import ModelMeta

VALUES = (
    "", "abc", "-1", "0", "1", "15", "16", "1024", "1025", "1e400", "-1e400", "1.0e+400", ".nan",
    ".inf", "null", "true", "[", "{", "]", "[1, 2", "{a: ", "[]", "{}", "[0, 99]", "99999999999999",
    "!!python/object:os.system", "&a [*a]", "0.5", "1e-12", "'x'", "- a",
)  # fmt: skip
"""Interesting `--set` values: edges of every bound, broken YAML, YAML tags, huge numbers."""
JSON_VALUES = (
    None, True, -1, 0, 1, 3, 15, 16, 1024, 1025, 10**12, 10**40, -(10**12), 1e308, 0.5, -0.0,
    float("inf"), float("nan"), "", "abc", "1", [], [0], [0, 99], [1e308] * 3, {}, {"a": 1},
    [[0]], list(range(2000)),
)  # fmt: skip
"""Values a mutation writes into a ``model.json`` field or a saved fitted value."""


_START_MB = [0.0]
"""Resident memory at the last `reset_peak_rss`."""


def reset_peak_rss() -> None:
    """Reset this process's resident high-water mark and note the memory held now, so that a
    measurement counts only what came after."""
    clear_peak()
    _START_MB[0] = status_mb("VmRSS") or 0.0


def peak_rss_mb(*, growth: bool = True) -> float:
    """Peak resident memory since `reset_peak_rss` (``VmHWM``), as growth above the memory held
    at the reset or, with ``growth=False``, in all; the lifetime peak where /proc is not there."""
    peak = status_mb("VmHWM")
    if peak is None:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    return peak - _START_MB[0] if growth else peak


def detector_keys(kind: str) -> list[str]:
    """A detector's parameters and the fit options: the keys worth generating."""
    from specad.fit import FitOptions
    from specad.models.registry import DETECTORS

    fields = [f.name for f in dataclasses.fields(DETECTORS[kind])]  # type: ignore[arg-type]
    return fields + list(FitOptions.model_fields)


@st.composite
def set_items(draw: st.DrawFn, keys: list[str]) -> list[str]:
    """One to three ``key=value`` items: known or made-up keys, interesting or random values."""
    key = st.sampled_from(keys) | st.text("abcxyz._", max_size=12)
    value = st.sampled_from(VALUES) | st.text(max_size=16)
    items = st.tuples(key, value).map(lambda kv: f"{kv[0]}={kv[1]}")
    return draw(st.lists(items | st.text(max_size=12), min_size=1, max_size=3))


def check_fit_sets(kind: str, items: list[str], dataset: Path | None = None) -> None:
    """``specad fit KIND`` with ``--set items``: the settings are validated, or refused with one
    line naming the key; accepted ones are fitted on ``dataset`` when given."""
    from specad.cli.models import fit_settings
    from specad.data import load_dataset
    from specad.fit import fit_on_dataset

    try:
        settings = fit_settings(kind, items)
    except SpecadError as err:
        _one_line(err)
        return
    if dataset is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                fit_on_dataset(kind, load_dataset(dataset), **settings)
            except SpecadError as err:
                _one_line(err)


def check_train_sets(tmp: Path, items: list[str]) -> None:
    """``specad train -c CONFIG --set items``: a validated config or one line."""
    (tmp / "c.yaml").write_bytes(_yaml_seeds(tmp)[0])
    try:
        load_config(tmp / "c.yaml", items)
    except SpecadError as err:
        _one_line(err)


def _one_line(err: SpecadError) -> None:
    text = str(err)
    assert text and "\n" not in text and len(text) < 2000, f"not one short line: {text!r}"


def _paths(node: object, at: tuple = ()) -> list[tuple]:
    """Every key path of a JSON document, lists by index (at most 16 elements each)."""
    out = [at] if at else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*at, k))
    elif isinstance(node, list):
        for i, v in enumerate(node[:16]):
            out += _paths(v, (*at, i))
    return out


@st.composite
def mutated_json(draw: st.DrawFn, doc: dict) -> dict:
    """``doc`` with one to three fields replaced by a `JSON_VALUES` value, deleted, or added."""
    doc = json.loads(json.dumps(doc))
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(doc)
        if not paths:
            break
        path = paths[draw(st.integers(0, len(paths) - 1))]
        parent = doc
        for part in path[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["set", "set", "set", "delete", "add"]))
        if action == "delete" and isinstance(parent, dict):
            del parent[path[-1]]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.text("abcz_", min_size=1, max_size=8))] = copy.deepcopy(
                draw(st.sampled_from(JSON_VALUES))
            )
        else:
            parent[path[-1]] = copy.deepcopy(draw(st.sampled_from(JSON_VALUES)))
    return doc


def check_model(folder: Path) -> None:
    """Load a (mutated) model: one line, or a detector that scores a small cube of the channel
    count it asks for without error or with one line."""
    try:
        det = Detector.load(folder, device="cpu", runtime="torch")
        pre = det.meta.preprocess
        data = np.random.default_rng(0).random((20, 18, pre.source_channels), np.float32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            det.predict(Cube(data + 0.2))
    except SpecadError as err:
        _one_line(err)


def saved_models(root: Path) -> dict[str, Path]:
    """A small saved model of every registered detector (`specad.models.registry.DETECTORS`),
    so a detector added there is fuzzed without a change here."""
    import torch
    from fuzz_data import make_dataset

    from specad.data import Preprocess
    from specad.fit import fit_on_dataset
    from specad.models.efficientad.build import build_efficientad
    from specad.models.efficientad.config import EfficientADConfig as Config
    from specad.models.registry import DETECTORS, fit_on_dataset_names

    ds = load_dataset(make_dataset(root / "ds", size=32, counts=(2, 2, 1), defects=1))
    models = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # thresholds from two validation scores warn
        for kind, cls in DETECTORS.items():
            folder = models[kind] = root / kind
            if kind in fit_on_dataset_names():
                size = 32 if cls.input_size else None
                fit_on_dataset(kind, ds, device="cpu", image_size=size).save(folder)
                continue
            cfg = Config.model_validate({"data": {"root": str(root), "image_size": 64}})
            network = build_efficientad(cfg.model, 3, 64).eval()
            det = cls.from_network(network, cfg.model, cfg.training, 3, data=root)  # type: ignore[attr-defined]
            det.calibrate([1.0, 2.0])
            pre = Preprocess(3, [0, 1, 2], 64, [0.4] * 3, [0.1] * 3)
            meta = ModelMeta(kind, pre, ["R", "G", "B"], None, None)
            with torch.no_grad():
                Detector(det, meta, "cpu").save(folder)
    return models


@dataclasses.dataclass(frozen=True, repr=False)
class State:
    """A saved detector's tensors and metadata (`specad.models.registry.read_file`), with a
    short repr: Hypothesis shows its strategies' arguments, and a network's weights are long."""

    tensors: dict
    metadata: dict[str, str]

    def __repr__(self) -> str:
        return f"State({len(self.tensors)} tensors)"


@st.composite
def mutated_state(draw: st.DrawFn, state: State) -> tuple[dict, dict]:
    """A saved detector's tensors and metadata with one tensor reshaped, emptied, retyped,
    made non-finite, dropped or added, or a fitted value or parameter mutated."""
    import torch

    tensors, metadata = dict(state.tensors), dict(state.metadata)
    names = sorted(tensors)
    kind = draw(st.sampled_from(["values", "params"] + ["tensor"] * 2 * bool(names) + ["add"]))
    if kind in ("values", "params"):
        key = "fitted" if kind == "values" else "params"
        metadata[key] = json.dumps(draw(mutated_json(json.loads(metadata[key]))))
        return tensors, metadata
    if kind == "add":
        tensors[draw(st.sampled_from(["bank", "mean", "x", "extractor.stem.weight"]))] = torch.ones(
            2
        )
        return tensors, metadata
    name = draw(st.sampled_from(names))
    t = tensors[name]
    change = draw(st.sampled_from(["drop", "empty", "row", "flat", "dim", "dtype", "nan", "inf"]))
    if change == "drop":
        del tensors[name]
    elif change == "empty":
        tensors[name] = t.flatten()[:0]
    elif change == "row":
        tensors[name] = torch.cat([t, t[:1]]) if t.ndim else t[None]
    elif change == "flat":
        tensors[name] = t.flatten()
    elif change == "dim":
        tensors[name] = t[None]
    elif change == "dtype":
        dtypes = [torch.int32, torch.uint8, torch.bool, torch.float16, torch.float64, torch.int64]
        tensors[name] = t.to(draw(st.sampled_from(dtypes)))
    elif t.numel() and t.is_floating_point():
        t = t.clone()
        t.view(-1)[draw(st.integers(0, t.numel() - 1))] = float(change)
        tensors[name] = t
    return tensors, metadata


def write_state(folder: Path, tensors: dict, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    contiguous = {k: v.contiguous() for k, v in tensors.items()}
    save_file(contiguous, str(folder / "model.safetensors"), metadata=metadata)
