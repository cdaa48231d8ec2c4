"""A MONAI bundle folder for an exported run (``pemma export --format bundle``).

Layout (MONAI's bundle specification)::

    configs/inference.json      network, preprocessing, sliding-window inferer, postprocessing (ConfigParser)
    configs/metadata.json       versions, task, network_data_format (inputs / outputs, channels, labels)
    configs/preprocessing.json  pemma's record of the preprocessing (also beside the other export formats)
    models/model.ts             the traced model (one input: the image with the exported input set)
    models/model.pt             a plain backbone run only: the MONAI network's state dict (``network_def`` builds
                                the MONAI class, so MONAI's bundle tools load it as any MONAI model)

The bundle's transforms are MONAI's own; pemma's head-and-neck crop (a pemma transform) is not among them, so the
bundle runs on the whole resampled volume (metadata says so).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pemma.config import PreprocessConfig
from pemma.errors import PemmaError
from pemma.models.loaded import LoadedModel
from pemma.models.registry import backbone_nets, constructor_kwargs

#: the bundle's files (relative paths)
INFERENCE_CONFIG, METADATA, TORCHSCRIPT, STATE_DICT = ("configs/inference.json", "configs/metadata.json",
                                                       "models/model.ts", "models/model.pt")


def check_bundle_preprocessing(pre: PreprocessConfig, modalities: list[str], out: Path) -> None:
    """A bundle's preprocessing is MONAI's ``ScaleIntensityRanged`` per input: every input must have a ``range``
    normalisation (CT's HU window, PET's SUV range, a dose range).

    Raises:
        PemmaError: an input normalised otherwise (MR's z-score or min-max inside the body, which MONAI's
            transforms do not express), naming the export formats that carry it in their preprocessing record.
    """
    registry = pre.modality_registry()
    for modality in modalities:
        spec = registry[modality]
        if spec.normalisation != "range":
            raise PemmaError(f"{out}: a MONAI bundle cannot express {spec.describe()} (its transforms clip to a "
                             f"fixed range); export {'+'.join(m.upper() for m in modalities)} as --format torchscript "
                             f"or onnx, whose preprocessing.json describes it")


def inference_config(loaded: LoadedModel, modalities: list[str], plain: bool) -> dict[str, Any]:
    """The ``configs/inference.json`` content (MONAI ConfigParser syntax)."""
    cfg = loaded.config
    pre = cfg.preprocess
    ref, others = modalities[0], modalities[1:]
    if plain:
        net_class = backbone_nets()[cfg.model.backbone]
        network_def: Any = {"_target_": f"{net_class.__module__}.{net_class.__name__}",
                            **constructor_kwargs(cfg.model, len(modalities))}
        network = "$@network_def.to(@device)"
        weights: Any = f"$@bundle_root + '/{STATE_DICT}'"
    else:
        network_def = f"$torch.jit.load(@bundle_root + '/{TORCHSCRIPT}', map_location=@device)"
        network = "$@network_def.eval()"
        weights = None
    transforms: list[dict[str, Any]] = [
        {"_target_": "LoadImaged", "keys": modalities, "image_only": True},
        {"_target_": "EnsureChannelFirstd", "keys": modalities}]
    transforms += [{"_target_": "Orientationd", "keys": ref, "axcodes": "RAS", "labels": None},
                   {"_target_": "Spacingd", "keys": ref, "pixdim": list(pre.target_spacing), "mode": "bilinear",
                    "padding_mode": "border"}]
    if others:  # once, straight onto the reference's target grid, as pemma's preprocessing does
        transforms.append({"_target_": "ResampleToMatchd", "keys": others, "key_dst": ref, "mode": "bilinear",
                           "padding_mode": "zeros"})
    registry = pre.modality_registry()
    for modality in modalities:  # every input's spec is a range (check_bundle_preprocessing)
        low, high = registry[modality].range
        transforms.append({"_target_": "ScaleIntensityRanged", "keys": modality, "a_min": low, "a_max": high,
                           "b_min": 0.0, "b_max": 1.0, "clip": True})
    transforms += [{"_target_": "SpatialPadd", "keys": modalities, "spatial_size": list(cfg.model.roi_size)},
                   {"_target_": "ConcatItemsd", "keys": modalities, "name": "image", "dim": 0},
                   {"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"}]
    return {
        "imports": ["$import torch"],
        "bundle_root": ".",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "modalities": modalities,
        "network_def": network_def,
        "network": network,
        "weights": weights,
        "preprocessing": {"_target_": "Compose", "transforms": transforms},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": list(cfg.model.roi_size),
                    "sw_batch_size": cfg.train.sw_batch_size, "overlap": cfg.train.overlap, "mode": "constant"},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True}]},
    }


def metadata(loaded: LoadedModel, record: dict[str, Any]) -> dict[str, Any]:
    """The ``configs/metadata.json`` content (MONAI's metadata fields)."""
    cfg = loaded.config
    versions = record["versions"]
    channels = {str(i): name for i, name in enumerate(record["channels"])}
    labels = {str(value): name for name, value in record["labels"].items()}
    return {
        "version": "0.1.0",
        "changelog": {"0.1.0": f"exported by pemma from {record['run']}"},
        "monai_version": versions.get("monai", "unknown"),
        "pytorch_version": versions.get("torch", "unknown"),
        "required_packages_version": {"pemma": versions.get("pemma", "unknown")},
        "task": "head-and-neck tumour segmentation (GTVp, GTVn)",
        "name": f"pemma {record['kind']} {cfg.model.backbone} ({'+'.join(record['modalities'])})",
        "description": ("Exported pemma run. Inputs are resampled to RAS at the target spacing and intensity-windowed "
                        "to [0, 1]; pemma's head-and-neck crop is not a MONAI transform and is not applied here, so "
                        "the bundle runs on the whole resampled volume. See configs/preprocessing.json."
                        + (f" {_registered(record)} registration: {record['registration']['step']}."
                           if (record.get("registration") or {}).get("step") else "")),
        "authors": "pemma", "copyright": "see the run's data and model licences",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "magnitude", "modality": "+".join(record["channels"]),
                                 "num_channels": len(channels), "spatial_shape": list(cfg.model.roi_size),
                                 "dtype": "float32", "value_range": [0, 1], "is_patch_data": True,
                                 "channel_def": channels}},
            "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": cfg.model.out_channels,
                                 "spatial_shape": list(cfg.model.roi_size), "dtype": "float32", "value_range": [],
                                 "is_patch_data": True, "channel_def": labels}},
        },
    }


