"""The ``specad`` command under fuzz (issue 38): generated ``synth`` options, ``scene``
parameters, ``--device``, ``--scheduler``, ``--workers`` and input file names.

Edge values are drawn on purpose: 0, negatives, 2^64 and beyond, NaN, +-inf, exponent notation,
empty strings, huge values, unicode, and the lone surrogates Python makes of non-UTF-8 bytes in
argv. A scheduler address names loopback (listeners that stay silent, answer garbage or HTTP,
and a closed port) or no host at all: no case resolves a name or leaves the machine. The cases
run through ``fuzz_runner.py``; shared by ``tests/test_fuzz.py`` (a dozen quick cases per
target) and ``fuzz.py`` (thousands).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import socket
import struct
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from fuzz_runner import Case
from hypothesis import strategies as st

INTS = (
    "0", "1", "2", "-1", "-0", "+1", "7", "2147483647", "2147483648", "4294967296",
    "9223372036854775808", "18446744073709551615", "18446744073709551616",
    "-18446744073709551616", "1" + "0" * 40, "1e3", "1e-3", "1.0", "1.5", "0x10", "1_0", " 1",
    "nan", "inf", "-inf", "", "abc", "١", "５", "\udcff",
)  # fmt: skip
"""Integer options: bounds, 2^31, 2^63, 2^64 and beyond, floats, other bases, unicode digits."""
FLOATS = (
    "1", "0.5", "2", "0", "-0", "-1", "1e-3", "1E3", "1e-308", "5e-324", "1e308", "1e400",
    "-1e400", "nan", "NaN", "-nan", "inf", "+inf", "-inf", "Infinity", "", "abc", "0x1p-3",
    "1_0", ".5", "5.", "\udcff",
)  # fmt: skip
"""Float options: zero, negatives, subnormals, overflow to inf, NaN, exponent notation."""
YAML = (
    "", "~", "null", "true", "yes", "[", "{a: ", "[1, 2]", "{}", "!!float nan", "!!int '5'",
    "!!binary aGk=", "!!python/object/apply:os.system ['true']", "&a [*a]", "*a", "'5'",
    "0o17", "0x1F", "1:30", ".NaN", "-.inf", ".inf", "5 # c", "1e-3", "1.0e+3", "\udcff",
)  # fmt: skip
"""``--param`` values as YAML reads them: tags, anchors, broken syntax, YAML 1.1 oddities."""
WINDOWS = ("1", "3", "5", "7", "9", "11", "21", "25", "41", "43", "129", "2", "-3", "3.0", "1e1")
ARGV_CHARS = st.characters(exclude_characters="\x00", exclude_categories=("Cs",))
"""Characters argv can carry: no NUL, and no surrogates but those of non-UTF-8 bytes (drawn
from the lists above)."""
TEXT = st.text(ARGV_CHARS, max_size=12)


def _pick(good: Iterable[str], bad: Iterable[str] = (), *, weight: int = 1) -> st.SearchStrategy:
    """``good`` values ``weight`` times as often as ``bad`` ones or any text (bad ones first:
    Hypothesis starts from the first)."""
    bad = tuple(bad)
    return st.one_of(
        [st.sampled_from(bad)] * bool(bad) + [st.sampled_from(tuple(good))] * weight + [TEXT]
    )


def _number(good: Iterable[str], bad: Iterable[str]) -> st.SearchStrategy:
    """`_pick`, or any integer or float as Python writes it (``1e+300``, ``-0.0``, ``nan``)."""
    return _pick(good, bad) | st.integers().map(str) | st.floats().map(repr)


def _option(name: str, values: st.SearchStrategy) -> st.SearchStrategy:
    """``(name, value)`` or nothing, half the time each."""
    return st.one_of(st.just(()), values.map(lambda v: (name, v)))


def _flag(name: str) -> st.SearchStrategy:
    """``(name,)`` one time in four, else nothing."""
    return st.sampled_from([(), (), (), (name,)])


def _line(*parts: st.SearchStrategy | tuple[str, ...]) -> st.SearchStrategy:
    """Fixed tuples and drawn ones, joined into one argument tuple."""
    drawn = [p if isinstance(p, st.SearchStrategy) else st.just(p) for p in parts]
    return st.tuples(*drawn).map(lambda groups: sum(groups, ()))


def synth_cases() -> st.SearchStrategy:
    """``specad synth``: preset, seed, size and difficulty. Valid sizes are small (a dataset of
    350 images is written in seconds); other ones are below 32 or above 4096 px, past any
    bound (a valid 1024 px dataset would take minutes, as it should)."""
    presets = ("tray6", "tray-rgb", "tray-hsi", "tray6-hard", "tray-rgb-hard")
    sizes = ("0", "1", "31", "-1", "-32", "100000", "1000000", "2147483648", "18446744073709551616",
             "1e2", "32.0", "nan", "", "1_0", "\udcff")  # fmt: skip
    return _line(
        ("synth", "--out", "{tmp}/s"),
        _option("--preset", _pick(presets, ("", "TRAY6", "tray7", "tray6 ", "\udcff"), weight=2)),
        _option("--seed", _pick(("0", "1", "7", "4294967295"), INTS)),
        ("--size",),
        st.one_of(
            st.sampled_from((*sizes, *("32", "33", "٣٢") * 3)),  # the valid sizes thrice
            st.integers().filter(lambda n: not 32 <= n <= 4096).map(str),
            TEXT,
        ).map(lambda v: (v,)),
        _option("--difficulty", _number(("1", "0.5", "2", "1E0"), FLOATS)),
        _flag("--force"),
    )


@st.composite
def _scene_params(draw: st.DrawFn, names: list[str], fields: dict[str, list[str]]) -> tuple:
    """``--param DETECTOR.KEY=VALUE`` items, mostly for a detector that runs, with its own keys."""
    items: list[str] = []
    every = sorted({k for keys in fields.values() for k in keys})
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["own", "own", "own", "other", "raw"]))
        if kind == "raw":
            items.append(
                draw(st.sampled_from(("lrx", "lrx.", ".outer=3", "=", "lrx.outer")) | TEXT)
            )
            continue
        name = draw(
            st.sampled_from(names) if kind == "own" else st.sampled_from(list(fields)) | TEXT
        )
        key = draw(st.sampled_from(fields.get(name) or every) | st.sampled_from(every) | TEXT)
        windows = key in ("outer", "inner")
        value = draw(_number(WINDOWS, YAML) if windows else _number(FLOATS, YAML + ("auto",)))
        items.append(f"{name}.{key}={value}")
    return tuple(a for item in items for a in ("--param", item))


@st.composite
def scene_cases(draw: st.DrawFn, cubes: tuple[str, ...], fields: dict[str, list[str]]) -> tuple:
    """``specad scene``: detectors, every scene detector's parameters, band options."""
    from specad.models.scene import AUTO

    known = [AUTO, *fields]
    names = draw(st.lists(st.sampled_from(known), min_size=1, max_size=3))
    bad = ("", ",", "RX", "global-rx", "auto,auto", "rx,,lrx", "x", "\udcff")
    detector = draw(st.sampled_from([",".join(names)] * 3 + list(bad)) | TEXT)
    ranges = ("0-2", "", "5-0", "-1", "0-18446744073709551616", "a", "1,1", "0-4,2-3", "\udcff")
    line = _line(
        ("scene", draw(st.sampled_from(cubes)), "--detector", detector),
        _scene_params(names, fields),
        _option("--reduce", _pick(("none", "pca", "mnf"), ("PCA", ""))),
        _option("--components", _pick(("1", "2", "3"), INTS)),
        _option("--drop-bands", st.sampled_from(ranges) | TEXT),
        _option("--drop-nm", st.sampled_from(("400-500", "1340-1450", *ranges)) | TEXT),
        _flag("--json"),
        _flag("--out={tmp}/o"),
    )
    return draw(line)


