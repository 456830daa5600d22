"""`specad serve`: a fitted model behind HTTP (FastAPI on uvicorn), the endpoints of docs/line.md.

``POST /score`` streams the body to the spool (`specad.line.spool`), refusing it with 413 as soon
as its declared or counted size passes the limit, before any of it is held in memory; reads it
with `specad.io.read_cube` (so every format specad reads); and hands the cube to the batching
worker (`specad.line.batching`). Every answer is JSON; an error is one line, ``{"error": ...}``,
with a 4xx status for anything about the request, and never a traceback.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from specad.errors import SpecadError
from specad.inference import Detector, Prediction
from specad.io import CUBE_SUFFIXES, Cube, read_cube
from specad.line.batching import Batcher
from specad.line.metrics import CountRequests, Metrics
from specad.line.spool import Spool
from specad.line.verdict import Loaded, ModelSlot, Verdict, drift_monitor, judge

MAX_BYTES = 1 << 30
"""The default largest upload: 1 GiB, a 2048 x 2048 x 64 float32 cube."""
SPOOL_KEEP = 256
"""Scored uploads kept for ``POST /feedback`` (with a feedback folder)."""
SMALL_BODY = 4096
"""The largest JSON body ``POST /feedback`` reads."""
MAP_FORMATS = {"png": "image/png", "tiff": "image/tiff"}


class Refused(Exception):
    """A request answered with a 4xx status and one line of JSON."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(" ".join(message.split()))
        self.status = status


class FeedbackIn(BaseModel):
    id: str
    label: str


class Service:
    """What the app's endpoints share: the model slot, the batching worker, the spool, the
    metrics. Every verdict passes through `_record` once."""

    def __init__(
        self,
        model: Detector | str | Path,
        *,
        max_bytes: int = MAX_BYTES,
        batch: int = 8,
        batch_wait: float = 0.0,
        feedback: str | Path | None = None,
        keep: int = SPOOL_KEEP,
        device: str = "auto",
        runtime: str = "auto",
    ) -> None:
        if max_bytes < 1:
            raise SpecadError(f"--max-bytes must be at least 1, got {max_bytes}")
        self.slot = ModelSlot(model, device, runtime)
        self.max_bytes = max_bytes
        self.metrics = Metrics(batch)
        self.metrics.generation.set(1)
        self.batcher = Batcher(batch, batch_wait, on_batch=self.metrics.batch.observe)
        self.metrics.queue_depth.set_function(lambda: self.batcher.depth)
        self.spool = Spool(keep, None if feedback is None else Path(feedback))
        self.drift = drift_monitor(self.slot.current.detector)
        self.metrics.watch_drift(lambda: None if self.drift is None else self.drift.state)

    def _record(self, verdict: Verdict) -> None:
        """Every verdict passes here once, before it is answered: the verdict counts, and the
        drift watch, which says one line on stderr when the scores start to drift."""
        self.metrics.verdicts.labels("anomalous" if verdict.anomalous else "normal").inc()
        alert = None if self.drift is None else self.drift.observe(verdict.score)
        if alert is not None:
            print(f"warning: {alert}", file=sys.stderr, flush=True)

    def close(self) -> None:
        self.batcher.close()
        self.spool.close()

    def reload(self) -> Loaded:
        """Swap in the model file as it is now; a model that fails to load keeps the old one."""
        try:
            loaded = self.slot.reload()
        except SpecadError:
            self.metrics.reloads.labels("failed").inc()
            raise
        self.metrics.reloads.labels("ok").inc()
        self.metrics.generation.set(loaded.generation)
        self.drift = drift_monitor(loaded.detector)  # a new calibration: watched afresh
        return loaded

    def describe(self) -> dict[str, Any]:
        """``GET /model``: what the model expects and where it runs."""
        import torch

        from specad.runtime import cpu_model, cpu_speed_flags

        loaded = self.slot.current
        det, pre = loaded.detector, loaded.detector.meta.preprocess
        return {
            "kind": det.kind,
            "path": None if self.slot.path is None else str(self.slot.path),
            "channels": pre.source_channels,
            "bands": det.meta.bands,
            "wavelengths": det.meta.wavelengths,
            "image_size": pre.image_size,
            "threshold": det.threshold,
            "runtime": det.runtime,
            "device": str(det.device),
            "cpu": cpu_model(),
            "cpu_flags": cpu_speed_flags(),
            "threads": torch.get_num_threads(),
            "generation": loaded.generation,
            "loaded_at": loaded.loaded_at,
            "batch": self.batcher.size,
            "max_bytes": self.max_bytes,
        }

    async def score(
        self, request: Request, name: str | None, fmt: str | None, map_format: str | None
    ) -> dict:
        """``POST /score``: the verdict on the uploaded cube (and its map, if asked); ``name``
        is the client's file name, ``fmt`` its format where no name is given."""
        started = time.perf_counter()
        suffix = _suffix(name or fmt)
        if map_format is not None and map_format not in MAP_FORMATS:
            raise Refused(400, f"map must be {' or '.join(MAP_FORMATS)}, got '{map_format}'")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            raise Refused(413, self._too_large(int(declared)))
        upload_id = uuid.uuid4().hex
        path = self.spool.path(upload_id, suffix)
        shown = os.path.basename(name) if name else f"upload{suffix}"
        try:
            await self._receive(request, path)
            cube = await run_in_threadpool(_read, path, shown)
            loaded = self.slot.current  # this request runs on it to the end, reloads or not
            self._check_channels(loaded, cube)
            future = self.batcher.submit(cube, loaded, path)
            pred, size = await asyncio.wrap_future(future)
            verdict = judge(loaded.detector, shown, pred.score, started)
            self._record(verdict)
            body = {"id": upload_id, **verdict.record(), "batch": size}
            body["model"] = loaded.generation
            if map_format is not None:
                body["map"] = await run_in_threadpool(_map, map_format, cube, pred)
        except SpecadError as err:
            path.unlink(missing_ok=True)
            raise Refused(422, str(err).replace(str(path), shown)) from err
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        self.spool.scored(upload_id, path, {"score": pred.score, "verdict": body["verdict"]})
        self.metrics.latency.observe(time.perf_counter() - started)
        return body

    async def _receive(self, request: Request, path: Path) -> None:
        """Stream the body to ``path``, stopping at the size limit (and for an empty body)."""
        count = 0
        with open(path, "wb") as f:
            try:
                async for chunk in request.stream():
                    count += len(chunk)
                    if count > self.max_bytes:
                        raise Refused(413, self._too_large(count, "at least "))
                    f.write(chunk)
            except ClientDisconnect as err:  # nobody is left to answer; the log says why
                raise Refused(400, "the client went away before the body ended") from err
        if count == 0:
            raise Refused(400, "the body is empty: send the cube file's bytes")

    def _too_large(self, size: int, qualifier: str = "") -> str:
        return f"the body is {qualifier}{size} bytes, over the limit of {self.max_bytes} bytes"

    @staticmethod
    def _check_channels(loaded: Loaded, cube: Cube) -> None:
        wanted = loaded.detector.meta.preprocess.source_channels
        if cube.channels != wanted:
            raise Refused(422, f"the cube has {cube.channels} channels; the model takes {wanted}")