def write_bundle(folder: Path, loaded: LoadedModel, traced: torch.jit.ScriptModule, plain: nn.Module | None,
                 record: dict[str, Any]) -> None:
    """Write the bundle of ``loaded`` into ``folder``: plain writes, for a folder that is not yet in place
    (``pemma export`` writes a hidden sibling and moves it onto the bundle path whole: that move is the atomic step).

    Args:
        folder: the bundle folder (created).
        loaded: the exported run.
        traced: its traced single-input model (``models/model.ts``).
        plain: the MONAI network of a plain backbone run exported for the input set it was trained on (its state
            dict goes to ``models/model.pt`` and ``network_def`` builds the MONAI class), else None.
        record: the preprocessing record (:func:`pemma.methods.exporting.preprocessing_record`).
    """
    for sub in (TORCHSCRIPT, INFERENCE_CONFIG):
        (folder / sub).parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(traced, str(folder / TORCHSCRIPT))
    if plain is not None:
        torch.save({k: v.detach().cpu() for k, v in plain.state_dict().items()}, folder / STATE_DICT)
    config = inference_config(loaded, list(record["modalities"]), plain is not None)
    (folder / INFERENCE_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    (folder / METADATA).write_text(json.dumps(metadata(loaded, record), indent=2) + "\n")


def _registered(record: dict[str, Any]) -> str:
    """The modalities an exported run registers to the CT, as the description names them (``PET``, ``PET/MR``)."""
    return "/".join(m.upper() for m in record["registration"].get("modalities", ["pet"]))