DEVICES = (
    "cpu", "auto", "cuda", "cuda:0", "cuda:1", "cuda:-1", "cuda:18446744073709551616", "cuda:1e3",
    "cuda:", "cuda:0:0", "cuda0", "mps", "meta", "xla", "xpu", "hpu", "ipu", "vulkan", "mkldnn",
    "opengl", "opencl", "ideep", "fpga", "maia", "lazy", "mtia", "privateuseone", "ve", "",
    " ", "CPU", "Cpu", "cpu:0", "cpu:1", "cpu:-1", "cpu,cuda", "auto:0", "meta:0", " cpu",
    "ｃｐｕ", "\udcff",
)  # fmt: skip


def device_cases(fx: Fixture) -> st.SearchStrategy:
    """``--device`` of predict (a saved RX and a saved knn model) and evaluate."""
    commands = st.sampled_from([
        ("predict", str(fx.rx), str(fx.cube), "--out", "{tmp}/o"),
        ("predict", str(fx.knn), str(fx.cube), "--out", "{tmp}/o", "--runtime", "torch"),
        ("evaluate", str(fx.knn), str(fx.dataset), "--json"),
        ("evaluate", "rx", str(fx.dataset)),
    ])  # fmt: skip
    return _line(commands, ("--device",), _pick(DEVICES, weight=3).map(lambda v: (v,)))


