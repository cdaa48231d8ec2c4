"""The results table of a protocol run: rows, files, forgetting and the Markdown report.

One row is the evaluation of one model on the held-out test cases of one centre with one input set::

    {"backbone": "unetr", "method": "pemma_lora", "route": "exact", "recipe": "pemma", "variant": "pet_only",
     "phase": "update_hgj", "phase_index": 2, "eval_centre": "CHUM", "inputs": "ct", "DSCagg_GTVp": 0.71,
     "DSCagg_GTVn": 0.55, "DSCagg_mean": 0.63, "trainable_params": 123456, "percent_of_early_fusion": 7.9}

``route`` / ``recipe`` are the PEMMA methods' CT route and recipe (empty for the baselines, which have neither;
rows written before these columns existed get ``exact`` / ``pemma`` for PEMMA methods). ``HD95_GTVp`` / ``HD95_GTVn``
are means over the cases where HD95 is defined, ``HD95_n_GTVp`` / ``HD95_n_GTVn`` how many those are (of
``n_cases``: a lesion missed or predicted where there is none has no HD95). ``backbone`` may be omitted
(""), ``trainable_params`` / ``percent_of_early_fusion`` may be None, and a
DSCagg is None (NaN is turned into None) when it is undefined (no foreground anywhere). Phases shared by
several variants are repeated under each variant. The figures live in :mod:`pemma.protocol.figures`
(``plot_dsc_across_phases`` and ``plot_overlays`` can also be imported from here).

Example:
    >>> paths = write_results(rows, "results/")
    >>> text = markdown_report(rows, figures={"DSCagg across phases": "dsc_phases.png"})
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pemma.errors import PemmaError
from pemma.io_utils import write_text_atomic
from pemma.protocol.phases import STRATEGY_MODALITIES
from pemma.vocab import EVAL_INPUTS, METHODS

COLUMNS: tuple[str, ...] = ("backbone", "method", "route", "recipe", "variant", "phase", "phase_index", "eval_centre",
                            "inputs", "DSCagg_GTVp", "DSCagg_GTVn", "DSCagg_mean", "HD95_GTVp", "HD95_GTVn", "n_cases",
                            "HD95_n_GTVp", "HD95_n_GTVn", "trainable_params", "percent_of_early_fusion")
DSC_KEYS: tuple[str, ...] = ("DSCagg_GTVp", "DSCagg_GTVn", "DSCagg_mean")
_OPTIONAL = {"backbone": "", "route": "", "recipe": "", "trainable_params": None, "percent_of_early_fusion": None,
             "HD95_GTVp": None, "HD95_GTVn": None, "n_cases": None, "HD95_n_GTVp": None, "HD95_n_GTVn": None}
#: columns of ``results_cases.csv`` (one row per test case, method, phase and input set)
CASE_COLUMNS: tuple[str, ...] = ("backbone", "method", "route", "recipe", "variant", "phase", "phase_index",
                                 "eval_centre", "inputs",
                                 "case_id", "dice_GTVp", "dice_GTVn", "hd95_GTVp", "hd95_GTVn", "gt_ml_GTVp",
                                 "pred_ml_GTVp", "gt_ml_GTVn", "pred_ml_GTVn", "inter_vox_GTVp", "gt_vox_GTVp",
                                 "pred_vox_GTVp", "inter_vox_GTVn", "gt_vox_GTVn", "pred_vox_GTVn")
_GROUP = ("backbone", "method", "route", "recipe", "variant", "inputs")
#: route and recipe of a PEMMA method's row written before the columns existed (today's defaults)
DEFAULT_ROUTE, DEFAULT_RECIPE = "exact", "pemma"


def route_recipe(method: str, row: Mapping[str, Any]) -> tuple[str, str]:
    """A row's ``(route, recipe)``: as written, else the defaults for PEMMA methods and ``("", "")`` for baselines."""
    pemma = method.startswith("pemma_")
    route, recipe = row.get("route"), row.get("recipe")
    return (str(route) if route else (DEFAULT_ROUTE if pemma else ""),
            str(recipe) if recipe else (DEFAULT_RECIPE if pemma else ""))