def _suffix(name: str | None) -> str:
    """The cube format from a ``format`` (``tif``, ``.npy``) or a file name."""
    if not name:
        raise Refused(
            400, "say the cube's format: ?format=tif (or npy, npz, mat) or ?filename=NAME"
        )
    suffix = os.path.splitext(name)[1] or "." + name
    suffix = suffix.lower()
    if suffix not in CUBE_SUFFIXES or suffix == ".hdr":  # ENVI is two files: not one body
        formats = ", ".join(s for s in CUBE_SUFFIXES if s != ".hdr")
        raise Refused(415, f"unknown cube format '{name}' (send one of {formats})")
    return suffix


def _read(path: Path, shown: str) -> Cube:
    try:
        return read_cube(path)
    except SpecadError as err:
        raise SpecadError(str(err).replace(str(path), shown)) from err


def _map(map_format: str, cube: Cube, pred: Prediction) -> dict[str, str]:
    """The map as `specad predict` writes it: ``tiff`` the float32 map, ``png`` the overlay."""
    from PIL import Image

    from specad.inference.scoring import write_map
    from specad.visual import cube_overlay

    buffer = io.BytesIO()
    if map_format == "tiff":
        write_map(buffer, pred.anomaly_map)  # type: ignore[arg-type]
    else:
        overlay = cube_overlay(cube, pred.anomaly_map, pred.threshold)
        Image.fromarray(overlay).save(buffer, "PNG")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return {"format": map_format, "media_type": MAP_FORMATS[map_format], "base64": data}


