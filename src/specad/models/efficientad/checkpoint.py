"""Resumable training state on disk, one format for training and teacher distillation.

A checkpoint is a ``torch.save`` of tensors and plain containers (state dicts, RNG states, step
counters), written atomically and read back with ``weights_only=True``: a checkpoint file from
someone else can hold no code. Every problem reading one is a one-line error naming the file.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from specad.errors import SpecadError
from specad.io import atomic_file


def save_state(path: str | Path, **state: Any) -> None:
    """Write ``state`` to ``path`` atomically (a kill leaves the previous checkpoint whole)."""
    with atomic_file(path) as tmp:
        torch.save(state, tmp)


def load_state(path: str | Path, *required: str) -> dict[str, Any]:
    """The state saved at ``path``; each of ``required`` must be in it."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as err:
        raise SpecadError("no checkpoint here", path) from err
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError, OSError) as err:
        first = (str(err).splitlines() or [type(err).__name__])[0]
        raise SpecadError(f"corrupt or incompatible checkpoint ({first})", path) from err
    missing = [k for k in required if not isinstance(state, dict) or k not in state]
    if missing:
        raise SpecadError(f"corrupt or incompatible checkpoint (no {', '.join(missing)})", path)
    return state
