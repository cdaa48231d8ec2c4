"""The prognosis experiment of ``pemma reproduce``: CT -> CT+PET -> CT+PET+EHR on the pretrained CT model.

For each backbone: one CT stage (a survival head on the frozen CT encoder of the strategy's ``pretrain``
run), then per adapter method (LoRA, DoRA) ``+PET`` (PEMMA PET pathway + adapters) and ``+EHR`` (the
clinical projection). Every stage trains on the strategy split's training cases of the prognosis centres,
logs its validation C-index, and is evaluated on the held-out cases (validation + test: the prognosis
stages keep their final weights, so validation cases are not used for selection) with Harrell's C-index
and a bootstrap 95% interval.

Runs live in ``OUT/runs/<backbone>/prognosis_<settings digest>/<stage>``; a stage whose ``stage.json`` exists
is finished and not recomputed, and its evaluation is cached in ``evaluation.json``.

Beside these neural stages, the lesion-feature chain (:func:`run_lesion_chains`: lesion volumes and PET uptake
in the models' own segmentations, ridge Cox per stage with the penalty chosen by inner CV) runs on the same split
into ``.../prognosis_<digest>/lesion_<segmentation>/chain.json``; its rows (method ``lesion-cox:<segmentation>``,
with a CT stage of its own) follow the neural ones, and its ``cindex_gain_pet`` / ``cindex_gain_pet_ehr`` claims go
into ``findings.json`` under a label of their own (:func:`pemma.protocol.claims.cindex.prognosis_findings`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pemma.config import build_config
from pemma.errors import PemmaError
from pemma.inference.predict import WindowSettings
from pemma.inference.prediction_cache import PredictionCache
from pemma.io_utils import write_text_atomic
from pemma.protocol.phases import PrognosisSpec
from pemma.protocol.provenance import record_machine
from pemma.runtime import resolve_device

#: one row per (backbone, method, stage)
PROGNOSIS_COLUMNS: tuple[str, ...] = ("backbone", "method", "stage", "c_index", "ci_low", "ci_high", "n_cases",
                                      "events", "val_c_index", "trainable_params", "steps", "note")
#: the method of the lesion-feature chain's rows: ``lesion-cox:<segmentation>`` (``lesion_<segmentation>`` folder)
LESION_METHOD = "lesion-cox"


def _stages(spec: PrognosisSpec) -> list[tuple[str, str, str | None, str | None, bool]]:
    """(run name, method label, parent run name, added modality, adds EHR) in training order."""
    out: list[tuple[str, str, str | None, str | None, bool]] = [("ct", "CT model", None, None, False)]
    for method in spec.methods:
        out.append((f"{method}_ct+pet", method, "ct", "pet", False))
        out.append((f"{method}_ct+pet+ehr", method, f"{method}_ct+pet", None, True))
    return out


def run_prognosis(spec: PrognosisSpec, *, data_root: str, base_run: Path, out: Path, backbone: str, preset: str,
                  seed: int, max_steps: int | None, train_ids: Sequence[str], val_ids: Sequence[str],
                  held_out_ids: Sequence[str], centres: Sequence[str],
                  segmentation_adapters: Mapping[str, Path] | None = None,
                  predictions: PredictionCache | None = None, lesion: bool = True) -> list[dict[str, Any]]:
    """Train (or reuse) and evaluate every prognosis stage; returns the rows (:data:`PROGNOSIS_COLUMNS`).

    Args:
        spec: the strategy's prognosis section.
        data_root: the dataset (images, endpoint and clinical CSVs).
        base_run: the CT segmentation run (the strategy's pretrain phase).
        out: the backbone's prognosis folder; stages go in sub-folders.
        backbone, preset, seed, max_steps: as for the segmentation phases.
        train_ids, val_ids: the split's training and validation cases of ``centres``.
        held_out_ids: the cases the C-index is computed on.
        centres: the prognosis centres.
        segmentation_adapters: ``{method: PEMMA segmentation run}`` whose adapters start the +PET stage.
        predictions: segmentations already made in this process, reused by the lesion chain (see
            :func:`run_lesion_chains`).
        lesion: also run the lesion-feature chains (default); ``False``: the neural stages only (a caller that runs
            :func:`run_lesion_chains` elsewhere, e.g. in a worker process at the same time).
    """
    from pemma.survival.evaluate import evaluate_survival
    from pemma.survival.training import adapt_survival, train_survival

    rows = []
    for name, method, parent, add_modality, add_ehr in _stages(spec):
        run = out / name
        modalities = ["ct", "pet"] if (add_modality or (parent and parent != "ct")) else ["ct"]
        cfg = build_config(preset, overrides={
            "data": {"root": data_root, "centres": list(centres), "modalities": modalities},
            "model": {"backbone": backbone},
            "train": {"seed": seed, "max_steps": max_steps, "epochs": spec.epochs}})
        if not (run / "stage.json").is_file():
            record_machine(run, resolve_device("auto"))
            split = (list(train_ids), list(val_ids))
            if parent is None:
                summary = train_survival(base_run, cfg, run, head=spec.head, split=split, l2=spec.l2)
            else:
                init = (segmentation_adapters or {}).get(method) if add_modality else None
                summary = adapt_survival(out / parent, cfg, run, add_modality=add_modality, add_ehr=add_ehr,
                                         method=method, split=split, train_adapters=spec.train_adapters,
                                         init_adapters=init, l2=spec.l2)
            write_text_atomic(run / "stage.json", json.dumps(summary, indent=2, default=float))
        summary = json.loads((run / "stage.json").read_text())
        evaluation = run / "evaluation.json"
        if not evaluation.is_file():
            try:
                result = evaluate_survival(run, data_root, centres=list(centres), out_dir=run / "evaluation",
                                           seed=seed, case_ids=held_out_ids, device="auto")
                result = {k: result[k] for k in ("c_index", "ci_low", "ci_high", "n_cases", "events", "km_plot")}
            except PemmaError as exc:  # e.g. no relapse among the held-out cases: the C-index is undefined
                result = {"c_index": None, "ci_low": None, "ci_high": None, "n_cases": len(held_out_ids),
                          "events": None, "note": str(exc)}
            write_text_atomic(evaluation, json.dumps(result, indent=2))
        result = json.loads(evaluation.read_text())
        rows.append({"backbone": backbone, "method": method, "stage": summary["stage"],
                     "c_index": result["c_index"], "ci_low": result["ci_low"], "ci_high": result["ci_high"],
                     "n_cases": result["n_cases"], "events": result["events"],
                     "val_c_index": summary.get("val_c_index"), "trainable_params": summary.get("trainable"),
                     "steps": summary.get("steps"),
                     "note": result.get("note") or ("overfitting: training C-index exceeds the validation one"
                                                    if summary.get("overfitting") else None)})
    if not lesion:
        return rows
    try:  # its claims reach findings.json through protocol.claims.cindex.prognosis_findings
        rows += run_lesion_chains(data_root=data_root, base_run=base_run, out=out, backbone=backbone, seed=seed,
                                  train_ids=train_ids, held_out_ids=held_out_ids, centres=centres,
                                  methods=spec.methods, segmentation_adapters=segmentation_adapters,
                                  predictions=predictions)
    except PemmaError as exc:
        print(f"prognosis ({backbone}): lesion-feature chain not run: {exc}", flush=True)
    return rows


def run_lesion_chains(*, data_root: str, base_run: Path, out: Path, backbone: str, seed: int,
                      train_ids: Sequence[str], held_out_ids: Sequence[str], centres: Sequence[str],
                      methods: Sequence[str], segmentation_adapters: Mapping[str, Path] | None = None,
                      predictions: PredictionCache | None = None, amp: bool = False) -> list[dict[str, Any]]:
    """The lesion-feature chain (:mod:`pemma.survival.chain`) beside the neural stages: the CT stage measures the
    CT run's segmentation; the CT+PET stages measure each method's PEMMA segmentation run when there is one
    (``lesion_<method>``), else the CT run's (``lesion_ct``). Cached in ``<chain>/chain.json``; rows as
    :data:`PROGNOSIS_COLUMNS` (:func:`chain_rows`, method ``lesion-cox:<segmentation>``).

    Every chain segments every case with the CT run: one :class:`PredictionCache` (``predictions``, or a new one
    predicting with autocast when ``amp``, bf16 on the CPU and fp16 on CUDA: the run's precision) serves them all,
    so each case is segmented by the CT run once, and not at all where evaluation already did.
    """
    from pemma.survival.chain import ChainConfig
    from pemma.survival.chain_run import survival_chain

    predictions = predictions if predictions is not None else PredictionCache(window=WindowSettings(amp=amp))
    chains = _lesion_chains(methods, segmentation_adapters)
    rows = []
    for name, seg_run in chains.items():
        path = out / name / "chain.json"
        if not path.is_file():
            print(f"prognosis ({backbone}): lesion-feature chain {name}", flush=True)
            record_machine(out / name, resolve_device("auto"))
            survival_chain(data_root, out / name, base_run, seg_run, centres=list(centres),
                           cfg=ChainConfig(seed=seed), train_ids=list(train_ids), test_ids=list(held_out_ids),
                           device=str(resolve_device("auto")), predictions=predictions)
        rows += [{k: r[k] for k in PROGNOSIS_COLUMNS}
                 for r in chain_rows(json.loads(path.read_text()), backbone, lesion_method(name))]
    return rows


def _lesion_chains(methods: Sequence[str], segmentation_adapters: Mapping[str, Path] | None) -> dict[str, Path | None]:
    """``{chain folder: segmentation run of its CT+PET stage (None: the CT run's)}``."""
    seg = {m: Path(p) for m, p in (segmentation_adapters or {}).items() if m in methods}
    return {f"lesion_{m}": p for m, p in seg.items()} or {"lesion_ct": None}


def lesion_chains_finished(out: Path, methods: Sequence[str],
                           segmentation_adapters: Mapping[str, Path] | None = None) -> bool:
    """Whether every lesion-feature chain of :func:`run_lesion_chains` (same arguments) has its ``chain.json``."""
    return all((Path(out) / name / "chain.json").is_file() for name in _lesion_chains(methods, segmentation_adapters))


def lesion_method(folder: str) -> str:
    """``lesion_lora`` (a chain's folder) -> ``lesion-cox:lora`` (its rows' method)."""
    return f"{LESION_METHOD}:{folder.removeprefix('lesion_')}"


def is_lesion(method: str) -> bool:
    """Whether a prognosis row's method is a lesion-feature chain's (:func:`lesion_method`)."""
    return method.startswith(f"{LESION_METHOD}:")


def chain_rows(result: Mapping[str, Any], backbone: str = "", method: str = LESION_METHOD) -> list[dict[str, Any]]:
    """A chain result's stages (``chain.json`` of :mod:`pemma.survival.chain_run`) as prognosis rows
    (:data:`PROGNOSIS_COLUMNS`: ``val_c_index`` = inner-CV C-index, ``trainable_params`` = fitted coefficients),
    each with its held-out ``cases`` (``[{"PatientID", "risk", "RFS", "Relapse"}]``) for the claims' bootstrap.

    Args:
        result: the chain result. backbone, method: the rows' labels.
    """
    time, event = result.get("test_time") or [], result.get("test_event") or []
    ids = result.get("test_cases") or [str(i) for i in range(len(time))]
    rows = []
    for s in result["stages"]:
        low, high = s.get("test_ci") or (None, None)
        cases = [{"PatientID": str(i), "risk": float(r), "RFS": float(t), "Relapse": int(e)}
                 for i, r, t, e in zip(ids, s.get("test_risk") or [], time, event, strict=False)]
        rows.append({"backbone": backbone, "method": method, "stage": s["stage"], "c_index": s["test_c_index"],
                     "ci_low": low, "ci_high": high, "n_cases": s["n_test"], "events": s["events_test"],
                     "val_c_index": s["cv_c_index"], "trainable_params": s["n_features"], "steps": None,
                     "note": _chain_note(s), "cases": cases})
    return rows


def _chain_note(stage: Mapping[str, Any]) -> str | None:
    """Why a chain stage's held-out C-index is missing, or its overfitting flag (None: nothing to say)."""
    if stage["test_c_index"] is None:
        return ("no relapse among the held-out cases" if not stage.get("events_test")
                else "no comparable pair among the held-out cases")
    return "overfitting: training C-index exceeds the cross-validated one" if stage["overfitting"] else None


def prognosis_markdown(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The report's prognosis table and the ordering check per method: CT < CT+PET < CT+PET+EHR."""
    def fmt(v: float | None) -> str:
        return "–" if v is None else f"{v:.3f}"

    lines = ["## Prognosis", "",
             "Recurrence-free survival: Harrell's C-index (bootstrap 95% interval) on the held-out validation + test "
             "cases of the prognosis centres. CT: a head on the frozen CT encoder; +PET: the PEMMA PET pathway and "
             "adapters (started from the segmentation adaptation of the same method when configured) and the "
             "head; +EHR: the clinical projection and head (and the adapters when configured). Trainable "
             "parameters are those each stage trains.", "",
             "| Backbone | Method | Stage | C-index | 95% CI | Cases (events) | Val. C-index | Trainable params |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        events = "–" if r["events"] is None else r["events"]
        lines.append(f"| {r['backbone']} | {r['method']} | {r['stage']} | {fmt(r['c_index'])} | "
                     f"{fmt(r['ci_low'])}–{fmt(r['ci_high'])} | {r['n_cases']} ({events}) | "
                     f"{fmt(r['val_c_index'])} | {r['trainable_params'] or 0:,} |")
    lines.append("")
    lines += [f"- {r['method']} {r['stage']}: " + (f"C-index not computed ({r['note']})" if r["c_index"] is None
                                                   else f"**{r['note']}**") for r in rows if r.get("note")]
    for backbone in dict.fromkeys(r["backbone"] for r in rows):
        ct = next((r["c_index"] for r in rows if r["backbone"] == backbone and r["stage"] == "ct"), None)
        for method in dict.fromkeys(r["method"] for r in rows if r["backbone"] == backbone and r["stage"] != "ct"):
            own = [r["c_index"] for r in rows if r["backbone"] == backbone and r["method"] == method
                   and r["stage"] == "ct"]  # a lesion chain has its own CT stage
            chain = [own[0] if own else ct] + [
                next((r["c_index"] for r in rows if r["backbone"] == backbone and r["method"] == method
                      and r["stage"] == stage), None) for stage in ("ct+pet", "ct+pet+ehr")]
            if None in chain:
                continue
            holds = chain[0] < chain[1] < chain[2]
            lines.append(f"- {backbone} {method}: CT {chain[0]:.3f} → CT+PET {chain[1]:.3f} → CT+PET+EHR "
                         f"{chain[2]:.3f}: ordering {'**holds**' if holds else '**does not hold**'}")
    return lines + [""]


def write_prognosis(rows: Sequence[dict[str, Any]], out: Path) -> Path:
    """``prognosis.json`` (list of rows) beside the results."""
    path = out / "prognosis.json"
    write_text_atomic(path, json.dumps([{k: r.get(k) for k in PROGNOSIS_COLUMNS} for r in rows], indent=2))
    return path
