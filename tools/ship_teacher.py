"""Copy a distilled teacher (`specad teacher distill`'s output) into the package as the shipped
``pdn-distilled`` teacher: float16 tensors (half the size; loading computes in float32) with
the source file's provenance, plus how the source was stored.

    .venv/bin/python tools/ship_teacher.py benchmarks/out/distill/pdn_lite0.safetensors \\
        --command "specad teacher distill ..." --photo-source ../shared/data/natural/coral
"""

from __future__ import annotations

import argparse
from pathlib import Path

from safetensors.torch import load_file

from specad.io import file_sha256
from specad.models.efficientad.teachers import DISTILLED, save_teacher_file, teacher_metadata


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("--command", help="the distill command as run from the repository root")
    parser.add_argument("--photo-source", action="append", default=[], help="a folder it used")
    args = parser.parse_args()
    step, made = teacher_metadata(args.source)
    if args.command:
        made["command"] = args.command
    made.setdefault("photo_sources", ["scikit-image and scikit-learn sample photos"])
    made["photo_sources"] = [*made["photo_sources"], *args.photo_source]
    made["stored_as"] = f"float16 copy of a float32 file with sha256 {file_sha256(args.source)}"
    state = {key: value.half() for key, value in load_file(args.source).items()}
    DISTILLED.parent.mkdir(parents=True, exist_ok=True)
    save_teacher_file(state, DISTILLED, step, made)
    print(DISTILLED)


if __name__ == "__main__":
    main()
