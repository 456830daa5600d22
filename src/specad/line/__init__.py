"""specad on a production line: `watch` scores every cube that arrives in a folder exactly once
(`inbox`: when a cube is complete; `journal`: exactly-once across crashes), and `serve` answers
other programs over HTTP (`batching`: one worker scoring concurrent requests together; `spool`:
uploads and the feedback queue; `metrics`: Prometheus series). `verdict`: the verdict both give
and the model slot a reload swaps. docs/line.md describes both.

The names callers need are importable from here.
"""

from specad.line.serve import Service, create_app, serve
from specad.line.verdict import ModelSlot, Verdict
from specad.line.watch import Watcher, WatchRun

__all__ = ["ModelSlot", "Service", "Verdict", "WatchRun", "Watcher", "create_app", "serve"]