def method_label(entry: Mapping[str, Any]) -> str:
    """``pemma_lora`` for the default route and recipe, ``pemma_lora (shared, authors)`` otherwise."""
    extra = [v for v, default in ((entry.get("route"), DEFAULT_ROUTE), (entry.get("recipe"), DEFAULT_RECIPE))
             if v and v != default]
    return f"{entry['method']} ({', '.join(extra)})" if extra else str(entry["method"])


def _number(value: Any, what: str) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a number, got {value!r}")
    number = float(value)
    return None if math.isnan(number) else number


def normalise_rows(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Check the rows and return them with exactly :data:`COLUMNS` and plain Python types.

    Raises:
        ValueError: naming the row number and the key (a missing key, an unknown input set, a bad number).
    """
    out = []
    for n, row in enumerate(rows):
        missing = [k for k in COLUMNS if k not in row and k not in _OPTIONAL]
        if missing:
            raise ValueError(f"row {n}: missing key {missing[0]!r}")
        clean = {k: row.get(k, _OPTIONAL.get(k)) for k in COLUMNS}
        if not _known_inputs(clean["inputs"]):
            raise ValueError(f"row {n}: inputs must be an input set such as {' or '.join(EVAL_INPUTS)} (modalities "
                             f"{', '.join(STRATEGY_MODALITIES)} joined by '+'), got {clean['inputs']!r}")
        try:
            clean["phase_index"] = int(clean["phase_index"])
            for key in (*DSC_KEYS, "HD95_GTVp", "HD95_GTVn", "percent_of_early_fusion"):
                clean[key] = _number(clean[key], key)
            for key in ("n_cases", "HD95_n_GTVp", "HD95_n_GTVn"):
                count = _number(clean[key], key)
                clean[key] = None if count is None else int(count)
            params = _number(clean["trainable_params"], "trainable_params")
            clean["trainable_params"] = None if params is None else int(params)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"row {n}: {exc}") from None
        for key in ("backbone", "method", "variant", "phase", "eval_centre"):
            clean[key] = "" if clean[key] is None else str(clean[key])
        clean["route"], clean["recipe"] = route_recipe(clean["method"], row)
        out.append(clean)
    return out


def write_results(rows: Iterable[Mapping[str, Any]], out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``results.csv`` and ``results.json`` (a list of row objects) into ``out_dir``, atomically.

    Args:
        rows: result rows (see the module docstring).
        out_dir: folder, created if needed.

    Returns:
        ``{"csv": path, "json": path}``.

    Example:
        >>> write_results([row], "results")["csv"].name
        'results.csv'
    """
    clean = normalise_rows(rows)
    out = Path(out_dir)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in clean)
    paths = {"csv": out / "results.csv", "json": out / "results.json"}
    write_text_atomic(paths["csv"], buffer.getvalue())
    write_text_atomic(paths["json"], json.dumps(clean, indent=1) + "\n")
    return paths


def _cell(value: Any) -> Any:
    """A CSV cell: an undefined number (None or NaN) is an empty cell, as in ``results.csv``."""
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else value


def write_case_results(case_rows: Iterable[Mapping[str, Any]], out_dir: str | os.PathLike) -> Path:
    """Write ``results_cases.csv``: :data:`CASE_COLUMNS`, one row per case (Dice, HD95 in mm, volumes in mL and the
    voxel counts DSCagg and its bootstrap are made of), so anyone can redo the statistics. An undefined Dice or HD95
    is an empty cell."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CASE_COLUMNS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in case_rows:
        flat = dict(row)
        for c, name in enumerate(("GTVp", "GTVn")):
            counts = (row.get("counts") or [[None] * 3] * 2)[c]
            flat.update({f"inter_vox_{name}": counts[0], f"gt_vox_{name}": counts[1], f"pred_vox_{name}": counts[2]})
        writer.writerow({k: _cell(flat.get(k)) for k in CASE_COLUMNS})
    path = Path(out_dir) / "results_cases.csv"
    write_text_atomic(path, buffer.getvalue())
    return path


def read_results(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read ``results.json`` (or the ``results.json`` inside a folder) back into checked rows.

    Raises:
        PemmaError: one line naming the file when it is missing or not a valid results table.
    """
    path = Path(path)
    path = path / "results.json" if path.is_dir() else path
    try:
        return normalise_rows(json.loads(path.read_text()))
    except FileNotFoundError:
        raise PemmaError(f"{path}: results file not found") from None
    except (ValueError, TypeError, AttributeError) as exc:
        raise PemmaError(f"{path}: not a results table ({str(exc).splitlines()[0]})") from None


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def _method_order(method: str) -> tuple[int, str]:
    return (METHODS.index(method) if method in METHODS else len(METHODS), method)