def _no_port(text: str) -> bool:
    """Whether ``text`` cannot be a TCP port (so the address connects nowhere)."""
    try:
        return not 0 <= int(text) < 65536
    except ValueError:
        return True


def scheduler_cases(fx: Fixture, quick: bool = False) -> st.SearchStrategy:
    """``--scheduler``: malformed addresses, unknown schemes and, unless ``quick``, loopback
    ports where nothing listens or where a listener is silent, answers garbage or HTTP.

    Hosts are loopback or none, and ports and schemes are drawn from characters no URL parser
    reads as a host: no address can make a lookup or a connection leave the machine.
    """
    hosts = st.sampled_from(("127.0.0.1", "localhost", "[::1]", ""))
    schemes = ("tcp", "tls", "ws", "wss", "inproc", "ucx", "")
    port_text = st.text("0123456789abcxyz.+-_ e١５", max_size=8) | st.sampled_from(INTS)
    fixed = (
        "", "tcp://", "tcp://:", "inproc://x", "inproc://", "foo://bar:1", "\udcff",
        "tcp://\udcff:1", "ws://", "tls://", "TCP://",
    )  # fmt: skip
    unknown = st.text("abcdefghijklmnopqrstuvwxyz+.-", min_size=1, max_size=8).filter(
        lambda s: s.lower() not in schemes
    )
    ports = st.sampled_from(sorted(fx.ports.values()))
    fast = st.one_of(
        st.sampled_from(fixed),
        st.builds("{}://{}:{}".format, st.sampled_from(schemes), hosts, port_text.filter(_no_port)),
        st.builds("{}://{}:{}".format, unknown, hosts, ports),
    )
    predict = ("predict", str(fx.rx), str(fx.cube), "--out", "{tmp}/o")
    commands = st.sampled_from([predict, ("evaluate", str(fx.rx), str(fx.dataset), "--json")])
    lines = [
        _line(commands, ("--scheduler",), fast.map(lambda v: (v,))),
        _line(predict, ("--workers", "1", "--scheduler"), fast.map(lambda v: (v,))),
    ]
    if not quick:  # each waits for the connect or handshake timeout
        live = st.builds(
            "{}{}:{}".format,
            st.sampled_from(("tcp://", "tls://", "ws://", "")),
            st.sampled_from(("127.0.0.1", "localhost")),
            ports,
        )
        lines.append(_line(predict, ("--scheduler",), live.map(lambda v: (v,))))
    return st.one_of(lines)


def workers_cases(fx: Fixture, quick: bool = False) -> st.SearchStrategy:
    """``--workers`` of predict and evaluate: edge values, any integer, any text, and (unless
    ``quick``) a few counts this machine's cores allow, each of which starts a local Dask
    cluster (seconds)."""
    cores = os.cpu_count() or 1
    edges = (*INTS, "4", "16", "1000", "65536", "+2", "0x2", "٢", "２")
    values = [
        st.sampled_from([v for v in edges if not _fits(v, cores)]),
        st.integers().filter(lambda n: not 1 <= n <= cores).map(str),
        TEXT.filter(lambda v: not _fits(v, cores)),
    ]
    if not quick:
        values.append(st.sampled_from(sorted({"1", "+1", "١", str(cores)})))
    commands = st.sampled_from([
        ("predict", str(fx.rx), str(fx.cube), "--out", "{tmp}/o"),
        ("evaluate", str(fx.rx), str(fx.dataset), "--json"),
        ("evaluate", "rx", str(fx.dataset)),
    ])  # fmt: skip
    return _line(commands, ("--workers",), st.one_of(values).map(lambda v: (v,)))


