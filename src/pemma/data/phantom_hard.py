"""The ``hard`` phantom difficulty: weaker CT contrast and more PET look-alikes than the default phantom.

What changes against the default (``normal``) phantom of the same seed, and nothing else:

* **CT contrast.** GTVp is 0-25 HU over soft tissue (default 25-40), GTVn 0-15 HU (default 15-30); the same
  random draws are mapped onto the lower ranges, so labels, lesion volumes, SUVs, clinical rows, endpoints
  and grids (shapes, affines) are those of the default case.
* **Unlabelled PET hot spots.** 1-4 more inflammation / reactive-node hot spots (SUV 3-12, the GTVn range)
  at the nodal levels or the mucosa, and 0-2 reactive nodes that look like a small node on CT *and* take up
  FDG (SUV 2.5-6), none of them labelled.
* **Physiological uptake** as it is seen in head-and-neck PET: bilateral brown fat in the lower neck /
  supraclavicular fat (SUV 3-10), muscle uptake (pterygoid or sternocleidomastoid, one side or both, SUV
  2-5), and higher salivary-gland and tonsil uptake (x 1.0-1.6). Brain uptake is in every phantom. Bladder
  and myocardium lie outside a head-and-neck field of view (skull base to shoulders), so they are not painted.

These draws come from a random stream of their own (derived from the seed, centre and case), so the default
phantom is unchanged by the option and a hard case differs from its default twin only by the above. The
parameters are fixed here, not tuned to any method's result.
"""

from __future__ import annotations

import numpy as np

from pemma.data.phantom_anatomy import REF_FOV_MM, TISSUES, RefGrid, _blob, _ell, _node_position, smooth_noise
from pemma.vocab import PHANTOM_DIFFICULTIES as DIFFICULTIES

__all__ = ["DIFFICULTIES", "HARD", "HARD_HU_DELTA", "paint_hard_confounders"]

#: Lesion CT contrast over soft tissue (HU) of the hard phantom (the default is in ``phantom_anatomy.LESION``).
HARD_HU_DELTA: dict[str, tuple[float, float]] = {"gtvp_hu_delta": (0.0, 25.0), "gtvn_hu_delta": (0.0, 15.0)}
#: Extra confounders and physiological uptake of the hard phantom (SUV before calibration, sizes in reference mm).
HARD = {
    "n_hotspots": (1, 4), "hotspot_suv": (3.0, 12.0), "hotspot_radius": (3.5, 8.0), "p_hotspot_at_node": 0.6,
    "n_reactive_nodes": (0, 2), "reactive_radius": (3.5, 6.0), "reactive_hu_delta": (5.0, 20.0),
    "reactive_suv": (2.5, 6.0),
    "p_brown_fat": 0.35, "brown_fat_suv": (3.0, 10.0),
    "p_muscle": 0.4, "muscle_suv": (2.0, 5.0),
    "gland_boost": (1.0, 1.6),
}


def _bump(g: RefGrid, centre: np.ndarray, sigma: float) -> tuple[tuple[slice, slice, slice], np.ndarray]:
    sl = g.box(centre, 3 * sigma)
    bx, by, bz = g.sub(sl)
    d2 = (bx - centre[0]) ** 2 + (by - centre[1]) ** 2 + (bz - centre[2]) ** 2
    return sl, np.exp(-d2 / (2 * sigma**2))


def paint_hard_confounders(g: RefGrid, rng: np.random.Generator, hu: np.ndarray, suv: np.ndarray, masks: dict,
                           label: np.ndarray) -> dict[str, int]:
    """Paint the hard phantom's unlabelled hot spots, reactive nodes and physiological uptake.

    Args:
        g: the case's reference grid.
        rng: the hard stream of the case (draws nothing from the default streams).
        hu, suv: noise-free CT (HU) and true activity (SUV) on the CT grid, changed in place.
        masks: anatomy masks of :func:`~pemma.data.phantom_anatomy.paint_anatomy`.
        label: the lesion label; no voxel of a lesion is touched.

    Returns:
        Counts of what was painted: ``hotspots``, ``reactive_nodes``, ``brown_fat``, ``muscle``.
    """
    free = masks["inner"] & ~masks["bone"] & ~masks["brain"] & ~masks["airway"] & (label == 0)
    t = g.t
    h = HARD
    # Upper-neck physiological uptake (salivary glands, tonsils, blood pool) scaled up.
    boost = rng.uniform(*h["gland_boost"])
    glands = (suv > 1.5) & free & (t > 0.45) & (t < 0.8)
    suv[glands] *= boost
    n_hot = int(rng.integers(h["n_hotspots"][0], h["n_hotspots"][1], endpoint=True))
    for _ in range(n_hot):
        if rng.uniform() < h["p_hotspot_at_node"]:
            centre = _node_position(rng, rng.choice((-1, 1)))
        else:
            centre = np.array([rng.uniform(-30, 30), rng.uniform(0, 30), rng.uniform(0.2, 0.7) * REF_FOV_MM[2]])
        sl, bump = _bump(g, centre, rng.uniform(*h["hotspot_radius"]) / 1.5)
        suv[sl] += (rng.uniform(*h["hotspot_suv"]) * bump * free[sl]).astype(np.float32)
    n_reactive = int(rng.integers(h["n_reactive_nodes"][0], h["n_reactive_nodes"][1], endpoint=True))
    painted = 0
    for _ in range(n_reactive):
        sl, m = _blob(g, rng, _node_position(rng, rng.choice((-1, 1))), rng.uniform(*h["reactive_radius"]), 1,
                      0.1, 1.3)
        delta, uptake = rng.uniform(*h["reactive_hu_delta"]), rng.uniform(*h["reactive_suv"])
        if m is None or not (m := m & free[sl]).any():
            continue
        hu[sl][m] = TISSUES["soft"][0] + delta
        suv[sl][m] = uptake
        painted += 1
    brown = rng.uniform() < h["p_brown_fat"]
    if brown:
        # Bilateral supraclavicular / lower-neck fat: patchy uptake in the fat of the lower neck.
        level = rng.uniform(*h["brown_fat_suv"])
        patch = np.clip(1.0 + 0.6 * smooth_noise(rng, g.shape, 2.0), 0.2, None)
        region = (masks["body"] & ~masks["inner"] | (hu < -50) & masks["inner"]) & (t < 0.35) & (label == 0)
        region &= (np.abs(g.x) > 20) & ~masks["bone"]
        suv[region] = np.maximum(suv[region], (level * patch)[region])
    muscle = rng.uniform() < h["p_muscle"]
    if muscle:
        level = rng.uniform(*h["muscle_suv"])
        sides = (-1, 1) if rng.uniform() < 0.5 else (int(rng.choice((-1, 1))),)
        for side in sides:
            if rng.uniform() < 0.5:  # sternocleidomastoid
                m = (_ell(g.x, g.y, side * 40, 10, 7, 11) < 1) & (t > 0.04) & (t < 0.62)
            else:  # pterygoid
                m = (_ell(g.x, g.y, side * 28, 0, 7, 9) < 1) & (t > 0.6) & (t < 0.74)
            m &= free
            suv[m] = np.maximum(suv[m], level)
    return {"hotspots": n_hot, "reactive_nodes": painted, "brown_fat": int(brown), "muscle": int(muscle)}

