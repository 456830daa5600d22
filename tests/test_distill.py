"""Distilling a PDN teacher: the crops it learns from, the loop, its file and the command."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn

from specad.errors import SpecadError
from specad.models.efficientad.distill import NaturalCrops, distill, offline_photos
from specad.models.efficientad.network import PDN
from specad.models.efficientad.teachers import distilled_info, pdn_teacher, teacher_metadata


@pytest.fixture
def photos(tmp_path: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    files = []
    for i, (h, w) in enumerate([(48, 64), (80, 40)]):
        files.append(tmp_path / f"photo{i}.png")
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(files[-1])
    return files


def test_crops_are_seeded_varied_and_in_range(photos: list[Path]) -> None:
    crops = NaturalCrops(photos, 32)
    a = crops.sample(6, torch.Generator().manual_seed(1))
    b = crops.sample(6, torch.Generator().manual_seed(1))
    assert a.shape == (6, 3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1
    assert len({round(float(crop.mean()), 4) for crop in a}) == 6  # six different crops


def test_crops_refuse_no_photos_and_too_small_ones(photos: list[Path]) -> None:
    with pytest.raises(SpecadError, match="no photos"):
        NaturalCrops([], 32)
    with pytest.raises(SpecadError, match="photo1.png: photos must be at least 48 px"):
        NaturalCrops(photos, 48)  # photo1 is 40 px wide


def test_offline_photos_come_from_installed_wheels(tmp_path: Path) -> None:
    files = offline_photos()
    names = {p.name for p in files}
    assert {"chelsea.png", "camera.png", "china.jpg"} <= names
    assert all(p.is_file() for p in files)
    with pytest.raises(SpecadError, match="not found"):
        offline_photos([tmp_path / "missing"])


def _run(photos: list[Path], path: Path, until: int, resume: bool) -> PDN:
    torch.manual_seed(0)
    extractor = nn.Conv2d(3, 8, 8, stride=8)  # stride 8 on the 2x input: the PDN's S/4 grid
    torch.manual_seed(1)
    pdn = PDN(3, 8, padding=True)
    crops = NaturalCrops(photos, 32)
    distill(
        pdn, extractor, crops, 4, path, batch_size=2, resume=resume, until=until, stat_batches=2,
        checkpoint_every=2, provenance={"photos": [p.name for p in photos]},
    )  # fmt: skip
    return pdn


def test_distill_learns_and_resumes_bit_identically(photos: list[Path], tmp_path: Path) -> None:
    straight = _run(photos, tmp_path / "a.safetensors", 4, resume=False)
    _run(photos, tmp_path / "b.safetensors", 2, resume=False)
    resumed = _run(photos, tmp_path / "b.safetensors", 4, resume=True)
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    saved = load_file(tmp_path / "b.safetensors")
    assert torch.equal(saved["conv4.weight"], resumed.conv4.weight)
    with pytest.raises(SpecadError, match="4-step schedule"):
        distill(resumed, nn.Identity(), NaturalCrops(photos, 32), 8, tmp_path / "b.safetensors",
                resume=True)  # fmt: skip
    step, made = teacher_metadata(tmp_path / "b.safetensors")
    assert step == 4 and made["steps"] == 4 and made["photos"] == ["photo0.png", "photo1.png"]
    assert made["loss_last_50"] > 0
    # the file is a teacher: it loads unpadded, for 6 channels, with its own 8 outputs
    assert pdn_teacher(6, source=tmp_path / "b.safetensors").conv4.out_channels == 8


def test_distill_refuses_a_grid_that_does_not_match(photos: list[Path], tmp_path: Path) -> None:
    unpadded = PDN(3, 8)
    with pytest.raises(SpecadError, match="padded PDN"):
        distill(unpadded, nn.Conv2d(3, 8, 8, stride=8), NaturalCrops(photos, 40), 1,
                tmp_path / "t.safetensors", batch_size=1, stat_batches=1)  # fmt: skip
    assert not (tmp_path / "t.safetensors").exists()


def test_distilled_info_needs_provenance(tmp_path: Path) -> None:
    with pytest.raises(SpecadError, match="not found"):
        distilled_info(tmp_path / "none.safetensors")
    bare = tmp_path / "bare.safetensors"
    from safetensors.torch import save_file

    save_file({"conv1.weight": torch.zeros(1)}, bare)
    with pytest.raises(SpecadError, match="no provenance"):
        distilled_info(bare)