def _fits(value: str, cores: int) -> bool:
    """Whether ``--workers value`` is a count this machine's cores allow."""
    try:
        return 1 <= int(value) <= cores
    except ValueError:
        return False


STEMS = (
    "x", "X", "x.tif", "X.TIF", "x.npy", "a b", "-x", "--out", "bad\udcff", "\udcff\udcfe", "ü",
    "u\u0308", "日本", "x" * 200, ".x", "x.", "..x", "CON", "nul", "x\\y", "x:y", "x*?", "'", '"',
    "$(id)", "x\ny", "x\r", "x\t", " x", "x ", "%s", "sub/x", "sub_x", "sub%2Fx", "sub.x", "#",
    "x,y", "maps", "scores",
)  # fmt: skip
"""Input stems: case-only and suffix clashes, non-UTF-8 bytes, separators, shell and CSV text."""
SUFFIXES = (".tif", ".TIF", ".tiff", ".npy", ".NPY", ".npz", ".hdr", ".mat", ".tif.npy", ".npy.tif")


@st.composite
def file_name_cases(draw: st.DrawFn, fx: Fixture) -> Case:
    """``specad predict`` on cubes named to clash: given as their folder, as files (some twice,
    some relative), or with ``--out`` aimed at the inputs or the model (``--force`` too); the
    model is a copy beside the cubes, so its files are checked like theirs."""
    stem = st.sampled_from(STEMS) | st.text(
        ARGV_CHARS.filter(lambda c: c != "/"), min_size=1, max_size=12
    ).filter(lambda s: s not in (".", ".."))
    names = draw(
        st.lists(st.builds(str.__add__, stem, st.sampled_from(SUFFIXES)), min_size=1, max_size=6)
    )
    names = list(dict.fromkeys(names))
    given = draw(st.sampled_from(["folder", "files", "files", "relative"]))
    chosen = names
    if given == "folder":
        inputs = ["{in}"]
    else:
        chosen = draw(st.lists(st.sampled_from(names), min_size=1, max_size=len(names) + 1))
        inputs = [("in/" if given == "relative" else "{in}/") + n for n in chosen]
    outs = ["{tmp}/out"] * 4 + ["{in}", "{in}/sub", "{tmp}", "{in}/" + names[0], "{in}/model"]
    out = draw(st.sampled_from(outs))
    force = draw(st.booleans())
    expect = len(set(chosen)) if out == "{tmp}/out" else 0
    argv = ("predict", "{in}/model", *inputs, "--out", out, *(("--force",) if force else ()))
    return Case(argv, tuple(names), expect)


NAMES = ("synth", "scene-parameters", "device", "scheduler", "workers", "file-names")
"""The CLI targets, in the order they run."""


def targets(fx: Fixture, quick: bool = False) -> dict[str, st.SearchStrategy]:
    """Every CLI target by name; ``quick`` leaves out cases that take seconds by design."""
    from dataclasses import fields

    from specad.models.scene import SCENE_DETECTORS

    keys = {name: [f.name for f in fields(cls)] for name, cls in SCENE_DETECTORS.items()}  # type: ignore[arg-type]
    strategies = (
        synth_cases().map(Case),
        scene_cases(fx.scene_cubes, keys).map(Case),
        device_cases(fx).map(Case),
        scheduler_cases(fx, quick).map(Case),
        workers_cases(fx, quick).map(Case),
        file_name_cases(fx),
    )
    return dict(zip(NAMES, strategies, strict=True))


