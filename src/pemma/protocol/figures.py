"""PNG figures of a protocol run: DSCagg across phases, and CT / PET / ground truth / prediction overlays.

Both functions draw with Matplotlib's object API on the Agg canvas (no display, no global backend change)
and write the PNG atomically. Loading volumes and predicting are the caller's job: :func:`plot_overlays`
takes 2-D slices that are already in memory.

Example:
    >>> plot_dsc_across_phases(rows, "results/dsc_phases_pet_only.png", variant="pet_only")
    >>> plot_overlays([{"case_id": "HGJ-003", "ct": ct, "pet": pet, "label": gt,
    ...                 "predictions": {"pemma_lora": p1, "early_fusion": p2}}], "results/overlays.png")
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pemma.io_utils import atomic_path
from pemma.protocol.results import DSC_KEYS, input_order, summarise
from pemma.vocab import EVAL_INPUTS

#: label value -> (name, RGBA) drawn over CT
LABEL_COLOURS: dict[int, tuple[str, tuple[float, float, float, float]]] = {
    1: ("GTVp", (0.95, 0.15, 0.15, 0.55)), 2: ("GTVn", (0.15, 0.55, 1.0, 0.55))}
_LINESTYLES = ("-", "--", ":", "-.")


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    return path


def plot_dsc_across_phases(rows: Iterable[Mapping[str, Any]], path: str | os.PathLike, *,
                           metric: str = "DSCagg_mean", variant: str | None = None, backbone: str | None = None,
                           centres: Sequence[str] | None = None, title: str | None = None) -> Path:
    """One subplot per input set (CT, PET, CT+PET), one line per method: DSCagg against the phase.

    Each point is the mean over the evaluated centres (see :func:`pemma.protocol.results.summarise`); with
    several variants or backbones in ``rows`` each gets its own line style, unless filtered.

    Args:
        rows: result rows.
        path: the PNG to write.
        metric: ``DSCagg_mean``, ``DSCagg_GTVp`` or ``DSCagg_GTVn``.
        variant: plot this variant only. Default: all.
        backbone: plot this backbone only. Default: all.
        centres: average over these centres only (e.g. the pretraining centres, to show forgetting).
        title: figure title. Default: the metric.

    Returns:
        ``path``.

    Example:
        >>> plot_dsc_across_phases(rows, "dsc.png", centres=["CHUM", "CHUP", "CHUS", "CHUV"])
    """
    if metric not in DSC_KEYS:
        raise ValueError(f"metric must be one of {DSC_KEYS}, got {metric!r}")
    entries = [e for e in summarise(rows, centres) if (variant is None or e["variant"] == variant)
               and (backbone is None or e["backbone"] == backbone)]
    inputs = sorted({e["inputs"] for e in entries}, key=input_order) or list(EVAL_INPUTS)
    phases = dict(sorted({e["phase_index"]: e["phase"] for e in entries}.items()))
    runs = list(dict.fromkeys((e["backbone"], e["variant"]) for e in entries))
    methods = list(dict.fromkeys(e["method"] for e in entries))
    fig = _new_figure(4.2 * len(inputs), 3.6)
    axes = fig.subplots(1, len(inputs), squeeze=False, sharey=True)[0]
    colours = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    for ax, inp in zip(axes, inputs, strict=True):
        for r, (bb, var) in enumerate(runs):
            for method in methods:
                points = [(e["phase_index"], e[metric]) for e in entries if e["inputs"] == inp
                          and e["method"] == method and (e["backbone"], e["variant"]) == (bb, var)
                          and e[metric] is not None]
                if not points:
                    continue
                label = " · ".join(p for p in (method, bb if len({b for b, _ in runs}) > 1 else "",
                                               var if len({v for _, v in runs}) > 1 else "") if p)
                xs, ys = zip(*sorted(points), strict=True)
                ax.plot(xs, ys, marker="o", color=colours[method], linestyle=_LINESTYLES[r % len(_LINESTYLES)],
                        label=label)
        ax.set_title(f"{inp.upper()} input")
        ax.set_xticks(list(phases), [f"{i}: {n}" for i, n in phases.items()], rotation=30, ha="right")
        ax.set_ylim(0.0, 1.0)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(metric.replace("_", " "))
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes[1:]:
        more = ax.get_legend_handles_labels()
        handles += [h for h, lab in zip(*more, strict=True) if lab not in labels]
        labels += [lab for lab in more[1] if lab not in labels]
    if handles:
        fig.legend(handles, labels, loc="outside right upper", fontsize="small")
    fig.suptitle(title or f"{metric.replace('_', ' ')} across phases" + (f" ({variant})" if variant else ""))
    return _save(fig, path)


def _overlay(mask: np.ndarray) -> np.ndarray:
    rgba = np.zeros((*mask.shape, 4), dtype=np.float32)
    for value, (_, colour) in LABEL_COLOURS.items():
        rgba[mask == value] = colour
    return rgba


def _window(image: np.ndarray, low: float, high: float) -> tuple[float, float]:
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(finite, [low, high]))
    return lo, hi if hi > lo else lo + 1.0


def plot_overlays(cases: Sequence[Mapping[str, Any]], path: str | os.PathLike, *, title: str | None = None) -> Path:
    """A grid, one row per case: CT, PET, ground truth over CT, then each prediction over CT.

    Args:
        cases: mappings with 2-D arrays of one shape: ``ct``, ``pet``, ``label`` (0/1 GTVp/2 GTVn) and
            ``prediction`` (an array) or ``predictions`` (``{method: array}``); optional ``case_id``. Arrays
            are indexed ``[x, y]`` like a nibabel slice (``volume[:, :, k]``) and drawn with x to the right.
        path: the PNG to write.
        title: figure title.

    Returns:
        ``path``.

    Raises:
        ValueError: naming the case when an array is missing, not 2-D, or of another shape.

    Example:
        >>> plot_overlays([{"case_id": "MDA-001", "ct": ct, "pet": pet, "label": gt, "prediction": pred}], "o.png")
    """
    if not cases:
        raise ValueError("plot_overlays needs at least one case")
    prepared = []
    for n, case in enumerate(cases):
        name = str(case.get("case_id", f"case {n}"))
        preds = case.get("predictions") or ({"prediction": case["prediction"]} if "prediction" in case else {})
        arrays = {"CT": case.get("ct"), "PET": case.get("pet"), "ground truth": case.get("label"), **preds}
        for key, value in arrays.items():
            if value is None:
                raise ValueError(f"{name}: missing {key} slice")
            arrays[key] = np.asarray(value)
            if arrays[key].ndim != 2 or arrays[key].shape != arrays["CT"].shape:
                raise ValueError(f"{name}: {key} must be a 2-D slice of shape {arrays['CT'].shape}, "
                                 f"got {arrays[key].shape}")
        prepared.append((name, arrays))
    n_cols = max(len(arrays) for _, arrays in prepared)
    fig = _new_figure(2.4 * n_cols, 2.5 * len(prepared))
    axes = fig.subplots(len(prepared), n_cols, squeeze=False)
    for row, (name, arrays) in enumerate(prepared):
        ct = arrays["CT"].astype(np.float32)
        ct_range = _window(ct, 1, 99)
        for col, (key, image) in enumerate(arrays.items()):
            ax = axes[row][col]
            if key == "PET":
                vmax = max(_window(image.astype(np.float32), 0, 99.5)[1], 1e-6)
                ax.imshow(image.T, cmap="hot", vmin=0.0, vmax=vmax, origin="lower", interpolation="nearest")
            else:
                ax.imshow(ct.T, cmap="gray", vmin=ct_range[0], vmax=ct_range[1], origin="lower",
                          interpolation="nearest")
                if key != "CT":
                    ax.imshow(_overlay(np.rint(image).astype(np.int64)).transpose(1, 0, 2), origin="lower",
                              interpolation="nearest")
            ax.set_title(key, fontsize="small")
            ax.set_xticks([])
            ax.set_yticks([])
        for col in range(len(arrays), n_cols):
            axes[row][col].axis("off")
        axes[row][0].set_ylabel(name, fontsize="small")
    legend = ", ".join(f"{label}: {'red' if value == 1 else 'blue'}" for value, (label, _) in LABEL_COLOURS.items())
    fig.suptitle(title or f"Ground truth and predictions ({legend})", fontsize="medium")
    return _save(fig, path)
