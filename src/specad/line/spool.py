"""Uploaded cubes on disk for `specad serve`, and the feedback queue they can join.

Every upload is streamed to a file in a private spool folder (readers take paths, and the body
never has to sit in memory whole). With a feedback folder the last ``keep`` scored cubes stay
there under the id `/score` returned, so that ``POST /feedback`` can queue a confirmed normal one
for ``specad update MODEL FEEDBACK --out NEW``: the cube is copied into FEEDBACK (atomically)
and a line joins ``FEEDBACK/feedback.jsonl`` (fsynced). Without one, each upload is deleted once
it is answered.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path

from specad.errors import SpecadError
from specad.io import atomic_file

FEEDBACK_LOG = "feedback.jsonl"
LABELS = ("normal",)
"""What feedback may confirm: ``specad update`` adds confirmed normals to a model."""


class Spool:
    """The spool folder (removed by `close`) and the scored cubes it keeps, oldest first."""

    def __init__(self, keep: int, feedback: Path | None = None) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="specad-serve-"))
        self.keep = keep if feedback is not None else 0
        self.feedback = feedback
        self._kept: OrderedDict[str, tuple[Path, dict[str, object]]] = OrderedDict()
        self._lock = threading.Lock()
        if feedback is not None:
            feedback.mkdir(parents=True, exist_ok=True)
            if not os.access(feedback, os.W_OK):
                raise SpecadError("cannot write to the feedback folder", feedback)

    def path(self, upload_id: str, suffix: str) -> Path:
        return self.folder / f"{upload_id}{suffix}"

    def scored(self, upload_id: str, path: Path, record: dict[str, object]) -> None:
        """Keep a scored upload for feedback (the oldest leaves beyond ``keep``), or delete it."""
        with self._lock:
            self._kept[upload_id] = (path, record)
            while len(self._kept) > self.keep:
                _, (old, _) = self._kept.popitem(last=False)
                old.unlink(missing_ok=True)

    def queue(self, upload_id: str, label: str) -> dict[str, object]:
        """Queue a kept cube for ``specad update``; queuing it again changes nothing."""
        if self.feedback is None:
            raise LookupError("feedback is off: start specad serve with --feedback DIR")
        if label not in LABELS:
            raise ValueError(
                f"label must be one of {', '.join(LABELS)}: specad update adds confirmed "
                f"normal cubes to a model, got '{label}'"
            )
        with self._lock:
            if upload_id not in self._kept:
                raise KeyError(
                    f"no scored cube with id '{upload_id}' is kept (the last {self.keep} are)"
                )
            path, record = self._kept[upload_id]
            target = self.feedback / path.name
            if target.exists():
                return {"queued": upload_id, "file": target.name, "already": True}
            with atomic_file(target) as tmp:
                shutil.copyfile(path, tmp)
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())
            line = {"id": upload_id, "label": label, "file": target.name} | record
            line["queued_at"] = round(time.time(), 3)
            with open(self.feedback / FEEDBACK_LOG, "a", encoding="utf-8") as log:
                log.write(json.dumps(line) + "\n")
                log.flush()
                os.fsync(log.fileno())
        return {"queued": upload_id, "file": target.name, "already": False}

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