async def _small_json(request: Request, model: type[FeedbackIn]) -> FeedbackIn:
    """A small JSON body, whatever its declared content type (``curl -d`` says a form)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > SMALL_BODY:
            raise Refused(413, f"the body is over {SMALL_BODY} bytes; send {{id, label}} only")
    try:
        return model.model_validate_json(body)
    except ValidationError as err:
        raise Refused(422, _first_problem(err.errors())) from err


def _first_problem(problems: Sequence[Any]) -> str:
    """pydantic's first complaint, on one line: where, and what."""
    first = problems[0] if problems else {"msg": "invalid request"}
    where = ".".join(str(p) for p in first.get("loc", ()))
    return f"{where}: {first['msg']}" if where else str(first["msg"])


def _error(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())}, status, headers=headers)


def create_app(model: Detector | str | Path | Service, **options: Any) -> FastAPI:
    """The HTTP app over a fitted detector, or a model file or run folder (``options`` are
    `Service`'s). ``app.state.service`` holds the model slot, the worker and the metrics."""
    service = model if isinstance(model, Service) else Service(model, **options)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        yield
        service.close()

    app = FastAPI(title="specad", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = service
    app.add_middleware(CountRequests, counter=service.metrics.requests)

    @app.exception_handler(Refused)
    async def refused(request: Request, err: Refused) -> JSONResponse:
        close = {"Connection": "close"} if err.status == 413 else {}  # the body is left unread
        return _error(err.status, str(err), **close)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        return _error(422, _first_problem(err.errors()))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        return _error(err.status_code, err.detail)

    @app.exception_handler(Exception)
    async def bug(request: Request, err: Exception) -> JSONResponse:
        return _error(500, f"internal error ({type(err).__name__}: {err})")

    @app.post("/score")
    async def score(
        request: Request,
        format: str | None = None,
        filename: str | None = None,
        map: str | None = None,
    ) -> dict:
        name = filename or request.headers.get("x-filename")
        return await service.score(request, name, format, map)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": service.slot.current.generation}

    @app.get("/model")
    async def describe() -> dict:
        return service.describe()

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/reload")
    async def reload() -> dict:
        try:
            loaded = await run_in_threadpool(service.reload)
        except SpecadError as err:
            generation = service.slot.current.generation
            raise Refused(422, f"{err}; still serving model {generation}") from err
        return {"model": loaded.generation, "kind": loaded.detector.kind}

    @app.post("/feedback")
    async def feedback(request: Request) -> dict:
        item = await _small_json(request, FeedbackIn)
        try:
            queued = await run_in_threadpool(service.spool.queue, item.id, item.label)
        except LookupError as err:  # KeyError: an unknown id
            status = 404 if isinstance(err, KeyError) else 409
            raise Refused(status, err.args[0]) from err
        except ValueError as err:
            raise Refused(422, str(err)) from err
        if not queued["already"]:
            service.metrics.feedback.inc()
        return queued

    return app


def serve(app: FastAPI, host: str = "127.0.0.1", port: int = 8000) -> str | None:
    """Run ``app`` until SIGINT or SIGTERM; SIGHUP reloads the model. Prints ``listening on
    URL`` once the socket is bound (``port`` 0: a free one). Returns the stopping signal's name."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        app.state.service.close()
        raise SpecadError(f"cannot listen on {host}:{port} ({err.strerror or err})") from err
    bound = sock.getsockname()[1]
    server = _Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=30))
    service: Service = app.state.service
    with _reload_on_sighup(service):
        print(f"listening on http://{_url_host(host)}:{bound}", flush=True)
        server.run(sockets=[sock])
    return server.stopped_by


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


@contextmanager
def _reload_on_sighup(service: Service) -> Iterator[None]:
    """SIGHUP reloads the model in a thread of its own (a signal handler must not block);
    one line on stderr says how it went."""

    def reload() -> None:
        try:
            loaded = service.reload()
            print(f"reloaded the model (load {loaded.generation})", file=sys.stderr, flush=True)
        except SpecadError as err:
            print(f"reload failed: {err}", file=sys.stderr, flush=True)

    def handler(signum: int, frame: Any) -> None:
        threading.Thread(target=reload, name="specad-reload", daemon=True).start()

    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGHUP"):
        yield
        return
    previous = signal.signal(signal.SIGHUP, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGHUP, previous)


class _Server(uvicorn.Server):
    """uvicorn's server, stopped by SIGINT or SIGTERM without raising the signal again
    afterwards (as uvicorn does), so that the command ends with its one line."""

    stopped_by: str | None = None

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def stop(signum: int, frame: Any) -> None:
            self.stopped_by = signal.Signals(signum).name
            self.force_exit = self.should_exit  # a second signal: stop waiting for requests
            self.should_exit = True

        previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
