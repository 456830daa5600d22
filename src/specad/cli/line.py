"""``specad watch`` and ``specad serve``: a model on the line (`specad.line`, docs/line.md)."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated

import typer

from specad.cli.app import Device, Runtime, app, err, finite, out

Model = Annotated[Path, typer.Argument(help="Model file or run folder.")]


@app.command()
def watch(
    model: Model,
    inbox: Annotated[Path, typer.Argument(help="Folder the camera writes cubes into.")],
    out_dir: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for verdicts.jsonl, maps and overlays.")
    ],
    settle: Annotated[
        float,
        typer.Option(
            min=0,
            callback=finite("--settle"),
            help="Seconds a file's size must stay unchanged before it is read, unless it was "
            "renamed into the inbox (complete at once).",
        ),
    ] = 2.0,
    done: Annotated[
        Path | None, typer.Option(help="Move each scored cube out of the inbox into this folder.")
    ] = None,
    poll: Annotated[
        bool, typer.Option(help="Scan the folder instead of waiting for events (network shares).")
    ] = False,
    batch: Annotated[
        int,
        typer.Option(
            min=1, max=256, help="Most cubes that arrived together scored as one batch of maps."
        ),
    ] = 8,
    device: Device = "auto",
    runtime: Runtime = "auto",
) -> None:
    """Score every cube that arrives in INBOX exactly once, until SIGINT or SIGTERM.

    Verdicts are appended to OUT/verdicts.jsonl (fsynced), maps and overlays written as
    `specad predict` writes them; after a crash, run the same command again: nothing is lost
    and nothing is scored twice.
    """
    from specad.inference import Detector
    from specad.line import Watcher

    det = Detector.load(model, device=device, runtime=runtime)

    def skipped(line: str) -> None:
        err.print(f"skipped: {line}", markup=False, highlight=False, soft_wrap=True)

    def drifting(line: str) -> None:
        err.print(f"warning: {line}", markup=False, highlight=False, soft_wrap=True)

    watcher = Watcher(
        det,
        inbox,
        out_dir,
        settle=settle,
        done=done,
        poll=poll,
        batch=batch,
        on_skip=skipped,
        on_drift=drifting,
    )
    stopped_by: list[str] = []

    def stop(signum: int, frame: object) -> None:
        stopped_by.append(signal.Signals(signum).name)
        watcher.stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)
    err.print(f"watching {inbox} with {det.kind} ({det.runtime})", markup=False, highlight=False)
    run = watcher.run()
    how = "polling" if run.polling else "events"
    out.print(
        f"stopped ({stopped_by[0] if stopped_by else 'done'}): {run.scored} cubes scored, "
        f"{run.unreadable} unreadable, watched by {how}; verdicts in {out_dir / 'verdicts.jsonl'}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


@app.command()
def serve(
    model: Model,
    host: Annotated[str, typer.Option(help="Address to listen on (loopback by default).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: any free one).")] = 8000,
    max_bytes: Annotated[
        int, typer.Option(min=1, help="Largest upload in bytes; larger ones get 413 unread.")
    ] = 1 << 30,
    batch: Annotated[
        int, typer.Option(min=1, max=256, help="Most cubes scored together in one batch.")
    ] = 8,
    batch_wait: Annotated[
        float,
        typer.Option(
            min=0,
            max=10,
            callback=finite("--batch-wait"),
            help="Seconds a first cube may wait for others to fill its batch (0: none).",
        ),
    ] = 0.0,
    feedback: Annotated[
        Path | None,
        typer.Option(help="Folder where POST /feedback queues cubes for `specad update`."),
    ] = None,
    device: Device = "auto",
    runtime: Runtime = "auto",
) -> None:
    """Answer HTTP requests with verdicts: POST /score, GET /health, /model, /metrics,
    POST /reload (or SIGHUP), POST /feedback. Stops on SIGINT or SIGTERM."""
    from specad.line import create_app
    from specad.line import serve as run_server

    app_ = create_app(
        model,
        max_bytes=max_bytes,
        batch=batch,
        batch_wait=batch_wait,
        feedback=feedback,
        device=device,
        runtime=runtime,
    )
    stopped_by = run_server(app_, host, port)
    out.print(f"stopped ({stopped_by or 'done'})", markup=False, highlight=False)