def draw_cases(strategy: st.SearchStrategy, n: int, *, seed: int | None = 0) -> list[Case]:
    """Up to ``n`` distinct cases (a repeated command line is one case), in a fixed order for
    a given ``seed`` (None: random)."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as with_seed

    seen: dict[Case, None] = {}

    @settings(
        max_examples=3 * n,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(case: Case) -> None:
        if len(seen) < n:
            seen.setdefault(case, None)

    (collect if seed is None else with_seed(seed)(collect))()
    return list(seen)


@dataclass
class Fixture:
    """A tiny dataset, saved RX and knn models, small scene cubes, one cube of each format as
    bytes (for the file-name cases), and loopback listeners: every path absolute."""

    root: Path
    dataset: Path
    rx: Path
    knn: Path
    cube: Path
    scene_cubes: tuple[str, ...]
    formats: dict[str, bytes]
    ports: dict[str, int]

    def write_inputs(self, folder: Path, case: Case) -> None:
        """A cube per name of ``case.files``, in the format its suffix says (an ENVI header gets
        its ``.img``), and a copy of the RX model in ``model``."""
        if case.files:
            shutil.copytree(self.rx, folder / "model")
        for name in case.files:
            path = folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            suffix = path.suffix.lower()
            path.write_bytes(self.formats[suffix])
            if suffix == ".hdr":
                path.with_suffix(".img").write_bytes(self.formats[".img"])


@contextlib.contextmanager
def fixture(root: Path) -> Iterator[Fixture]:
    """Build the `Fixture` under ``root``; its listeners serve until the block ends."""
    import warnings

    import numpy as np
    import scipy.io
    from fuzz_data import make_dataset

    from specad.data import load_dataset
    from specad.fit import fit_on_dataset
    from specad.io import Cube, write_cube

    ds = load_dataset(make_dataset(root / "ds", size=32, counts=(2, 2, 1), defects=1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # thresholds from two validation scores warn
        fit_on_dataset("rx", ds).save(root / "rx")
        fit_on_dataset("knn", ds, device="cpu", image_size=32).save(root / "knn")
    rng = np.random.default_rng(0)
    arrays = {
        "six.npy": rng.random((20, 20, 6), np.float32),
        "one-band.npy": rng.random((20, 20, 1), np.float32),
        "constant.npy": np.ones((20, 20, 6), np.float32),
        "many-bands.npy": rng.random((8, 8, 300), np.float32),
    }
    for name, array in arrays.items():
        np.save(root / name, array)
    small = Cube(rng.random((12, 12, 6), np.float32), wavelengths=[450, 550, 650, 1050, 1200, 1450])
    write_cube(root / "six.tif", small)
    proto = root / "proto"
    for suffix in (".tif", ".npy", ".npz", ".hdr"):
        write_cube(proto / f"c{suffix}", small)
    scipy.io.savemat(proto / "c.mat", {"data": small.data})
    formats = {
        s: (proto / f"c{s}").read_bytes() for s in (".tif", ".npy", ".npz", ".mat", ".hdr", ".img")
    }
    formats[".tiff"] = formats[".tif"]
    with _listeners() as ports:
        yield Fixture(
            root,
            root / "ds",
            root / "rx",
            root / "knn",
            next((root / "ds" / "test" / "good").iterdir()),
            (*(str(root / n) for n in arrays), str(root / "six.tif")),
            formats,
            ports,
        )


@contextlib.contextmanager
def _listeners() -> Iterator[dict[str, int]]:
    """Loopback ports: one where nothing listens, and listeners that accept and stay silent,
    answer a Dask frame header announcing 2^62 bytes and then garbage, or answer HTTP. Every
    connection is kept open, so only the client's own timeout ends it."""
    replies = {
        "silent": b"",
        "garbage": struct.pack("<Q", 2**62) + bytes(range(256)) * 4,
        "http": b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 5\r\n\r\nhello",
    }
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    sel, stop, held = selectors.DefaultSelector(), threading.Event(), []
    ports = {"closed": closed}
    for kind, reply in replies.items():
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ, reply)
        ports[kind] = sock.getsockname()[1]

    def serve() -> None:
        while not stop.is_set():
            for key, _ in sel.select(0.2):
                with contextlib.suppress(OSError):
                    conn, _ = key.fileobj.accept()  # type: ignore[union-attr]
                    conn.settimeout(1)
                    conn.sendall(key.data)
                    held.append(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield ports
    finally:
        stop.set()
        thread.join()
        for sock in [*held, *(k.fileobj for k in sel.get_map().values())]:
            sock.close()  # type: ignore[union-attr]
        sel.close()
