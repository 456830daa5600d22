"""Teacher sources: RGB-to-N adaptation identity, files, EfficientNet-Lite0, provenance."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from specad.errors import SpecadError
from specad.io import file_sha256
from specad.models.backbones import (
    EfficientNetLite0Teacher,
    adapt_first_conv,
    load_torch_state_dict,
)
from specad.models.efficientad.network import PDN
from specad.models.efficientad.teachers import (
    DISTILLED,
    adapt_teacher_file,
    pdn_teacher,
    teacher_info,
)


def _copies(x: torch.Tensor, n: int) -> torch.Tensor:
    """An N-channel cube whose channel j is RGB channel j mod 3."""
    return x[:, [j % 3 for j in range(n)]]


@pytest.fixture
def rgb_file(tmp_path: Path) -> Path:
    """A 3-channel small PDN teacher in anomalib's format (plain torch state dict)."""
    torch.manual_seed(0)
    path = tmp_path / "pretrained_teacher_small.pth"
    torch.save(PDN(3, 32).state_dict(), path)
    return path


@pytest.mark.parametrize("n", [4, 6, 7])
def test_pdn_repeat_identity(rgb_file: Path, n: int) -> None:
    rgb = pdn_teacher(3, source=rgb_file, out_channels=32).double()
    wide = pdn_teacher(n, source=rgb_file, out_channels=32).double()
    x = torch.rand(2, 3, 48, 48, dtype=torch.float64)
    # float64 forward; the adapted weights themselves are float32 (w / 3 is not exact for N = 7)
    torch.testing.assert_close(wide(_copies(x, n)), rgb(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("n", [4, 6])
def test_efficientnet_repeat_identity(n: int) -> None:
    rgb = EfficientNetLite0Teacher(3).double()
    wide = EfficientNetLite0Teacher(n).double()
    x = torch.rand(2, 3, 64, 64, dtype=torch.float64)
    out = wide(_copies(x, n))
    assert out.shape == (2, 152, 8, 8) and wide.out_channels == 152
    torch.testing.assert_close(out, rgb(x), rtol=0, atol=1e-5)
    wide.train()
    assert not wide.training and not any(p.requires_grad for p in wide.parameters())


def test_repeat_weights() -> None:
    w = torch.randn(5, 3, 3, 3)
    torch.testing.assert_close(adapt_first_conv(w, 6), torch.cat([w, w], dim=1) / 2)
    torch.testing.assert_close(adapt_first_conv(w, 3), w)
    two = adapt_first_conv(w, 2)
    torch.testing.assert_close(two, torch.stack([w[:, 0] + w[:, 2], w[:, 1]], dim=1))
    torch.testing.assert_close(adapt_first_conv(w, 1), w.sum(dim=1, keepdim=True))


def test_wavelength_mapping_keeps_filter_l1() -> None:
    w = torch.randn(8, 3, 3, 3)
    wavelengths = [450.0, 480.0, 560.0, 660.0, 800.0]
    adapted = adapt_first_conv(w, 5, wavelengths, mapping="wavelength")
    assert adapted.shape == (8, 5, 3, 3)
    torch.testing.assert_close(adapted.abs().sum(dim=(1, 2, 3)), w.abs().sum(dim=(1, 2, 3)))
    # B, B, G, R for the visible bands, the mean of R, G, B for 800 nm; then one scale per filter
    unscaled = torch.stack([w[:, 2], w[:, 2], w[:, 1], w[:, 0], w.mean(dim=1)], dim=1)
    scale = w.abs().sum(dim=(1, 2, 3)) / unscaled.abs().sum(dim=(1, 2, 3))
    torch.testing.assert_close(adapted, unscaled * scale.view(-1, 1, 1, 1))
    with pytest.raises(SpecadError, match="wavelength"):
        adapt_first_conv(w, 5, mapping="wavelength")


def test_adapt_teacher_file(rgb_file: Path, tmp_path: Path) -> None:
    out = adapt_teacher_file(rgb_file, tmp_path / "sub" / "teacher6.safetensors", 6)
    state, original = load_file(out), torch.load(rgb_file, weights_only=True)
    assert set(state) == set(original)
    assert state["conv1.weight"].shape == (128, 6, 4, 4)
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temp file left
    # an N-channel file loads as is
    direct = pdn_teacher(6, source=rgb_file, out_channels=32)
    from_file = pdn_teacher(6, source=out, out_channels=32)
    torch.testing.assert_close(from_file.conv1.weight, direct.conv1.weight)


def test_bad_teacher_files(tmp_path: Path, rgb_file: Path) -> None:
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    for path in (corrupt, tmp_path / "missing.safetensors"):
        with pytest.raises(SpecadError, match=path.name):
            load_torch_state_dict(path)
    assert pdn_teacher(6, source=rgb_file).conv4.out_channels == 32  # the file's own width
    with pytest.raises(SpecadError, match=rgb_file.name):  # a small PDN's file, not a medium's
        pdn_teacher(6, size="medium", source=rgb_file)
    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, wrong)
    with pytest.raises(SpecadError, match=wrong.name):
        pdn_teacher(6, source=wrong)


def test_random_teacher_is_seeded_and_frozen() -> None:
    a, b = pdn_teacher(4, seed=1, out_channels=8), pdn_teacher(4, seed=1, out_channels=8)
    torch.testing.assert_close(a.conv4.weight, b.conv4.weight)
    assert not a.training and not any(p.requires_grad for p in a.parameters())


def test_teacher_info() -> None:
    info = {entry["name"]: entry for entry in teacher_info()}
    assert set(info) == {"efficientnet-lite0", "pdn-distilled", "pdn-random", "pdn-file"}
    lite = info["efficientnet-lite0"]
    assert len(lite["sha256"]) == 64 and lite["version"] == "0.1.0"
    assert "Apache" in lite["licence"] and "Apache" in lite["weights_licence"]
    shipped = info["pdn-distilled"]
    assert shipped["sha256"] == file_sha256(DISTILLED)
    assert "chelsea.png" in shipped["data"] and "specad teacher distill" in shipped["command"]
    assert shipped["schedule"].split()[0].isdigit()


def test_shipped_teacher_loads_offline_for_any_channels(monkeypatch: pytest.MonkeyPatch) -> None:
    # the weights are package data: loading must not touch the network
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("the shipped teacher tried to use the network")

    monkeypatch.setattr(socket, "socket", no_network)
    rgb = pdn_teacher(3, source=DISTILLED)
    six = pdn_teacher(6, source=DISTILLED)
    assert rgb.conv4.out_channels == EfficientNetLite0Teacher(3).out_channels
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(six(_copies(x, 6)), rgb(x), rtol=1e-4, atol=1e-4)
        assert rgb(x).std() > 0


@pytest.mark.parametrize("size", [255, 256, 97])
def test_same_padding_computes_the_packages_convolutions(size: int) -> None:
    # SameConv2d only moves where the padding happens: every stride and kernel of Lite0,
    # odd and even input sizes, must give the package's dynamic-"same" numbers
    from efficientnet_lite_pytorch import EfficientNet

    from specad.models.backbones import SameConv2d, same_padding

    torch.manual_seed(0)
    theirs = EfficientNet.from_name("efficientnet-lite0", image_size=None).eval()
    ours = same_padding(EfficientNet.from_name("efficientnet-lite0", image_size=None).eval())
    ours.load_state_dict(theirs.state_dict())
    assert sum(isinstance(m, SameConv2d) for m in ours.modules()) >= 30
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(ours.extract_features(x), theirs.extract_features(x))
