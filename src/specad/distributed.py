"""Scoring on a Dask cluster, with the same outputs as one process.

The driver lists the inputs, names the outputs and writes ``scores.csv``; every worker holds the
detector once (a worker plugin carries how to load it, so a worker that joins or restarts loads
it too, and tasks carry only file names), reads its cubes from the shared path and writes maps
and overlays into the output's temporary folder under the names a local run uses. Bad input
comes back as the same one line a local run prints; a task whose worker dies is rerun elsewhere
by Dask and rewrites the same files. Needs the ``dask`` extra (``pip install 'specad[dask]'``).
"""

from __future__ import annotations

import hashlib
import pickle
import socket
import ssl
import struct
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from specad.data import Sample
from specad.errors import SpecadError
from specad.inference import Detector, SplitResults, score_file
from specad.inference.scoring import score_batch
from specad.models.registry import ModelSpec
from specad.runtime import available_memory
from specad.threads import usable_cores

try:
    import dask.config
    import msgpack
    from dask.utils import parse_timedelta
    from distributed import Client, LocalCluster, WorkerPlugin, get_worker
    from distributed.security import Security
except ImportError as err:  # the optional extra
    raise SpecadError("--scheduler and --workers need Dask: pip install 'specad[dask]'") from err

CONNECT_TIMEOUT_S = 20.0
"""Longest that reaching a scheduler and reading its handshake may take in all (Dask's
``distributed.comm.timeouts.connect`` may set less). A scheduler sends its handshake as soon as
it accepts, so this leaves a busy one time, while a wrong address fails well within the time a
command may take to say so."""
MAX_HANDSHAKE_BYTES = 1 << 16
"""Most bytes a scheduler's handshake may declare: it is a few dozen, and a peer that is not
Dask must not make specad allocate what its first bytes happen to say."""
WORKER_BYTES = 1 << 30
"""Memory set aside per local worker process: Python with torch and specad loaded, the
detector, and the cubes of the batch it scores."""


@dataclass(frozen=True)
class ModelSource:
    """How a worker gets the driver's detector: a saved model on a path every worker reads,
    loaded with the runtime the driver resolved (same maps, same threshold), or the detector
    itself, pickled, when it was fitted in this process (``rx``/``knn`` on a dataset)."""

    path: str | None
    device: str = "auto"
    runtime: str = "auto"
    pickled: bytes | None = None

    @classmethod
    def of(
        cls, detector: Detector, model: str | Path | ModelSpec | None, device: str = "auto"
    ) -> ModelSource:
        path = None if model is None else ModelSpec.parse(model).path
        if path is None:
            return cls(None, pickled=pickle.dumps(detector))
        return cls(str(path.resolve()), device, detector.runtime)

    def load(self) -> Detector:
        if self.pickled is not None:
            return pickle.loads(self.pickled)
        return Detector.load(self.path, device=self.device, runtime=self.runtime)


class _ModelPlugin(WorkerPlugin):
    """Holds one worker's detector, loaded on first use (a load error is then the task's)."""

    def __init__(self, source: ModelSource) -> None:
        self.source = source
        self._detector: Detector | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"source": self.source}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["source"])

    @property
    def detector(self) -> Detector:
        with self._lock:
            if self._detector is None:
                self._detector = self.source.load()
            return self._detector

    def teardown(self, worker: Any) -> None:
        self._detector = None


def _detector(plugin: str) -> Detector:
    return get_worker().plugins[plugin].detector


def _score_file(plugin: str, shown: str, path: str, tmp: str, name: str, opts: dict) -> float | str:
    """Worker side of one ``predict`` input: its score, or the one-line failure naming the
    input as the user gave it."""
    try:
        return score_file(_detector(plugin), Path(path), Path(tmp), Path(name), **opts)
    except SpecadError as err:
        return str(err).replace(path, shown, 1)


def _score_samples(plugin: str, samples: list[Sample], tiled: bool) -> tuple | str:
    """Worker side of one batch of ``evaluate``: scores, maps and masks, as ``run_split``."""
    try:
        return score_batch(_detector(plugin), samples, tiled)
    except SpecadError as err:
        return str(err)


