"""A saved model's bytes depend only on its content, in whichever process wrote it: the promise
that a resumed training ends byte-identical rests on it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file, safe_open

WRITE = """
import sys, torch
from specad.io import save_tensors
tensors = {name: torch.arange(n, dtype=torch.float32) for n, name in enumerate("qwertyuiop", 1)}
meta = {key: key * 3 for key in ("format", "kind", "params", "fitted", "step", "provenance")}
save_tensors(tensors, sys.argv[1], meta)
"""


def test_files_written_by_different_processes_are_byte_identical(tmp_path: Path) -> None:
    paths = [tmp_path / f"{i}.safetensors" for i in range(4)]
    for path in paths:  # safetensors alone orders its header differently in most processes
        subprocess.run([sys.executable, "-c", WRITE, str(path)], check=True, timeout=120)
    assert len({p.read_bytes() for p in paths}) == 1
    tensors = load_file(paths[0])
    assert tensors["p"].tolist() == list(range(10))
    with safe_open(paths[0], framework="pt") as f:
        assert f.metadata()["kind"] == "kindkindkind"