def _known_inputs(inputs: Any) -> bool:
    """True for an input-set name of the strategy modalities in channel order (``"ct+pet"``, ``"pet+mr"``)."""
    parts = str(inputs).split("+")
    return all(p in STRATEGY_MODALITIES for p in parts) and len(set(parts)) == len(parts) \
        and parts == sorted(parts, key=STRATEGY_MODALITIES.index)


def input_order(inputs: str) -> tuple[int, tuple[int, ...]]:
    """Smaller input sets first, then channel order: ct, pet, ct+pet (:data:`EVAL_INPUTS`), then e.g. mr, ct+mr."""
    parts = inputs.split("+")
    return len(parts), tuple(STRATEGY_MODALITIES.index(p) for p in parts)


def summarise(rows: Iterable[Mapping[str, Any]], centres: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One row per (backbone, method, variant, inputs, phase): each DSCagg averaged over the evaluated centres.

    The average is the plain mean over centres of the per-centre DSCagg (centres with an undefined value are
    left out); ``n_centres`` counts the centres averaged for ``DSCagg_mean``.

    Args:
        rows: result rows.
        centres: average over these centres only (e.g. the pretraining centres). Default: all.

    Example:
        >>> [(e["method"], e["inputs"], e["phase"], e["DSCagg_mean"]) for e in summarise(rows, centres=["CHUM"])]
    """
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in normalise_rows(rows):
        if centres is None or row["eval_centre"] in centres:
            groups.setdefault((*(row[k] for k in _GROUP), row["phase_index"]), []).append(row)
    out = []
    for key, members in groups.items():
        entry = {k: v for k, v in zip(_GROUP, key[:-1], strict=True)}
        entry.update({"phase": members[0]["phase"], "phase_index": key[-1]})
        entry.update({k: _mean(m[k] for m in members) for k in DSC_KEYS})
        entry["n_centres"] = sum(m["DSCagg_mean"] is not None for m in members)
        for k in ("trainable_params", "percent_of_early_fusion"):
            entry[k] = next((m[k] for m in members if m[k] is not None), None)
        out.append(entry)
    out.sort(key=lambda e: (e["backbone"], e["variant"], _method_order(e["method"]), e["route"], e["recipe"],
                            input_order(e["inputs"]),
                            e["phase_index"]))
    return out


def forgetting_table(rows: Iterable[Mapping[str, Any]],
                     learnt_at: Mapping[str, int] | None = None) -> list[dict[str, Any]]:
    """How much DSCagg mean each earlier centre loses after each later phase.

    Definition, for every (backbone, method, variant, inputs) and evaluated centre ``c``:

    * ``L(c)``, the phase where ``c`` was learnt: ``learnt_at[c]`` when given (``Strategy.centre_learnt_at``),
      otherwise the first phase index at which ``c`` appears in the rows (the runner evaluates only centres
      seen so far, so this is the phase that trained on it);
    * the reference ``R(c)``: the first phase ``>= L(c)`` with a defined DSCagg mean for ``c`` with these
      inputs (normally ``L(c)`` itself; later when the model could not take the inputs yet, e.g. PET input
      on a CT-only pretrained model);
    * for every later phase ``p > R(c)`` with a defined value: ``drop = DSCagg_mean(R) - DSCagg_mean(p)``.
      Positive = forgotten, negative = improved.

    Args:
        rows: result rows.
        learnt_at: ``{centre: phase index}``; centres missing from it use the first-appearance rule.

    Returns:
        Rows with keys backbone, method, variant, inputs, centre, learnt_phase, learnt_phase_index,
        reference_phase, reference_phase_index, reference_DSCagg_mean, phase, phase_index, DSCagg_mean, drop.

    Example:
        >>> table = forgetting_table(rows, learnt_at=strategy.centre_learnt_at("pet_only"))
        >>> worst = max(table, key=lambda r: r["drop"])
    """
    series: dict[tuple, dict[int, float | None]] = {}
    names: dict[tuple, dict[int, str]] = {}
    for row in normalise_rows(rows):
        group = tuple(row[k] for k in _GROUP)
        series.setdefault((*group, row["eval_centre"]), {})[row["phase_index"]] = row["DSCagg_mean"]
        names.setdefault(group, {})[row["phase_index"]] = row["phase"]
    out = []
    for key in series:
        values, centre, group = series[key], key[-1], key[:-1]
        learnt = learnt_at[centre] if learnt_at is not None and centre in learnt_at else min(values)
        reference = next((i for i in sorted(values) if i >= learnt and values[i] is not None), None)
        if reference is None:
            continue
        ref_value = values[reference]
        for index in sorted(i for i in values if i > reference and values[i] is not None):
            out.append({**dict(zip(_GROUP, group, strict=True)), "centre": centre,
                        "learnt_phase": names[group].get(learnt, ""), "learnt_phase_index": learnt,
                        "reference_phase": names[group][reference], "reference_phase_index": reference,
                        "reference_DSCagg_mean": ref_value, "phase": names[group][index], "phase_index": index,
                        "DSCagg_mean": values[index], "drop": ref_value - values[index]})
    out.sort(key=lambda e: (e["backbone"], e["variant"], _method_order(e["method"]), e["route"], e["recipe"],
                            input_order(e["inputs"]),
                            e["reference_phase_index"], e["centre"], e["phase_index"]))
    return out


def mean_forgetting(forgetting: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Average :func:`forgetting_table` drops over the earlier centres, per group and later phase.

    Returns:
        Rows with keys backbone, method, variant, inputs, phase, phase_index, mean_drop, max_drop, n_centres.
    """
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in forgetting:
        groups.setdefault((*(row[k] for k in _GROUP), row["phase_index"]), []).append(row)
    out = [{**dict(zip(_GROUP, key[:-1], strict=True)), "phase": members[0]["phase"], "phase_index": key[-1],
            "mean_drop": _mean(m["drop"] for m in members), "max_drop": max(m["drop"] for m in members),
            "n_centres": len(members)} for key, members in groups.items()]
    out.sort(key=lambda e: (e["backbone"], e["variant"], _method_order(e["method"]), e["route"], e["recipe"],
                            input_order(e["inputs"]),
                            e["phase_index"]))
    return out


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def _table(header: Sequence[str], body: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(cells) + " |" for cells in body]


def _blocks(entries: Sequence[Mapping[str, Any]]) -> list[tuple[str, list[Mapping[str, Any]]]]:
    keys = list(dict.fromkeys((e["backbone"], e["variant"]) for e in entries))
    return [(" · ".join(p for p in (b, f"variant {v}" if v else "") if p) or "all runs",
             [e for e in entries if (e["backbone"], e["variant"]) == (b, v)]) for b, v in keys]


def markdown_report(rows: Iterable[Mapping[str, Any]], *, title: str = "PEMMA protocol results",
                    figures: Mapping[str, str] | None = None, learnt_at: Mapping[str, int] | None = None,
                    notes: Sequence[str] = (), extra_sections: Sequence[str] = ()) -> str:
    """Paper-shaped Markdown: DSCagg by method × input set × phase, per-centre DSCagg, forgetting, figures.

    Args:
        rows: result rows.
        title: the level-1 heading.
        figures: ``{caption: relative path}`` of PNGs to embed.
        learnt_at: passed to :func:`forgetting_table`.
        notes: paragraphs printed under the title (set-up, seeds, wall time).
        extra_sections: Markdown lines placed after the notes (e.g. findings, the prognosis table).

    Example:
        >>> write_text_atomic("results/report.md", markdown_report(rows, figures={"DSCagg": "dsc.png"}))
    """
    clean = normalise_rows(rows)
    lines = [f"# {title}", ""]
    for note in notes:
        lines += [note, ""]
    if extra_sections:
        lines += [*extra_sections, ""]
    lines += ["## Segmentation", "",
              "DSCagg on the held-out test cases, averaged over the centres evaluated after each phase (every "
              "centre seen so far). Trainable parameters are those the phase trains; % is relative to the "
              "early-fusion model.", ""]
    for label, entries in _blocks(summarise(clean)):
        body = [(method_label(e), e["inputs"], f"{e['phase_index']}: {e['phase']}", _fmt(e["DSCagg_GTVp"]),
                 _fmt(e["DSCagg_GTVn"]), _fmt(e["DSCagg_mean"]),
                 "–" if e["trainable_params"] is None else f"{e['trainable_params']:,}",
                 "–" if e["percent_of_early_fusion"] is None else f"{e['percent_of_early_fusion']:.2f}%")
                for e in entries]
        lines += [f"### {label}", ""]
        lines += _table(("Method", "Inputs", "Phase", "DSCagg GTVp", "DSCagg GTVn", "DSCagg mean",
                         "Trainable params", "% of early fusion"), body) + [""]
        mine = [r for r in clean if (r["backbone"], r["variant"]) == (entries[0]["backbone"], entries[0]["variant"])]
        centres = list(dict.fromkeys(r["eval_centre"] for r in sorted(mine, key=lambda r: r["phase_index"])))
        cell = {(method_label(r), r["inputs"], r["phase_index"], r["eval_centre"]): r["DSCagg_mean"] for r in mine}
        body = [(method_label(e), e["inputs"], f"{e['phase_index']}: {e['phase']}",
                 *(_fmt(cell.get((method_label(e), e["inputs"], e["phase_index"], c))) for c in centres))
                for e in entries]
        lines += ["DSCagg mean per evaluated centre:", ""]
        lines += _table(("Method", "Inputs", "Phase", *centres), body) + [""]
    forgetting = forgetting_table(clean, learnt_at)
    lines += ["## Forgetting", "",
              "Drop in DSCagg mean on each earlier centre after each later phase, relative to the value right "
              "after the phase where the centre was learnt (positive = forgotten, negative = improved).", ""]
    if not forgetting:
        lines += ["No centre was evaluated after a later phase.", ""]
    for label, entries in _blocks(forgetting):
        phases = sorted({(e["phase_index"], e["phase"]) for e in entries})
        cells: dict[tuple, dict[int, float]] = {}
        for e in entries:
            key = (method_label(e), e["inputs"], e["centre"], e["reference_phase"])
            cells.setdefault(key, {})[e["phase_index"]] = e["drop"]
        body = [(*key, *(_fmt(drops.get(i), signed=True) for i, _ in phases)) for key, drops in cells.items()]
        lines += [f"### {label}", ""]
        lines += _table(("Method", "Inputs", "Centre", "Reference", *(f"after {n}" for _, n in phases)), body)
        means: dict[tuple, dict[int, float | None]] = {}
        for m in mean_forgetting(entries):
            means.setdefault((method_label(m), m["inputs"]), {})[m["phase_index"]] = m["mean_drop"]
        body = [(*key, *(_fmt(drops.get(i), signed=True) for i, _ in phases)) for key, drops in means.items()]
        lines += ["", "Mean drop over the earlier centres:", ""]
        lines += _table(("Method", "Inputs", *(f"after {n}" for _, n in phases)), body) + [""]
    if figures:
        lines += ["## Figures", ""]
        for caption, path in figures.items():
            lines += [f"![{caption}]({path})", "", f"*{caption}* ([{path}]({path}))", ""]
    return "\n".join(lines).rstrip() + "\n"