class Cluster:
    """A Dask client whose workers each hold the detector of ``source``."""

    def __init__(self, client: Client, source: ModelSource) -> None:
        self.client = client
        self.plugin = "specad-model-" + hashlib.sha256(pickle.dumps(source)).hexdigest()[:16]
        client.register_plugin(_ModelPlugin(source), name=self.plugin)

    def score_files(
        self, files: Sequence[Path], names: Sequence[Path], tmp: Path, opts: dict
    ) -> Iterator[float | str]:
        """Score each file into ``tmp`` (a folder the workers share) under its output name;
        scores or failures in input order."""
        futures = [
            self.client.submit(
                _score_file,
                self.plugin,
                str(f),
                str(f.resolve()),
                str(tmp.resolve()),
                str(name),
                opts,
                pure=False,
            )
            for f, name in zip(files, names, strict=True)
        ]
        for future in futures:
            yield future.result()

    def run_split(
        self, samples: Sequence[Sample], *, tiled: bool = False, batch_size: int = 8
    ) -> SplitResults:
        """``specad.inference.run_split`` with its batches on the workers: the same batches, so
        the same maps."""
        futures = [
            self.client.submit(
                _score_samples,
                self.plugin,
                [_resolved(s) for s in samples[i : i + batch_size]],
                tiled,
                pure=False,
            )
            for i in range(0, len(samples), batch_size)
        ]
        scores, maps, masks = [], [], []
        for future, start in zip(futures, range(0, len(samples), batch_size), strict=True):
            result = future.result()
            if isinstance(result, str):
                for s in samples[start : start + batch_size]:
                    result = result.replace(str(_resolved(s).path), str(s.path), 1)
                raise SpecadError(result)
            scores += result[0]
            maps += result[1]
            masks += result[2]
        return SplitResults(list(samples), np.asarray(scores, dtype=np.float64), maps, masks)


def _resolved(s: Sample) -> Sample:
    """The sample with absolute paths: workers may run in another folder or on another host."""
    mask = s.mask.resolve() if s.mask is not None else None
    return replace(s, path=s.path.resolve(), mask=mask)


def scheduler_address(text: str) -> str:
    """``text`` as the address Dask connects to, ``tcp://HOST:PORT`` (``tcp://`` may be left
    out) or ``tls://HOST:PORT``; anything else is a one-line `SpecadError` saying what is
    expected, before anything connects."""
    shown = f"scheduler {text[:60]!r}"
    expected = "expected tcp://HOST:PORT (or tls://HOST:PORT)"
    scheme, sep, rest = text.strip().partition("://")
    if not sep:
        scheme, rest = "tcp", text.strip()
    if scheme not in ("tcp", "tls"):
        raise SpecadError(f"{shown}: unsupported scheme '{scheme[:20]}://'; {expected}")
    try:
        parts = urlsplit(f"//{rest}")
        host, port = parts.hostname, parts.port
    except ValueError as err:  # a port that is not a number, or out of range
        raise SpecadError(f"{shown}: {err}; {expected}") from err
    if not host or not port or parts.path or parts.query or parts.fragment or "@" in rest:
        raise SpecadError(f"{shown}: no host and port; {expected}")
    try:
        host.encode("idna")  # what connecting will do with it
    except UnicodeError as err:
        raise SpecadError(f"{shown}: the host is not a host name; {expected}") from err
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"


def connect_timeout() -> float:
    """Seconds a scheduler has to answer: Dask's connect timeout, at most `CONNECT_TIMEOUT_S`."""
    configured = parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"), "s")
    return min(CONNECT_TIMEOUT_S, configured)


def probe_scheduler(address: str, timeout: float | None = None) -> None:
    """Refuse ``address`` (from `scheduler_address`) unless a Dask scheduler answers there
    within ``timeout`` s (default: `connect_timeout`): a refused connection, a peer that accepts
    but never speaks, and one whose first bytes are not a Dask handshake are each one line. Dask
    itself would wait on such a peer without bound, or allocate what its length field says. The
    probe greets first, as Dask's client does, so a real scheduler sees Dask's own exchange."""
    timeout = connect_timeout() if timeout is None else timeout
    parts = urlsplit(address)
    deadline = time.monotonic() + timeout
    context = _tls_context() if parts.scheme == "tls" else None
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as raw:
            raw.settimeout(max(1e-3, deadline - time.monotonic()))  # for the TLS handshake
            sock = raw if context is None else context.wrap_socket(raw)
            sock.sendall(_message({"compression": None, "python": sys.version_info[:3]}))
            size = struct.unpack("Q", _read(sock, 8, deadline))[0]
            if size > MAX_HANDSHAKE_BYTES:
                raise SpecadError(f"its first message claims {size} bytes")
            handshake = _handshake(_read(sock, size, deadline))
    except TimeoutError as err:
        raise SpecadError(f"scheduler {address}: no Dask handshake within {timeout:g} s") from err
    except OSError as err:  # ssl.SSLError is one too
        raise SpecadError(f"scheduler {address}: cannot connect ({err})") from err
    except SpecadError as err:
        raise SpecadError(f"scheduler {address}: not a Dask scheduler ({err})") from err
    if not isinstance(handshake, dict) or "pickle-protocol" not in handshake:
        raise SpecadError(f"scheduler {address}: not a Dask scheduler (no Dask handshake)")


