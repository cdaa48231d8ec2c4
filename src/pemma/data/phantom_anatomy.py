"""Reference head-and-neck anatomy, scanner characters and lesions of :mod:`pemma.data.phantom`.

Everything is drawn in a *reference frame*: millimetres of a reference patient whose neck and lower head
fill a 160 x 160 x 140 mm box (``REF_FOV_MM``), oriented like the CT voxel axes in RAS (x toward the
patient's right, y anterior, z superior; z = 0 is the inferior end). The frame is stretched onto the CT
field of view of the configured grid, so a tiny test grid still holds a complete (smaller) patient.
The painters fill two arrays on the CT grid: ``hu`` (noise-free Hounsfield units) and ``suv`` (true
activity in body-weight SUV, before scanner blur, calibration and noise).

Example:
    >>> rng = np.random.default_rng(0)
    >>> g = RefGrid.make((80, 80, 56), (2.0, 2.0, 2.5), size=1.0, shift=(0.0, 0.0), z_shift=0.0)
    >>> hu, suv, masks = paint_anatomy(g, rng)
    >>> lesions = paint_lesions(g, rng, hu, suv, masks, hpv=1)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

#: Size (mm) of the reference patient box that is stretched onto the CT field of view.
REF_FOV_MM: tuple[float, float, float] = (160.0, 160.0, 140.0)


@dataclass(frozen=True)
class Scanner:
    """Acquisition character of one centre (what makes centres a domain shift)."""

    centre_id: int  # CenterID written to the clinical CSV
    ct_noise_sd: float  # HU, standard deviation of the CT noise
    ct_blur_mm: float  # gaussian sigma (mm) of the CT reconstruction kernel / partial volume
    ct_hu_offset: float  # HU, water-calibration offset of the scanner
    pet_fwhm_mm: float  # PET resolution: gaussian FWHM (mm) applied before resampling to the PET grid
    pet_noise: float  # relative PET noise sd at SUV 1 (Poisson-like: absolute sd grows with sqrt(SUV))
    suv_calibration: float  # multiplicative SUV calibration (cross-calibration, uptake time)
    pet_fov_scale: tuple[float, float, float]  # PET field of view relative to the CT one, per axis
    z_shift: float  # CT field-of-view shift along the body axis, fraction of the reference height
    missing_boost: float  # added to the missing rate of tobacco, alcohol, performance status, HPV


#: Per-centre scanner characters (CenterID, CT noise/blur/offset, PET FWHM/noise/calibration, FOV).
SCANNERS: dict[str, Scanner] = {
    "CHUM": Scanner(1, 22.0, 0.8, 0.0, 6.0, 0.12, 1.00, (1.10, 1.10, 0.96), 0.00, 0.00),
    "CHUP": Scanner(2, 18.0, 0.7, 3.0, 5.0, 0.10, 0.92, (1.20, 1.20, 1.00), 0.03, 0.10),
    "CHUS": Scanner(3, 30.0, 0.9, -2.0, 7.0, 0.15, 1.10, (1.05, 1.05, 0.94), -0.04, -0.10),
    "CHUV": Scanner(4, 15.0, 0.6, 1.0, 4.5, 0.08, 0.88, (1.15, 1.15, 1.02), 0.05, 0.15),
    "MDA": Scanner(5, 35.0, 1.0, -4.0, 6.5, 0.16, 1.18, (1.00, 1.00, 0.98), -0.06, -0.15),
    "HGJ": Scanner(6, 26.0, 0.8, 2.0, 5.5, 0.12, 0.85, (1.12, 1.12, 0.95), 0.02, 0.05),
    "HMR": Scanner(7, 40.0, 1.1, -1.0, 8.0, 0.20, 1.05, (1.08, 1.08, 1.00), -0.02, 0.20),
}

#: (HU, SUV) of normal tissues; SUV ranges below override the organs with physiological uptake.
TISSUES: dict[str, tuple[float, float]] = {
    "air": (-1000.0, 0.0), "fat": (-100.0, 0.3), "soft": (40.0, 1.0), "muscle": (52.0, 0.8),
    "parotid": (5.0, 2.4), "submandibular": (42.0, 2.2), "tonsil": (45.0, 3.5), "thyroid": (95.0, 1.4),
    "vessel": (42.0, 1.8), "canal": (30.0, 0.7), "cancellous": (320.0, 1.6), "cortical": (1300.0, 0.6),
    "disc": (85.0, 0.6), "cartilage": (180.0, 0.9), "teeth": (2300.0, 0.3), "brain": (35.0, 8.0),
    "table": (150.0, 0.0), "metal": (3071.0, 0.0),
}
#: Case-specific ranges of physiological (non-tumour) uptake, SUV.
PHYSIO_SUV: dict[str, tuple[float, float]] = {
    "brain": (6.0, 10.0), "tonsil": (2.5, 5.5), "parotid": (1.6, 3.2), "submandibular": (1.6, 3.0),
    "cords": (1.5, 4.0), "tongue": (1.1, 2.5), "background": (0.85, 1.15),
}
#: Lesion parameters (volumes in reference mL, radii in reference mm, HU deltas against soft tissue).
LESION = {
    "p_no_primary": 0.04, "gtvp_ml": (5.0, 40.0), "gtvp_hu_delta": (25.0, 40.0), "gtvp_suvmax": (5.0, 25.0),
    "p_necrosis": 0.35, "gtvn_radius": (6.0, 14.0), "gtvn_hu_delta": (15.0, 30.0), "gtvn_suv": (3.0, 12.0),
    "n_nodes_p_hpv_pos": (0.15, 0.35, 0.30, 0.20), "n_nodes_p_hpv_neg": (0.40, 0.30, 0.20, 0.10),
    "n_hotspots_p": (0.30, 0.35, 0.25, 0.10), "hotspot_suv": (2.5, 8.0), "hotspot_radius": (3.5, 7.0),
    "n_normal_nodes": (2, 5), "p_metal": 0.2,
}
#: Primary-tumour sites: name -> (x range |mm| lateral, y range, height fraction range); probabilities by HPV.
SITES = {
    "tonsil": ((8.0, 14.0), (4.0, 12.0), (0.52, 0.64)),
    "base_of_tongue": ((0.0, 6.0), (14.0, 22.0), (0.50, 0.60)),
    "larynx": ((3.0, 10.0), (16.0, 26.0), (0.18, 0.32)),
    "hypopharynx": ((8.0, 14.0), (6.0, 12.0), (0.30, 0.42)),
    "oral_cavity": ((5.0, 20.0), (25.0, 36.0), (0.60, 0.68)),
    "nasopharynx": ((0.0, 5.0), (-2.0, 6.0), (0.70, 0.75)),
}
SITE_P = {1: (0.55, 0.30, 0.03, 0.04, 0.04, 0.04), 0: (0.20, 0.10, 0.30, 0.15, 0.20, 0.05)}
#: Airway profile along the height fraction t: centre y, lateral and antero-posterior semi-axes (mm).
AIRWAY_T = (0.0, 0.2, 0.3, 0.4, 0.55, 0.7, 0.78, 0.82)
AIRWAY_Y = (22.0, 22.0, 16.0, 10.0, 8.0, 8.0, 6.0, 4.0)
AIRWAY_RX = (8.0, 9.0, 12.0, 13.0, 14.0, 12.0, 8.0, 0.0)
AIRWAY_RY = (7.0, 8.0, 7.0, 6.0, 7.0, 7.0, 5.0, 0.0)


@dataclass
class RefGrid:
    """Reference-frame coordinates (mm) of the CT voxels as open (broadcastable) grids."""

    x: np.ndarray  # (nx, 1, 1)
    y: np.ndarray  # (1, ny, 1)
    z: np.ndarray  # (1, 1, nz)
    vox_ref: tuple[float, float, float]  # voxel size in reference mm

    @classmethod
    def make(cls, shape: tuple[int, int, int], spacing: tuple[float, float, float], size: float,
             shift: tuple[float, float], z_shift: float) -> RefGrid:
        """Map a CT grid onto the reference patient scaled by ``size``, shifted in-plane by ``shift`` mm."""
        sxy = min(shape[0] * spacing[0], shape[1] * spacing[1]) / REF_FOV_MM[0] * size
        vz = REF_FOV_MM[2] / shape[2]
        x = (np.arange(shape[0]) - (shape[0] - 1) / 2) * spacing[0] / sxy - shift[0]
        y = (np.arange(shape[1]) - (shape[1] - 1) / 2) * spacing[1] / sxy - shift[1]
        z = (np.arange(shape[2]) + 0.5) * vz + z_shift * REF_FOV_MM[2]
        return cls(x[:, None, None], y[None, :, None], z[None, None, :],
                   (spacing[0] / sxy, spacing[1] / sxy, vz))

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.x.shape[0], self.y.shape[1], self.z.shape[2])

    @property
    def t(self) -> np.ndarray:
        """Height fraction of the reference patient (0 inferior, 1 top of the box)."""
        return self.z / REF_FOV_MM[2]

    @property
    def voxel_ml(self) -> float:
        """Voxel volume in reference mL."""
        return float(np.prod(self.vox_ref)) / 1000.0

    def box(self, centre: np.ndarray, half: float) -> tuple[slice, slice, slice]:
        """Voxel slices of the cube of half-size ``half`` mm around ``centre`` (clipped to the grid)."""
        out = []
        for axis, c in zip((self.x.ravel(), self.y.ravel(), self.z.ravel()), centre, strict=True):
            out.append(slice(int(np.searchsorted(axis, c - half)), int(np.searchsorted(axis, c + half))))
        return tuple(out)

    def sub(self, sl: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.x[sl[0]], self.y[:, sl[1]], self.z[:, :, sl[2]]


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_vox) -> np.ndarray:
    """Zero-mean, unit-sd gaussian-smoothed noise field (float32).

    Draws from a child generator seeded by one draw of ``rng``, so the parameter stream of a case does
    not depend on the grid size.
    """
    child = np.random.default_rng(int(rng.integers(2**63)))
    n = ndimage.gaussian_filter(child.standard_normal(shape, dtype=np.float32), sigma_vox, mode="wrap")
    return n / (n.std() + 1e-6)


def _smoothstep(t: np.ndarray, a: float, b: float) -> np.ndarray:
    s = np.clip((t - a) / (b - a), 0.0, 1.0)
    return s * s * (3 - 2 * s)


def _ell(x, y, cx, cy, rx, ry) -> np.ndarray:
    return ((x - cx) / np.maximum(rx, 1e-3)) ** 2 + ((y - cy) / np.maximum(ry, 1e-3)) ** 2


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    a, b, c = np.deg2rad(rng.uniform(-max_deg, max_deg, 3))
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def paint_anatomy(g: RefGrid, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict]:
    """Paint the normal head-and-neck anatomy; returns ``hu``, ``suv`` and masks used to place lesions."""
    x, y, t = g.x, g.y, g.t
    hu = np.full(g.shape, TISSUES["air"][0], np.float32)
    suv = np.zeros(g.shape, np.float32)
    bg = rng.uniform(*PHYSIO_SUV["background"])

    def paint(mask: np.ndarray, tissue: str, suv_value: float | None = None) -> None:
        h, s = TISSUES[tissue]
        hu[mask] = h
        suv[mask] = s * bg if suv_value is None else suv_value

    head = _smoothstep(t, 0.5, 0.78)
    shoulders = 1.0 - _smoothstep(t, 0.0, 0.12)
    ax, ay, cy = 57 + 11 * head + 20 * shoulders, 50 + 20 * head + 4 * shoulders, -5 + 7 * head
    fat = rng.uniform(5.0, 13.0)
    body = _ell(x, y, 0, cy, ax, ay) < 1
    inner = _ell(x, y, 0, cy, ax - fat, ay - fat) < 1
    paint(body, "fat")
    paint(inner, "soft")
    neck = t < 0.78
    for side in (-1, 1):
        paint(inner & (_ell(x, y, side * 40, 10, 7, 11) < 1) & (t > 0.04) & (t < 0.62), "muscle")
        paint(inner & (_ell(x, y, side * 20, -40, 13, 10) < 1) & neck, "muscle")
        paint(inner & (_ell(x, y, side * 34, -18, 9, 12) < 1) & (t > 0.1) & (t < 0.6), "fat")
        paint(inner & (_ell(x, y, side * 22, 0, 5, 8) < 1) & (t > 0.5) & (t < 0.75), "fat")
        paint((_ell(x, y, side * 22, 10, 3.5, 3.5) < 1) & neck, "vessel")
        paint((_ell(x, y, side * 30, 6, 5, 5) < 1) & neck, "vessel")
        paint((_ell(x, y, side * 14, 20, 7, 9) < 1) & (t > 0.02) & (t < 0.16), "thyroid")
        glands = (("tonsil", side * 13, 10, 0.58, (6, 7, 9)), ("parotid", side * 48, -5, 0.71, (10, 15, 14)),
                  ("submandibular", side * 28, 28, 0.53, (9, 8, 8)))
        for name, gx, gy, gt, (rx, ry, rz) in glands:
            m = _ell(x, y, gx, gy, rx, ry) + ((g.z - gt * REF_FOV_MM[2]) / rz) ** 2 < 1
            paint(m & inner, name, rng.uniform(*PHYSIO_SUV[name]) * rng.uniform(0.85, 1.15))
    paint(inner & (_ell(x, y, 0, 30, 22, 14) < 1) & (t > 0.56) & (t < 0.7), "soft",
          rng.uniform(*PHYSIO_SUV["tongue"]))

    tv = t.ravel()
    ya, rx, ry = (np.interp(tv, AIRWAY_T, v).reshape(t.shape) for v in (AIRWAY_Y, AIRWAY_RX, AIRWAY_RY))
    q_air = _ell(x, y, 0, ya, rx, ry)
    larynx = (t > 0.17) & (t < 0.32)
    paint((q_air < 2.6) & (q_air > 1.6) & (y > ya) & larynx, "cartilage")
    cords = (q_air < 2.2) & (t > 0.21) & (t < 0.26)
    paint(cords, "soft", rng.uniform(*PHYSIO_SUV["cords"]))
    airway = (q_air < 1) & (rx > 0.5) & ~cords
    paint(airway, "air")

    spine = t < 0.8
    vy = -14 - 4 * head
    disc = np.mod(g.z / 17.0 + rng.uniform(), 1.0) < 0.2
    q_vb = _ell(x, y, 0, vy, 11, 9)
    paint((q_vb < 1) & spine, "cancellous")
    paint((q_vb < 1) & (q_vb > 0.7) & spine, "cortical", TISSUES["cancellous"][1] * bg)
    paint((q_vb < 1) & spine & disc, "disc")
    q_arch = _ell(x, y, 0, vy - 19, 13, 10)
    canal = (_ell(x, y, 0, vy - 17, 6, 6) < 1) & spine
    paint(((q_arch < 1) & (y < vy - 12) | ((np.abs(x) < 3) & (y < vy - 19) & (y > vy - 34))) & spine,
          "cortical")
    paint(canal, "canal")
    jaw = (t > 0.55) & (t < 0.74)
    q_m = _ell(x, y, 0, -2, 44, 44)
    paint((np.abs(q_m - 1) < 0.15) & (y > 0) & jaw & inner, "cortical")
    paint((np.abs(x) > 36) & (np.abs(x) < 43) & (y > -12) & (y < 2) & (t > 0.6) & (t < 0.78), "cortical")
    teeth = (np.abs(_ell(x, y, 0, -2, 38, 38) - 1) < 0.12) & (y > 8) & (t > 0.67) & (t < 0.72)
    paint(teeth, "teeth")

    hx, hy = ax - fat - 5, ay - fat - 8
    grow = np.sqrt(np.clip((t - 0.80) / 0.06, 0.0, 1.0))
    brain = (_ell(x, y, 0, cy - 6, hx * grow, hy * grow) < 1) & (t > 0.8)
    skull = (_ell(x, y, 0, cy - 6, hx * grow + 6, hy * grow + 6) < 1) & (t > 0.8) & ~brain
    base = inner & (t > 0.78) & (t < 0.84) & (y < cy + 20)
    paint(base, "cortical")
    hu[base] -= 600 * np.clip(smooth_noise(rng, g.shape, 2.0)[base], 0, 1)
    paint(skull & inner, "cortical")
    paint(brain, "brain", 0.0)
    brain_suv = rng.uniform(*PHYSIO_SUV["brain"])
    suv[brain] = brain_suv * (1 + 0.12 * smooth_noise(rng, g.shape, 1.5)[brain])
    table = (np.abs(y + 75) < 1.5) & (np.abs(x) < 70)
    paint(table & ~body, "table")
    bone = hu > 150
    masks = {"body": body, "inner": inner, "bone": bone, "airway": airway, "brain": brain}
    return hu, suv, masks


@dataclass
class LesionSummary:
    """What survival and the report need to know about the lesions of one case."""

    label: np.ndarray = field(repr=False)  # uint8 on the CT grid: 0 background, 1 GTVp, 2 GTVn
    gtvp_ml: float  # reference mL
    gtvn_ml: float  # reference mL
    n_nodes: int
    suvmax: float  # true (uncalibrated, unblurred) SUVmax over GTVp and GTVn
    tlg: float  # true total lesion glycolysis, SUV x reference mL
    site: str


def _blob(g: RefGrid, rng: np.random.Generator, centre: np.ndarray, radius: float, lobes: int,
          roughness: float, elong: float = 1.0):
    """Irregular blob: union of ``lobes`` rotated ellipsoids with a noisy boundary, on a bounding box."""
    sl = g.box(centre, radius * 2.4 * max(elong, 1.0))
    if any(s.stop - s.start < 1 for s in sl):
        return sl, None
    bx, by, bz = g.sub(sl)
    rel = np.stack(np.broadcast_arrays(bx - centre[0], by - centre[1], bz - centre[2]), axis=-1)
    q = np.full(rel.shape[:3], np.inf, np.float32)
    for lobe in range(lobes):
        aspect = rng.uniform(0.75, 1.3, 3) * np.array([1.0, 1.0, elong])
        radii = radius * aspect / np.prod(aspect) ** (1 / 3) * (1.0 if lobe == 0 else rng.uniform(0.45, 0.75))
        offset = np.zeros(3)
        if lobe:
            d = rng.standard_normal(3)
            offset = d / np.linalg.norm(d) * radius * rng.uniform(0.5, 0.9)
        local = (rel - offset) @ _rotation(rng, 40.0)
        q = np.minimum(q, ((local / radii) ** 2).sum(-1))
    sigma = np.maximum(radius / 2.5 / np.array(g.vox_ref), 0.5)
    return sl, q + roughness * smooth_noise(rng, q.shape, sigma) < 1


def _uptake(rng: np.random.Generator, g: RefGrid, mask: np.ndarray, peak: float, necrotic: bool):
    """Heterogeneous uptake inside ``mask``: rim fall-off, texture, optional low (necrotic) core."""
    d = ndimage.distance_transform_edt(mask, sampling=g.vox_ref)
    tex = np.tanh(smooth_noise(rng, mask.shape, np.maximum(2.0 / np.array(g.vox_ref), 0.5)))
    act = peak * (0.72 + 0.28 * tex) * (0.75 + 0.25 * np.clip(d / 3.0, 0, 1))
    core = (d > 0.55 * d.max()) & necrotic
    act[core] *= rng.uniform(0.25, 0.5)
    return act, core


def paint_lesions(g: RefGrid, rng: np.random.Generator, hu: np.ndarray, suv: np.ndarray, masks: dict,
                  hpv: int, hu_delta: dict[str, tuple[float, float]] | None = None) -> LesionSummary:
    """Paint GTVp (irregular, modest CT contrast, strong PET uptake) and 0-3 GTVn; return the label.

    Args:
        hu_delta: ranges of the lesions' CT contrast over soft tissue (HU), keys ``gtvp_hu_delta`` and
            ``gtvn_hu_delta``; default those of :data:`LESION`. Only the mapping of the same random draws
            changes, so the label and every later draw are those of the default.
    """
    deltas = {k: LESION[k] for k in ("gtvp_hu_delta", "gtvn_hu_delta")} | dict(hu_delta or {})
    label = np.zeros(g.shape, np.uint8)
    # Lesions keep a voxel's distance from bone (a mandible-invading tumour would be obvious on CT).
    allowed = masks["inner"] & ~ndimage.binary_dilation(masks["bone"]) & ~masks["brain"]
    soft = TISSUES["soft"][0]
    ml = {1: 0.0, 2: 0.0}
    tlg, suvmax = 0.0, 0.0
    site = "none"
    side = rng.choice((-1, 1))
    if rng.uniform() >= LESION["p_no_primary"]:
        site = list(SITES)[rng.choice(len(SITES), p=SITE_P[hpv])]
        (x0, x1), (y0, y1), (t0, t1) = SITES[site]
        centre = np.array([side * rng.uniform(x0, x1), rng.uniform(y0, y1),
                           rng.uniform(t0, t1) * REF_FOV_MM[2]])
        volume = np.exp(rng.uniform(*np.log(LESION["gtvp_ml"]))) * (0.8 if hpv else 1.0)
        radius = 1.0 * (3 * volume * 1000 / (4 * np.pi)) ** (1 / 3)
        sl, m = _blob(g, rng, centre, radius, int(rng.integers(2, 4)), 0.35)
        peak = float(np.clip(np.exp(rng.uniform(*np.log(LESION["gtvp_suvmax"]))) * (1.0 if hpv else 1.15),
                             *LESION["gtvp_suvmax"]))
        if m is not None and (m := m & allowed[sl]).any():
            necrotic = volume > 12 and rng.uniform() < LESION["p_necrosis"]
            act, core = _uptake(rng, g, m, peak, necrotic)
            delta = rng.uniform(*deltas["gtvp_hu_delta"]) - 15.0 * core
            hu[sl][m] = (soft + delta + 5.0 * smooth_noise(rng, m.shape, 1.0))[m]
            suv[sl][m] = act[m]
            masks["airway"][sl] &= ~m
            label[sl][m] = 1
            ml[1] = m.sum() * g.voxel_ml
            tlg += float(act[m].sum()) * g.voxel_ml
            suvmax = max(suvmax, float(act[m].max()))
    probs = LESION["n_nodes_p_hpv_pos"] if hpv else LESION["n_nodes_p_hpv_neg"]
    n_nodes = int(rng.choice(4, p=probs))
    for _ in range(n_nodes):
        s = side if rng.uniform() < 0.8 else -side
        centre = _node_position(rng, s)
        radius = rng.uniform(*LESION["gtvn_radius"])
        sl, m = _blob(g, rng, centre, radius, 1, 0.15, elong=1.3)
        if m is None or not (m := m & allowed[sl] & (label[sl] == 0)).any():
            continue
        cystic = rng.uniform() < (0.35 if hpv else 0.10)
        peak = rng.uniform(*LESION["gtvn_suv"])
        act, core = _uptake(rng, g, m, peak, cystic)
        delta = rng.uniform(*deltas["gtvn_hu_delta"]) - 30.0 * core
        hu[sl][m] = (soft + delta + 5.0 * smooth_noise(rng, m.shape, 1.0))[m]
        suv[sl][m] = act[m]
        label[sl][m] = 2
        ml[2] += m.sum() * g.voxel_ml
        tlg += float(act[m].sum()) * g.voxel_ml
        suvmax = max(suvmax, float(act[m].max()))
    return LesionSummary(label, float(ml[1]), float(ml[2]), n_nodes, suvmax, tlg, site)


def _node_position(rng: np.random.Generator, side: int) -> np.ndarray:
    """A random point of nodal levels II (upper) or III (middle neck) on ``side``, reference mm."""
    if rng.uniform() < 0.6:
        p = (side * rng.uniform(28, 38), rng.uniform(2, 14), rng.uniform(0.45, 0.60))
    else:
        p = (side * rng.uniform(26, 36), rng.uniform(2, 12), rng.uniform(0.28, 0.45))
    return np.array([p[0], p[1], p[2] * REF_FOV_MM[2]])


def paint_confounders(g: RefGrid, rng: np.random.Generator, hu: np.ndarray, suv: np.ndarray, masks: dict,
                      label: np.ndarray) -> int:
    """Unlabelled look-alikes: PET-only inflammation hot spots and CT-only normal (fatty-hilum) nodes.

    Returns the number of PET hot spots.
    """
    free = masks["inner"] & ~masks["bone"] & ~masks["brain"] & ~masks["airway"] & (label == 0)
    for _ in range(int(rng.integers(*LESION["n_normal_nodes"], endpoint=True))):
        sl, m = _blob(g, rng, _node_position(rng, rng.choice((-1, 1))), rng.uniform(3.0, 5.5), 1, 0.1, 1.3)
        if m is not None:
            m &= free[sl]
            hu[sl][m] = TISSUES["soft"][0] - 15.0
            suv[sl][m] = 1.2
    n_hot = int(rng.choice(4, p=LESION["n_hotspots_p"]))
    for _ in range(n_hot):
        if rng.uniform() < 0.6:
            centre = _node_position(rng, rng.choice((-1, 1)))
        else:
            centre = np.array([rng.uniform(-35, 35), rng.uniform(-20, 35),
                               rng.uniform(0.15, 0.7) * REF_FOV_MM[2]])
        sigma = rng.uniform(*LESION["hotspot_radius"]) / 1.5
        sl = g.box(centre, 3 * sigma)
        bx, by, bz = g.sub(sl)
        d2 = (bx - centre[0]) ** 2 + (by - centre[1]) ** 2 + (bz - centre[2]) ** 2
        bump = np.exp(-d2 / (2 * sigma**2))
        suv[sl] += (rng.uniform(*LESION["hotspot_suv"]) * bump * free[sl]).astype(np.float32)
    return n_hot


def add_metal(g: RefGrid, rng: np.random.Generator, hu: np.ndarray, body: np.ndarray) -> bool:
    """Dental fillings with radial streak artefacts in a fraction of cases (applied after the CT blur)."""
    if rng.uniform() >= LESION["p_metal"]:
        return False
    for _ in range(int(rng.integers(1, 4))):
        ang = rng.uniform(0.2, np.pi - 0.2)
        c = np.array([38 * np.cos(ang), -2 + 38 * np.sin(ang), rng.uniform(0.675, 0.715) * REF_FOV_MM[2]])
        dz = np.abs(g.z - c[2])
        ks = dz.ravel() <= max(1.5 * g.vox_ref[2], dz.min())
        if not ks.any():
            continue
        dx, dy = g.x - c[0], g.y - c[1]
        r = np.sqrt(dx**2 + dy**2)
        lobes = rng.integers(6, 14) * np.arctan2(dy, dx) + rng.uniform(0, 2 * np.pi)
        streak = rng.uniform(150, 400) * np.cos(lobes)
        streak = streak * np.exp(-r / 40.0) * (r > 2.5) * body[:, :, ks]
        hu[:, :, ks] += streak
        hu[:, :, ks] = np.where(r < 2.5, TISSUES["metal"][0], hu[:, :, ks])
    return True
