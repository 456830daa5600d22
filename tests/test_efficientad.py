"""EfficientAD model: anomalib-compatible PDNs, grid derivation, maps, losses, fitting."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from specad.errors import SpecadError
from specad.models.efficientad.build import build_efficientad
from specad.models.efficientad.config import ModelConfig, student_padding
from specad.models.efficientad.network import PDN, EfficientAD, normalised_stack
from specad.models.efficientad.train_loop import ae_augment
from specad.models.maps import normalise, quantile
from specad.spectral import rgb_sources

# anomalib's PDN_S / PDN_M state dicts (teacher: 3 input channels, 384 output channels).
ANOMALIB_SMALL = {
    "conv1.weight": (128, 3, 4, 4),
    "conv1.bias": (128,),
    "conv2.weight": (256, 128, 4, 4),
    "conv2.bias": (256,),
    "conv3.weight": (256, 256, 3, 3),
    "conv3.bias": (256,),
    "conv4.weight": (384, 256, 4, 4),
    "conv4.bias": (384,),
}
ANOMALIB_MEDIUM = {
    "conv1.weight": (256, 3, 4, 4),
    "conv1.bias": (256,),
    "conv2.weight": (512, 256, 4, 4),
    "conv2.bias": (512,),
    "conv3.weight": (512, 512, 1, 1),
    "conv3.bias": (512,),
    "conv4.weight": (512, 512, 3, 3),
    "conv4.bias": (512,),
    "conv5.weight": (384, 512, 4, 4),
    "conv5.bias": (384,),
    "conv6.weight": (384, 384, 1, 1),
    "conv6.bias": (384,),
}


@pytest.mark.parametrize(
    ("size", "expected"), [("small", ANOMALIB_SMALL), ("medium", ANOMALIB_MEDIUM)]
)
def test_pdn_state_dict_matches_anomalib(size: str, expected: dict[str, tuple[int, ...]]) -> None:
    state = PDN(3, 384, size).state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    assert list(state) == list(expected)


@pytest.mark.parametrize(("padding", "grid"), [(False, 56), (True, 64)])
def test_pdn_grid_at_256(padding: bool, grid: int) -> None:
    pdn = PDN(5, 8, "small", padding)
    assert pdn(torch.zeros(1, 5, 256, 256)).shape == (1, 8, grid, grid)


def _model(in_channels: int = 4, image_size: int | tuple[int, int] = 64) -> EfficientAD:
    torch.manual_seed(0)
    return EfficientAD(in_channels, image_size, PDN(in_channels, 16).eval())


@pytest.mark.parametrize(("size", "grid"), [((64, 64), (8, 8)), ((80, 96), (12, 16))])
def test_grid_border_and_map_sizes(size: tuple[int, int], grid: tuple[int, int]) -> None:
    model = _model(image_size=size).eval()
    x = torch.rand(2, 4, *size)
    assert model.grid == grid
    assert model.map_border == (4, 4)  # anomalib's pad_maps for an unpadded PDN
    assert model.autoencoder(x).shape == (2, 16, *grid)
    map_st, map_ae = model.maps(x)
    assert map_st.shape == map_ae.shape == (2, 1, *grid)
    assert model.anomaly_map(x).shape == (2, 1, *size)


def test_padded_teacher_needs_no_border_and_student_is_pooled() -> None:
    model = EfficientAD(3, 64, PDN(3, 8, padding=True))  # teacher grid 16, student grid 8 -> 16
    assert model.grid == (16, 16)
    assert model.map_border == (0, 0)
    assert model.maps(torch.rand(1, 3, 64, 64))[0].shape == (1, 1, 16, 16)


def test_loss_is_finite_and_backpropagates() -> None:
    model = _model().train()
    x = torch.rand(2, 4, 64, 64)
    losses = model.loss(
        x, ae_augment(x, torch.Generator().manual_seed(0)), torch.rand(2, 4, 64, 64)
    )
    assert set(losses) == {"hard", "penalty", "ae", "stae", "total"}
    assert all(torch.isfinite(v) for v in losses.values())
    losses["total"].backward()
    assert model.student.conv1.weight.grad is not None
    assert model.autoencoder.encoder["enconv1"].weight.grad is not None
    assert all(p.grad is None for p in model.teacher.parameters())


def test_loss_equals_the_paper_computed_on_full_student_outputs() -> None:
    """Computing only the needed half of the student per image changes no loss value."""
    model = _model().train()
    model.autoencoder.eval()  # no dropout, so both computations see the same autoencoder
    gen = torch.Generator().manual_seed(0)
    x, penalty = torch.rand(2, 4, 64, 64, generator=gen), torch.rand(2, 4, 64, 64, generator=gen)
    x_aug = ae_augment(x, gen)
    c = model.teacher_channels
    with torch.no_grad():
        teacher, teacher_aug = model.teacher_features(x), model.teacher_features(x_aug)
        student, student_aug = model.student(x), model.student(x_aug)
        distance = (teacher - student[:, :c]).pow(2)
        ae = model.autoencoder(x_aug)
        expected = {
            "hard": distance[distance >= torch.quantile(distance.flatten(), 0.999)].mean(),
            "ae": (teacher_aug - ae).pow(2).mean(),
            "stae": (ae - student_aug[:, c:]).pow(2).mean(),
            "penalty": model.student(penalty)[:, :c].pow(2).mean(),
        }
        got = model.loss(x, x_aug, penalty)
        cached = model.loss(x, x_aug, penalty, teacher_x=teacher)
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, msg=key)
        torch.testing.assert_close(cached[key], value, msg=key)


def test_quantile_matches_torch() -> None:
    values = torch.randn(3, 5, 7, 11, generator=torch.Generator().manual_seed(1))
    for q in (0.0, 0.5, 0.9, 0.995, 0.999, 1.0):
        torch.testing.assert_close(quantile(values, q), torch.quantile(values.flatten(), q))


def test_fit_teacher_stats_and_quantiles() -> None:
    model = _model()
    batches = [torch.rand(2, 4, 64, 64) for _ in range(3)]
    model.fit_teacher_stats(batches)
    with torch.no_grad():
        feats = model.teacher(torch.cat(batches))
    torch.testing.assert_close(model.teacher_mean.flatten(), feats.mean(dim=(0, 2, 3)))
    std = feats.std(dim=(0, 2, 3), correction=0)
    torch.testing.assert_close(model.teacher_std.flatten(), std, rtol=1e-4, atol=1e-6)

    cache = model.fit_teacher_stats(batches, keep=True)
    expected = (feats - model.teacher_mean) / model.teacher_std
    torch.testing.assert_close(cache, expected)

    model.train()
    model.fit_quantiles(iter(batches))
    assert model.training  # mode restored
    model.eval()
    with torch.no_grad():
        map_st = torch.cat([model.maps(x)[0] for x in batches])
    torch.testing.assert_close(model.st_p90, torch.quantile(map_st.flatten(), 0.9))
    assert model.ae_p995 > model.ae_p90
    assert set(model.state_dict()) >= {"teacher_mean", "teacher_std", "st_p90", "ae_p995"}
    with pytest.raises(SpecadError):
        model.fit_quantiles([])


def test_ae_augment_is_seeded_and_keeps_shape() -> None:
    x = torch.rand(3, 5, 16, 16)
    a = ae_augment(x, torch.Generator().manual_seed(3))
    assert a.shape == x.shape
    torch.testing.assert_close(a, ae_augment(x, torch.Generator().manual_seed(3)))
    grey = x.mean(dim=1, keepdim=True).expand_as(x)
    assert torch.allclose(
        ae_augment(grey, torch.Generator().manual_seed(0)).std(dim=1),
        torch.zeros(3, 16, 16),
        atol=1e-6,
    )  # grey stays grey


def test_rgb_sources() -> None:
    assert rgb_sources(4) == [(0,), (1,), (2,), (0,)]
    assert rgb_sources(2) == [(0, 2), (1,)]
    assert rgb_sources(3, "wavelength", [460.0, 900.0, 640.0]) == [(2,), (0, 1, 2), (0,)]
    with pytest.raises(SpecadError, match="wavelength"):
        rgb_sources(3, "wavelength")


def test_normalised_stack_frees_each_batch_once_copied() -> None:
    """The teacher cache is built without holding the raw features and the result at once."""
    batches = [torch.rand(2, 3, 4, 4), torch.rand(1, 3, 4, 4)]
    mean, std = torch.rand(1, 3, 1, 1), torch.rand(1, 3, 1, 1) + 0.5
    expected = (torch.cat(batches) - mean) / std
    features = list(batches)
    torch.testing.assert_close(normalised_stack(features, mean, std), expected)
    assert features == []


@pytest.mark.parametrize("ae_weight", [0.0, 0.25, 1.0])
def test_ae_weight_sets_each_maps_share(ae_weight: float) -> None:
    model = _model().eval()
    model.ae_weight = ae_weight
    x = torch.rand(1, 4, 64, 64)
    map_st, map_ae = (normalise(m, 0.0, 0.1) for m in model.maps(x))
    expected = torch.nn.functional.pad((1 - ae_weight) * map_st + ae_weight * map_ae, (4,) * 4)
    expected = torch.nn.functional.interpolate(expected, size=(64, 64), mode="bilinear")
    assert torch.allclose(model.anomaly_map(x), expected, atol=1e-6)


def test_lite0_student_is_padded_onto_half_its_grid_and_exports_to_onnx(tmp_path: Path) -> None:
    """Unpadded, the student's 56 cells at 256 px pool onto the teacher's 32 by a fraction,
    which ONNX cannot export; by default a Lite0 model pads its student (64 -> 32)."""
    pytest.importorskip("onnxruntime")
    from specad.export import OnnxRunner, export_onnx

    assert not student_padding(ModelConfig(teacher="efficientnet-lite0", padding=False))
    assert not student_padding(ModelConfig())  # PDN teachers stay as anomalib's
    model = build_efficientad(ModelConfig(teacher="efficientnet-lite0"), 1, 256).eval()
    assert model.grid == (32, 32)
    assert model.student(torch.zeros(1, 1, 256, 256)).shape[-2:] == (64, 64)
    x = torch.rand(2, 1, 256, 256)
    onnx = export_onnx(model, 1, 256, tmp_path / "m.onnx", "digest")
    with torch.no_grad():
        reference = model.anomaly_map(x)
    assert torch.allclose(OnnxRunner(onnx)(x), reference, atol=1e-4)


@pytest.mark.slow
def test_the_autoencoder_finds_a_missing_part_that_patches_cannot() -> None:
    # EfficientAD's reason to exist beside patch methods: with the blue disk left out, every
    # patch of the image still occurs in normal ones (benchmarks/accuracy/logical_results.md)
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from specad.models.efficientad.config import PenaltyConfig, TrainConfig, Training
    from specad.models.efficientad.detector import EfficientADDetector
    from specad.synth.logical import two_part_tray

    rng = np.random.default_rng(0)
    normal = torch.stack([two_part_tray("normal", 64, 0.5, 0.1, rng) for _ in range(60)])
    missing = torch.stack([two_part_tray("missing", 64, 0.5, 0.1, rng) for _ in range(10)])
    training = Training(
        train=TrainConfig(steps=150, device="cpu", export=[]), penalty=PenaltyConfig(enabled=False)
    )
    det = EfficientADDetector(model=ModelConfig(teacher="pdn-random"), training=training)
    det.fit_maps(normal[:40], normal[40:50])
    with torch.no_grad():
        student_teacher, autoencoder = det.trained_network.maps(torch.cat([normal[50:], missing]))
    labels = [0] * 10 + [1] * 10

    def auroc(maps: torch.Tensor) -> float:
        return float(roc_auc_score(labels, maps.amax((1, 2, 3)).numpy()))

    assert auroc(autoencoder) >= 0.95
    assert auroc(autoencoder) > auroc(student_teacher) + 0.3