def _message(handshake: dict[str, Any]) -> bytes:
    """A one-frame Dask message as its TCP comm writes one: the byte count, the frame count and
    lengths, then the msgpack frame."""
    frame = msgpack.packb(handshake | {"pickle-protocol": pickle.HIGHEST_PROTOCOL})
    body = struct.pack("QQ", 1, len(frame)) + frame
    return struct.pack("Q", len(body)) + body


def _tls_context() -> ssl.SSLContext:
    """The client TLS context of Dask's configuration (``distributed.comm.tls.*``)."""
    context = Security().get_connection_args("client").get("ssl_context")
    if context is None:
        raise SpecadError(
            "scheduler tls://: needs Dask's TLS settings (distributed.comm.tls.ca-file, "
            ".client.cert and .client.key in the Dask config)"
        )
    return context


def _read(sock: socket.socket, size: int, deadline: float) -> bytes:
    """Exactly ``size`` bytes from ``sock`` by ``deadline`` (`TimeoutError` after it)."""
    data = bytearray()
    while len(data) < size:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        sock.settimeout(left)
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise SpecadError("it closed the connection")
        data += chunk
    return bytes(data)


def _handshake(payload: bytes) -> Any:
    """The handshake in a scheduler's first message (msgpack: nothing is unpickled), or None
    where the bytes are no Dask message; no count or length in them is trusted."""
    if len(payload) < 16:
        return None
    count, first = struct.unpack_from("QQ", payload)
    start = 8 + 8 * count
    if count < 1 or start + first > len(payload):
        return None
    try:
        return msgpack.unpackb(payload[start : start + first], strict_map_key=False)
    except (ValueError, TypeError, msgpack.UnpackException):  # TypeError: a key of a list
        return None


def check_workers(workers: int) -> int:
    """``workers`` if this machine can run that many local worker processes: one per usable
    core (each scores on one), and `WORKER_BYTES` of available memory each; else a one-line
    `SpecadError` stating the bound."""
    cores, memory = usable_cores(), available_memory()
    most = max(1, min(cores, memory // WORKER_BYTES))
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= most:
        raise SpecadError(
            f"workers {workers!r:.40}: this machine runs 1..{most} ({cores} usable cores, "
            f"{memory / 2**30:.1f} GiB available, {WORKER_BYTES / 2**30:g} GiB a worker)"
        )
    return workers


@contextmanager
def open_cluster(
    scheduler: str | None, workers: int | None, source: ModelSource
) -> Iterator[Cluster]:
    """Connect to ``scheduler``, or start ``workers`` local worker processes (one thread each;
    Dask also limits torch to one core per worker, so N workers for N cores), with the detector
    registered on every worker. The address is parsed and probed (`probe_scheduler`), the worker
    count bounded (`check_workers`), before Dask is handed either."""
    if scheduler is not None and workers is not None:
        raise SpecadError("give --scheduler or --workers, not both")
    local = None
    if scheduler is not None:
        scheduler = scheduler_address(scheduler)
        probe_scheduler(scheduler)
    else:
        check_workers(workers)
    try:
        if scheduler is not None:
            client = Client(scheduler, timeout=f"{connect_timeout():g}s")
        else:
            local = LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
            )
            client = Client(local)
    except (OSError, TimeoutError) as err:
        what = f"reach the Dask scheduler {scheduler}" if scheduler else "start local workers"
        raise SpecadError(f"cannot {what} ({err})") from err
    cluster = Cluster(client, source)
    try:
        yield cluster
    finally:
        if local is None:
            client.unregister_worker_plugin(cluster.plugin)
        client.close()
        if local is not None:
            local.close()
