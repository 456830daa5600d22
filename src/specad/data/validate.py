"""The structure of a dataset checked before any work, from file headers alone: every split
present, a mask for every anomalous image where the layout has masks, every header readable, one
channel count, masks the size of their images. Every problem is listed, one line each naming its
file, so that a user fixes them all in one go instead of meeting them one by one minutes into a
fit or an import (`DatasetProblems`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from specad.data.dataset import SPLITS, Dataset, Sample
from specad.errors import SpecadError
from specad.io import Header, cube_header
from specad.io.image import image_header


class DatasetProblems(SpecadError):
    """A dataset with structural problems: ``problems`` holds them, one line each, each naming
    its file. One problem is the message itself; several are counted in it and listed after it
    by the command line (`lines`)."""

    def __init__(self, root: Path, problems: list[str]) -> None:
        self.problems = list(problems)
        if len(problems) == 1:
            super().__init__(problems[0])
        else:
            listed = "; ".join(problems)
            super().__init__(f"{len(problems)} problems in the dataset: {listed}", root)

    @property
    def lines(self) -> list[str]:
        if len(self.problems) == 1:
            return [str(self)]
        count = f"{self.path}: {len(self.problems)} problems in the dataset"
        return [count] + [f"problem: {p}" for p in self.problems]


@dataclass
class Structure:
    """What the headers say: the problems, the samples that have one (not to be read further)
    and each readable sample's header (None where the format has no cheap header)."""

    problems: list[str] = field(default_factory=list)
    bad: set[Path] = field(default_factory=set)
    headers: dict[Path, Header | None] = field(default_factory=dict)


def check_structure(ds: Dataset, splits: Sequence[str] = SPLITS) -> Structure:
    """Every structural problem of ``ds`` (its discovery's first), from headers alone;
    ``splits`` are those that must not be empty."""
    found = Structure(list(ds.problems))
    for split in splits:
        if not ds.split(split):
            found.problems.append(f"{ds.where(split)}: the '{split}' split is empty or missing")
    channels: dict[Path, int] = {}
    for sample in ds.samples:
        try:
            header = _sample_header(sample)
            if sample.anomalous and sample.mask is not None:
                _check_mask(sample, header)
        except SpecadError as err:
            found.problems.append(str(err))
            found.bad.add(sample.path)
            continue
        found.headers[sample.path] = header
        if header is not None:
            channels[sample.path] = header.channels
    counts = Counter(channels.values())
    if len(counts) > 1:
        usual = counts.most_common(1)[0][0]
        detail = ", ".join(f"{n} with {c}" for c, n in sorted(counts.items()))
        found.problems += [
            f"{path}: {c} channels where the dataset's others have {usual} (channel counts "
            f"differ: {detail})"
            for path, c in channels.items()
            if c != usual
        ]
        found.bad.update(path for path, c in channels.items() if c != usual)
    return found


def raise_problems(ds: Dataset, splits: Sequence[str] = SPLITS) -> Dataset:
    """``ds``, or `DatasetProblems` listing every structural problem it has."""
    problems = check_structure(ds, splits).problems
    if problems:
        raise DatasetProblems(ds.root, problems)
    return ds


def _sample_header(sample: Sample) -> Header | None:
    if not sample.path.is_file():
        raise SpecadError("no such file", sample.path)
    header = cube_header(sample.path, sample.axes)
    if sample.depth is None or header is None:
        return header
    if not sample.depth.is_file():
        raise SpecadError(f"point cloud missing for {sample.path.name}", sample.depth)
    points = cube_header(sample.depth, "hwc")
    if points is None or points.channels != 3:
        raise SpecadError("expected a TIFF of X, Y, Z channels", sample.depth)
    if (points.height, points.width) != (header.height, header.width):
        raise SpecadError(
            f"point cloud is {points.height}x{points.width} but its image is "
            f"{header.height}x{header.width}",
            sample.depth,
        )
    return Header(header.height, header.width, header.channels + 1, "float32")


def _check_mask(sample: Sample, header: Header | None) -> None:
    """The mask exists (every image of a mask folder), each readable and its image's size."""
    assert sample.mask is not None
    if not sample.mask.exists():
        raise SpecadError(f"mask missing for the defect image {sample.path.name}", sample.mask)
    files = sample.mask_files()
    if not files:
        raise SpecadError(f"the mask folder of {sample.path.name} holds no PNG images", sample.mask)
    for path in files:
        mask = image_header(path)
        if header is not None and (mask.height, mask.width) != (header.height, header.width):
            raise SpecadError(
                f"mask is {mask.height}x{mask.width} but its cube is "
                f"{header.height}x{header.width}",
                path,
            )
