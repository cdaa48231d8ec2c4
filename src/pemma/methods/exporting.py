"""``pemma export``: any run folder as a deployable model (TorchScript, ONNX, or a MONAI bundle folder).

Every export fixes one input set (``--modalities``; default: the set the run was trained on), is checked against
pemma's own logits on a seeded input of the training window before anything is written (a difference above the
tolerance is an error), and writes the preprocessing the model expects beside it (``<out stem>.preprocessing.json``;
in a bundle ``configs/preprocessing.json``).

Spatial axes are fixed at the run's ROI (``model.roi_size``), the batch axis is dynamic. UNETR needs its ROI
(its position embedding is sized by ``img_size``); MONAI's Swin UNETR chooses window and shift sizes in Python from
the feature-map size (``get_window_size``), so an export with dynamic spatial axes gives wrong logits at other sizes
(measured on a tiny model: 1.8e-2 with the TorchScript-based exporter, 2.1e-2 with the ``torch.export``-based one
and ``dynamic_shapes``). Both are exported at the ROI and run with a sliding window of that size, as
``pemma predict`` does.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pemma.adapters.merging import merge_adapters
from pemma.adapters.state import unwrap_model
from pemma.config import PreprocessConfig
from pemma.errors import PemmaError
from pemma.io_utils import atomic_path, write_text_atomic
from pemma.methods.bundle import check_bundle_preprocessing, write_bundle
from pemma.methods.loading import load_model
from pemma.models.loaded import LoadedModel, run_network
from pemma.runs import package_versions
from pemma.vocab import EXPORT_FORMATS, KIND_BACKBONE, KIND_PEMMA, KIND_PEMMA_STACKED, LABELS, input_set_name

log = logging.getLogger(__name__)

#: file suffixes that name a format (``--out m.onnx`` alone is an ONNX export); a bundle is a folder
FORMAT_SUFFIXES: dict[str, str] = {".onnx": "onnx", ".pt": "torchscript", ".ts": "torchscript", ".pth": "torchscript"}
#: the ONNX opset written (the TorchScript-based exporter; 17 has every operator UNETR / Swin UNETR use)
ONNX_OPSET = 17
#: names of the exported model's input and output
INPUT_NAME, OUTPUT_NAME = "image", "logits"


def export_format(fmt: str | None, out: str | os.PathLike) -> str:
    """The format of an export to ``out``: ``fmt``, or the one its suffix names (a folder: ``bundle``).

    Raises:
        PemmaError: an unknown format, or a suffix naming another format than ``fmt``.
    """
    suffix = Path(os.fspath(out)).suffix.lower()
    implied = FORMAT_SUFFIXES.get(suffix, "bundle" if not suffix else None)
    if fmt is None:
        if implied is None:
            raise PemmaError(f"{out}: cannot tell the export format from the suffix {suffix!r}; pass --format "
                             f"{'|'.join(EXPORT_FORMATS)}")
        return implied
    if fmt not in EXPORT_FORMATS:
        raise PemmaError(f"unknown export format {fmt!r}; choose {', '.join(EXPORT_FORMATS)}")
    if not suffix:  # a name without a suffix takes any format
        return fmt
    if implied is not None and implied != fmt:
        raise PemmaError(f"{out}: the suffix {suffix} means {implied}, but --format is {fmt}; name the output "
                         f"{Path(out).stem}{'' if fmt == 'bundle' else '.onnx' if fmt == 'onnx' else '.pt'} or "
                         f"pass --format {implied}")
    return fmt


class FixedInputs(nn.Module):
    """A run's network with its input set fixed: ``forward(image)`` with ``image`` holding ``modalities``
    ([CT, PET] order), so it traces to a single-input model. Missing channels of an early-fusion run are zeros.

    Args:
        net: the network (plain MONAI, or one called as ``net(x, modalities)``).
        trained: the modalities the network was trained on (``model.json`` ``modalities``).
        modalities: the input set of the exported model.
    """

    def __init__(self, net: nn.Module, trained: Sequence[str], modalities: Sequence[str]) -> None:
        super().__init__()
        self.net, self.trained, self.modalities = net, list(trained), tuple(modalities)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_network(self.net, self.trained, x, self.modalities)


def deployable(loaded: LoadedModel, modalities: Sequence[str]) -> nn.Module:
    """The network of ``loaded`` for ``modalities`` as a single-input module (adapters merged where they can be:
    a merged PEMMA model has no untouched CT path, so CT-only input keeps the unmerged adapters)."""
    net = loaded.net
    if merges(loaded, modalities):
        net = merge_adapters(net, modalities)
    return FixedInputs(net, loaded.meta.get("modalities", []), modalities).eval()


def merges(loaded: LoadedModel, modalities: Sequence[str]) -> bool:
    """True when the export of ``modalities`` merges adapters (an adapted run's input sets with its added modality; a
    stacked run's
    input sets served by an adapter level, i.e. all but CT alone on the exact route)."""
    if loaded.kind == KIND_PEMMA:  # every input set with the added modality (PET, MR...) runs the adapters
        return any(m != "ct" for m in modalities)
    if loaded.kind == KIND_PEMMA_STACKED:
        model = unwrap_model(loaded.net)
        return model.level_of(modalities) > 0 or any(m != "ct" for m in modalities) or model.shared_route
    return False


def preprocessing_record(loaded: LoadedModel, modalities: Sequence[str], fmt: str) -> dict[str, Any]:
    """What a deployment must do to an image before the exported model sees it, and how to read its output."""
    cfg = loaded.config
    pre = cfg.preprocess
    channels = [m.upper() for m in modalities]
    steps = [f"load {' and '.join(channels)}; resample every other image onto the {channels[0]} grid",
             "reorient to RAS", f"resample to {pre.target_spacing} mm (bilinear)"]
    if "ct" in modalities:
        steps.append(f"crop a head-and-neck box {pre.crop_mm} mm below the top of the body (CT > "
                     f"{pre.body_threshold_hu} HU)")
    registry = pre.modality_registry()
    steps += [registry[m].describe() for m in modalities]  # CT's HU window, PET's SUV range, MR's z-score...
    steps.append(f"pad to at least {cfg.model.roi_size}; stack channels {channels}")
    registration = registration_record(pre, modalities)
    if registration["step"]:  # CT+PET: right after loading; PET-only: how its output maps back
        steps.insert(1 if "ct" in modalities else len(steps), registration["step"])
    return {
        "format": fmt, "run": str(loaded.run_dir), "kind": loaded.kind, "backbone": cfg.model.backbone,
        "modalities": list(modalities), "channels": channels, "input": INPUT_NAME, "output": OUTPUT_NAME,
        "input_shape": ["batch", len(modalities), *cfg.model.roi_size],
        "output_shape": ["batch", cfg.model.out_channels, *cfg.model.roi_size],
        "spatial_axes": "fixed at roi_size (run with a sliding window of that size); the batch axis is dynamic",
        "orientation": "RAS", "target_spacing": list(pre.target_spacing), "ct_window": list(pre.ct_window),
        "pet_suv_range": list(pre.pet_suv_range), "crop_mm": list(pre.crop_mm),
        "body_threshold_hu": pre.body_threshold_hu, "intensity_range": [0.0, 1.0], "registration": registration,
        "sliding_window": {"roi_size": list(cfg.model.roi_size), "overlap": cfg.train.overlap, "mode": "constant"},
        "labels": {name: value for name, value in LABELS.items() if value < cfg.model.out_channels},
        "postprocessing": "argmax over the channel axis, then resample the label back onto the input grid",
        "steps": steps, "versions": package_versions(),
    }


def registration_record(pre: PreprocessConfig, modalities: Sequence[str]) -> dict[str, Any]:
    """The run's registration to the CT (of the PET, MR...: every input it registers) as the exported model's
    preprocessing needs it: the mode, its settings, and the step a deployment must take (None when the run reads
    its inputs on their header geometry).

    Args:
        pre: the run's preprocessing. modalities: the exported input set.
    """
    from pemma.data.registration import registrable

    out: dict[str, Any] = {"mode": pre.register, "step": None}
    moved = registrable(["ct", *[m for m in modalities if m != "ct"]], pre)  # what the run registers
    if pre.register == "none" or not moved:
        return out
    out.update(spacing_mm=pre.register_spacing, iterations=pre.register_iterations,
               max_shift_mm=pre.register_max_shift_mm, metric="Mattes mutual information",
               implementation="pemma.data.registration (SimpleITK)")
    if moved != ["pet"]:
        out["modalities"] = moved
    names = " and the ".join(m.upper() for m in moved)
    if "ct" in modalities:
        out["step"] = (f"register the {names} to the CT ({pre.register}, Mattes mutual information; "
                       "pemma.data.registration) and resample it onto the CT grid through that transform: the "
                       f"exported model does not register; give it a registered {names}")
    else:
        out["step"] = (f"the run registers {names} to CT ({pre.register}): a {names}-only prediction maps onto the "
                       "CT through that registration, not the header geometry (pemma predict does this)")
    return out


def _check(name: str, got: torch.Tensor, reference: torch.Tensor, tolerance: float, source: Path) -> float:
    diff = float((got - reference).abs().max())
    if not diff <= tolerance:
        raise PemmaError(f"{source}: {name} differs from pemma's logits by {diff:.2e} > {tolerance}; nothing written")
    return diff


def _onnx_logits(path: Path, x: torch.Tensor) -> torch.Tensor:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0])


def _write_onnx(module: nn.Module, x: torch.Tensor, path: Path) -> None:
    try:
        import onnx  # noqa: F401  (the exporter needs it)
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise PemmaError(f"ONNX export needs the packages onnx and onnxruntime ({exc}); install pemma[export]") \
            from None
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
    with warnings.catch_warnings():  # MONAI's instance norms keep no running statistics: train=True is exact
        warnings.filterwarnings("ignore", message=".*operator 'instance_norm' is set to train=True")
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the export is checked numerically instead
        torch.onnx.export(module, (x,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes=axes, opset_version=ONNX_OPSET, dynamo=False)


@torch.no_grad()
def export_model(run_dir: str | Path, out: str | Path, fmt: str | None = None,
                 modalities: Sequence[str] | None = None, base_run: str | Path | None = None,
                 tolerance: float = 1e-4) -> dict[str, Any]:
    """Export the run in ``run_dir`` for ``modalities`` as ``fmt`` to ``out`` (checked against pemma's logits).

    Args:
        run_dir: any segmentation run (CT base, adapted, baseline, updated, late fusion).
        out: the model file (``.pt`` TorchScript, ``.onnx``) or the bundle folder.
        fmt: ``torchscript``, ``onnx`` or ``bundle``. Default: from the suffix of ``out``.
        modalities: the input set, one the run accepts. Default: the set it was trained on.
        base_run: the CT base run of an adapted model, if it moved.
        tolerance: largest |exported - pemma| logit difference accepted.

    Returns:
        ``{"format", "backbone", "modalities", "max_abs_diff", "merged" (adapters merged), "bytes", "out",
        "preprocessing"}``.

    Raises:
        PemmaError: an input set the run does not accept, a format mismatch, or an export that differs.
    """
    run_dir, out = Path(run_dir), Path(out)
    fmt = export_format(fmt, out)
    loaded = load_model(run_dir, base_run=base_run)
    mods = list(modalities) if modalities else list(loaded.input_sets[0])
    loaded.check_inputs(mods, str(run_dir))
    if fmt == "bundle":
        check_bundle_preprocessing(loaded.config.preprocess, mods, out)  # before any tracing
    roi = loaded.config.model.roi_size
    x = torch.rand((1, len(mods), *roi), generator=torch.Generator().manual_seed(0))
    x2 = torch.rand((2, len(mods), *roi), generator=torch.Generator().manual_seed(1))
    reference, reference2 = loaded(x, mods), loaded(x2, mods)
    module = deployable(loaded, mods)
    diff = _check("the deployable model", module(x), reference, tolerance, run_dir)
    record = preprocessing_record(loaded, mods, fmt)
    if fmt == "onnx":
        with atomic_path(out) as tmp:
            _write_onnx(module, x, tmp)
            diff = max(diff, _check("the ONNX model (ONNX Runtime)", _onnx_logits(tmp, x), reference, tolerance,
                                    run_dir))
            diff = max(diff, _check("the ONNX model at batch 2", _onnx_logits(tmp, x2), reference2, tolerance,
                                    run_dir))
        side = out.with_suffix(".preprocessing.json")
    else:
        with warnings.catch_warnings():  # shape-dependent branches are traced at the ROI; checked numerically below
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(module, x, check_trace=False)
        diff = max(diff, _check("the TorchScript model", traced(x), reference, tolerance, run_dir))
        diff = max(diff, _check("the TorchScript model at batch 2", traced(x2), reference2, tolerance, run_dir))
        if fmt == "torchscript":
            with atomic_path(out) as tmp:
                torch.jit.save(traced, str(tmp))
            side = out.with_suffix(".preprocessing.json")
        else:
            plain = loaded.net if loaded.kind == KIND_BACKBONE and mods == loaded.meta.get("modalities") else None
            _bundle(out, loaded, traced, plain, record)
            side = out / "configs" / "preprocessing.json"
    record["max_abs_diff"] = diff
    write_text_atomic(side, json.dumps(record, indent=2) + "\n")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) if out.is_dir() else out.stat().st_size
    log.info("exported %s (%s, inputs %s) to %s, max |exported - pemma| = %.2e", run_dir, fmt,
             input_set_name(mods), out, diff)
    return {"format": fmt, "backbone": loaded.config.model.backbone, "modalities": mods, "max_abs_diff": diff,
            "merged": merges(loaded, mods), "bytes": size, "out": str(out),
            "preprocessing": str(side)}


def _bundle(out: Path, loaded: LoadedModel, traced: torch.jit.ScriptModule, plain: nn.Module | None,
            record: dict[str, Any]) -> None:
    """Write the bundle into a hidden sibling, then move it onto ``out`` (an existing bundle is replaced whole)."""
    if out.exists() and not (out / "configs" / "metadata.json").is_file() and any(out.iterdir()):
        raise PemmaError(f"{out}: exists and is not a pemma bundle; choose another --out")
    fresh = out.parent / f".{out.name}.pemma-new"
    shutil.rmtree(fresh, ignore_errors=True)
    try:
        write_bundle(fresh, loaded, traced, plain, record)
        if out.exists():
            shutil.rmtree(out)
        os.replace(fresh, out)
    finally:
        shutil.rmtree(fresh, ignore_errors=True)
