"""``pemma import-model``: a CT base run folder from plain MONAI UNETR / Swin UNETR weights.

Accepted sources: a state dict (``.pt``, ``.pth``, ``.ckpt``, ``.bin``) or ``.safetensors`` file, a full checkpoint
dict holding the state dict under ``state_dict``, ``model``, ``net``, ``network`` or ``model_state_dict`` (a DDP
``module.`` or ``torch.compile`` ``_orig_mod.`` prefix is removed), or a MONAI bundle folder
(``configs/inference.json|yaml`` with its ``network_def``, and ``models/model.pt`` or ``models/model.safetensors``).
Files are read with ``torch.load(weights_only=True)``: pemma never unpickles Python objects.

The network is sized by the config (preset + ``--config`` YAML); a bundle's ``network_def`` fills the network
sizes and ROI (the weights need them). The preprocessing the model was trained with (spacing, CT window, crop) is
declared in the same config and stored in the run, so ``pemma adapt`` / ``predict`` use it.

**Output classes (the design).** pemma runs segment background, GTVp and GTVn (``model.out_channels`` 3). A base
whose head has another number of classes is imported in one of two ways:

* ``label_map={"GTVp": 3, "GTVn": 5}`` (``--label-map GTVp=3,GTVn=5``; ``background`` defaults to 0): the head's
  rows of those classes become the 3-class head, so the CT model keeps predicting what it learnt;
* no label map: a **new head** ``out`` (seeded initialisation) replaces the base's; it trains during adaptation
  (UNETR's default ``train_parts`` include ``out``; for Swin UNETR add ``out`` to ``--train-parts``). A CT-only
  prediction of the imported run (and of the exact CT route of an adapted run) uses the untrained head until then.

The key matching is MONAI's :func:`~monai.networks.utils.copy_model_state`; the report (matched, missing,
unexpected, shape mismatches) is logged and stored in ``model.json`` (``import``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pemma.config import RunConfig
from pemma.errors import PemmaError
from pemma.io_utils import sha256_file
from pemma.models.registry import backbone_nets, build_backbone, get_backbone
from pemma.runs import CONFIG_FILE, _load_failure, save_weights
from pemma.vocab import KIND_BACKBONE, LABELS

log = logging.getLogger(__name__)

#: keys under which checkpoints hold their state dict (tried in this order)
CHECKPOINT_KEYS: tuple[str, ...] = ("state_dict", "model", "net", "network", "model_state_dict")
#: prefixes wrappers add to every key (DistributedDataParallel, torch.compile), removed on import
WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.")
#: bundle files looked for, in order
BUNDLE_CONFIGS: tuple[str, ...] = ("configs/inference.json", "configs/inference.yaml", "configs/inference.yml")
BUNDLE_WEIGHTS: tuple[str, ...] = ("models/model.pt", "models/model.safetensors")
#: ``network_def`` keys pemma sets itself (channels from the run; ``img_size``: older MONAI Swin UNETR took it, as the
#: model zoo's ``swin_unetr_btcv_segmentation`` bundle still writes, and MONAI 1.5+ refuses it)
NETWORK_KEYS_SET_BY_PEMMA: tuple[str, ...] = ("_target_", "in_channels", "out_channels", "img_size")
#: prefix of the segmentation head's tensors in both MONAI networks (``UnetOutBlock`` ``out``)
HEAD_PREFIX = "out."


def parse_label_map(text: str | Mapping[str, int] | None) -> dict[str, int] | None:
    """``"GTVp=3,GTVn=5"`` (or a mapping) as ``{"background": 0, "GTVp": 3, "GTVn": 5}``.

    Raises:
        PemmaError: a name other than background / GTVp / GTVn, a missing tumour class, a bad or repeated index.
    """
    if text is None or text == "":
        return None
    pairs = dict(text) if isinstance(text, Mapping) else {}
    if not isinstance(text, Mapping):
        for item in str(text).split(","):
            name, sep, value = item.partition("=")
            if not sep:
                raise PemmaError(f"--label-map: {item.strip()!r} is not NAME=INDEX; write e.g. GTVp=3,GTVn=5")
            pairs[name.strip()] = value.strip()
    out: dict[str, int] = {"background": 0}
    for name, value in pairs.items():
        canonical = next((k for k in LABELS if k.lower() == str(name).lower()), None)
        if canonical is None:
            raise PemmaError(f"--label-map: unknown class {name!r}; name {', '.join(LABELS)}")
        try:
            out[canonical] = int(value)
        except (TypeError, ValueError):
            raise PemmaError(f"--label-map: {name}={value!r} is not a class index") from None
        if out[canonical] < 0:
            raise PemmaError(f"--label-map: {name}={value} is negative")
    missing = [k for k in LABELS if k not in out]
    if missing:
        raise PemmaError(f"--label-map: gives no index for {', '.join(missing)}; write e.g. GTVp=3,GTVn=5")
    if len(set(out.values())) != len(out):
        raise PemmaError(f"--label-map: two classes share an index ({out})")
    return {name: out[name] for name in LABELS}


def _unwrap(obj: Any, source: Path) -> dict[str, torch.Tensor]:
    """The state dict inside a loaded object (a state dict, or a checkpoint dict holding one)."""
    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state = {str(k): v for k, v in obj.items()}
    else:
        inner = next((obj[k] for k in CHECKPOINT_KEYS if isinstance(obj, Mapping) and isinstance(obj.get(k), Mapping)),
                     None)
        if inner is None:
            keys = ", ".join(map(str, list(obj)[:6])) if isinstance(obj, Mapping) else type(obj).__name__
            raise PemmaError(f"{source}: holds no state dict (a mapping of tensors, or one under "
                             f"{'/'.join(CHECKPOINT_KEYS)}); found {keys}")
        state = {str(k): v for k, v in inner.items() if isinstance(v, torch.Tensor)}
        if not state:
            raise PemmaError(f"{source}: its state dict holds no tensors")
    for prefix in WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in a weights file (``.safetensors``, or a ``torch.save`` file read with weights_only)."""
    path = Path(path)
    if not path.is_file():
        raise PemmaError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return _unwrap(load_file(str(path)), path)
        except (SafetensorError, OSError, ValueError) as exc:
            raise PemmaError(f"{path}: not a readable safetensors file ({str(exc).splitlines()[0]})") from None
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if not (magic.startswith(b"PK") or magic[:1] == b"\x80"):  # torch.save's zip archive, or a legacy pickle
        raise PemmaError(f"{path}: not a PyTorch weights file (neither torch.save's archive nor a pickle); give a "
                         f".pt / .pth written by torch.save, a .safetensors file or a MONAI bundle folder")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for foreign or truncated files
        raise PemmaError(f"{path}: cannot read the weights ({_load_failure(exc)})") from None
    return _unwrap(obj, path)


def read_bundle(folder: Path) -> tuple[Path, dict[str, Any]]:
    """The weights file of a MONAI bundle and its ``network_def`` (``_target_`` and resolved arguments)."""
    from monai.bundle import ConfigParser

    config = next((folder / c for c in BUNDLE_CONFIGS if (folder / c).is_file()), None)
    if config is None:
        raise PemmaError(f"{folder}: not a MONAI bundle (no {' or '.join(BUNDLE_CONFIGS)})")
    weights = next((folder / w for w in BUNDLE_WEIGHTS if (folder / w).is_file()), None)
    if weights is None:
        raise PemmaError(f"{folder}: bundle has no {' or '.join(BUNDLE_WEIGHTS)} (pemma imports state dicts, not "
                         "TorchScript)")
    parser = ConfigParser()
    try:
        parser.read_config(str(config))
        raw = parser.get("network_def")
    except Exception as exc:  # a bundle config is user input: any parse failure is one line
        raise PemmaError(f"{config}: cannot be parsed ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, Mapping) or "_target_" not in raw:
        raise PemmaError(f"{config}: has no network_def with a _target_")
    network = {"_target_": str(raw["_target_"])}
    for key in raw:
        if key != "_target_" and not str(key).startswith("_"):
            value = parser.get_parsed_content(f"network_def#{key}")
            network[key] = list(value) if isinstance(value, tuple) else value
    return weights, network


#: ``preprocess`` fields a bundle states: pemma's own export (``configs/preprocessing.json``) all of them; another
#: bundle its ``Spacingd`` ``pixdim`` (target_spacing) and ``ScaleIntensityRanged`` ``a_min`` / ``a_max`` (ct_window)
BUNDLE_PREPROCESS_FIELDS: tuple[str, ...] = ("target_spacing", "ct_window", "pet_suv_range", "crop_mm",
                                             "body_threshold_hu")


def bundle_preprocessing(folder: Path) -> dict[str, Any]:
    """The preprocessing a MONAI bundle says its model was trained with, as ``preprocess`` config fields.

    Read from pemma's ``configs/preprocessing.json`` (a bundle ``pemma export`` wrote), else from the inference
    config's ``preprocessing`` transforms: one ``Spacingd`` (``pixdim`` -> ``target_spacing``) and one
    ``ScaleIntensityRanged`` (``a_min``, ``a_max`` -> ``ct_window``). What cannot be read is left out (empty dict:
    nothing stated)."""
    record = folder / "configs" / "preprocessing.json"
    if record.is_file():
        try:
            data = json.loads(record.read_text())
        except (OSError, ValueError) as exc:
            raise PemmaError(f"{record}: cannot be read ({exc})") from None
        return {k: data[k] for k in BUNDLE_PREPROCESS_FIELDS if isinstance(data, dict) and data.get(k) is not None}
    from monai.bundle import ConfigParser

    config = next((folder / c for c in BUNDLE_CONFIGS if (folder / c).is_file()), None)
    if config is None:
        return {}
    parser = ConfigParser()
    found: dict[str, list[Any]] = {"Spacingd": [], "ScaleIntensityRanged": []}
    try:
        parser.read_config(str(config))
        transforms = parser.get("preprocessing#transforms")
        for i, item in enumerate(transforms if isinstance(transforms, list) else []):
            target = str(item.get("_target_", "")).rsplit(".", 1)[-1] if isinstance(item, Mapping) else ""
            at = f"preprocessing#transforms#{i}#"
            if target == "Spacingd":
                found[target].append([float(v) for v in parser.get_parsed_content(at + "pixdim")])
            elif target == "ScaleIntensityRanged":
                found[target].append([float(parser.get_parsed_content(at + k)) for k in ("a_min", "a_max")])
    except Exception as exc:  # a bundle config is user input; unreadable preprocessing states nothing
        log.info("import: %s: its preprocessing could not be read (%s)", config, str(exc).splitlines()[0])
        return {}
    out: dict[str, Any] = {}
    if len(found["Spacingd"]) == 1 and len(found["Spacingd"][0]) == 3:
        out["target_spacing"] = found["Spacingd"][0]
    if len(found["ScaleIntensityRanged"]) == 1:
        out["ct_window"] = found["ScaleIntensityRanged"][0]
    return out


def bundle_model_settings(network: dict[str, Any], backbone: str | None, source: Path) -> dict[str, Any]:
    """``model`` config settings from a bundle's ``network_def`` (backbone, ROI, sizes, source classes)."""
    target = network["_target_"].rsplit(".", 1)[-1]
    classes = {net.__name__: name for name, net in backbone_nets().items()}  # "UNETR" -> unetr (the registry's)
    found = classes.get(target)
    if found is None:
        raise PemmaError(f"{source}: network_def is {target}; pemma imports {' or '.join(classes)}")
    if backbone is not None and backbone != found:
        raise PemmaError(f"{source}: network_def is {target} ({found}), not --backbone {backbone}")
    roi_kwarg = get_backbone(found).roi_kwarg  # UNETR's img_size: the ROI is part of the network
    kwargs = {k: v for k, v in network.items() if k not in (*NETWORK_KEYS_SET_BY_PEMMA, roi_kwarg)}
    settings: dict[str, Any] = {"backbone": found, found: kwargs}
    img_size = network.get(roi_kwarg) if roi_kwarg else None
    if img_size is not None:
        settings["roi_size"] = [int(img_size)] * 3 if isinstance(img_size, int) else [int(v) for v in img_size]
    if int(network.get("in_channels", 1)) != 1:
        raise PemmaError(f"{source}: network_def has in_channels {network['in_channels']}; a pemma base is CT-only "
                         "(1 input channel)")
    return settings


def key_report(net: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, list[str]]:
    """Load ``state`` into ``net`` with MONAI's ``copy_model_state``; the matched, missing, unexpected and
    shape-mismatched keys."""
    from monai.networks.utils import copy_model_state

    own = net.state_dict()
    _, matched, _ = copy_model_state(net, state, inplace=True)
    mismatched = sorted(k for k in state if k in own and own[k].shape != state[k].shape)
    return {"matched": sorted(matched), "missing": sorted(k for k in own if k not in state),
            "unexpected": sorted(k for k in state if k not in own), "shape_mismatch": mismatched}


def _unloaded_reasons(report: dict[str, list[str]], body: list[str]) -> str:
    """Why the network's tensors besides the head did not load: its shape-mismatched and missing ones (those of
    ``body`` only, so they add up to the count not loaded), then the source's tensors it has no place for."""
    wanted = set(body)
    parts = []
    for kind in ("shape_mismatch", "missing"):
        keys = [k for k in report[kind] if k in wanted]
        if keys:
            parts.append(f"{len(keys)} {kind.replace('_', ' ')} (e.g. {keys[0]})")
    text = "; ".join(parts)
    if report["unexpected"]:
        text += (f"; the source also holds {len(report['unexpected'])} tensors this network has no place for "
                 f"(e.g. {report['unexpected'][0]})")
    return text


def _select_head(state: dict[str, torch.Tensor], label_map: dict[str, int], source: Path) -> dict[str, torch.Tensor]:
    heads = {k: v for k, v in state.items() if k.startswith(HEAD_PREFIX)}
    if not heads:
        raise PemmaError(f"{source}: no head tensors ({HEAD_PREFIX}*) for --label-map to select from")
    classes = next(iter(heads.values())).shape[0]
    rows = list(label_map.values())
    if max(rows) >= classes:
        raise PemmaError(f"{source}: --label-map index {max(rows)} is outside the head's {classes} classes")
    return {**state, **{k: v[rows].clone() for k, v in heads.items()}}


def import_weights(source: str | Path, cfg: RunConfig, out_dir: Path, label_map: dict[str, int] | None = None,
                   min_matched: float = 1.0) -> dict[str, Any]:
    """Write the CT base run ``out_dir`` (config, weights, ``model.json``) from the weights in ``source``.

    Args:
        source: weights file or MONAI bundle folder (its settings already merged into ``cfg``).
        cfg: the run configuration (network sizes, ROI, preprocessing the model was trained with).
        out_dir: the (opened) run folder.
        label_map: head rows to keep as background / GTVp / GTVn; None keeps a head of ``cfg.model.out_channels``
            classes or puts a new head in place of another.
        min_matched: share of the network's tensors besides the head that must load (default all); fewer is an
            error.

    Returns:
        ``{"matched", "missing", "unexpected", "shape_mismatch" (counts), "head" ("loaded", "selected", "new"),
        "source_classes", "out"}``.
    """
    source = Path(source)
    weights = read_bundle(source)[0] if source.is_dir() else source
    state = read_weights(weights)
    heads = [v for k, v in state.items() if k.startswith(HEAD_PREFIX)]
    source_classes = int(heads[0].shape[0]) if heads else None
    if label_map is not None:
        state = _select_head(state, label_map, weights)
    torch.manual_seed(cfg.train.seed)  # a new head is initialised reproducibly
    net = build_backbone(cfg.model, in_channels=1)
    report = key_report(net, state)
    body = [k for k in net.state_dict() if not k.startswith(HEAD_PREFIX)]
    loaded_body = [k for k in report["matched"] if not k.startswith(HEAD_PREFIX)]
    summary = {k: len(v) for k, v in report.items()}
    counts = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in summary.items())
    log.info("import %s: %s (of %d network tensors)", weights, counts, len(net.state_dict()))
    for kind in ("missing", "unexpected", "shape_mismatch"):
        if report[kind]:
            log.info("  %s: %s%s", kind, ", ".join(report[kind][:8]), " ..." if len(report[kind]) > 8 else "")
    if not body or len(loaded_body) < min_matched * len(body):
        raise PemmaError(f"{weights}: {len(body) - len(loaded_body)} of the {len(body)} {cfg.model.backbone} tensors "
                         f"besides the head do not load: {_unloaded_reasons(report, body)}; check --backbone and the "
                         f"network sizes in --config (model.{cfg.model.backbone}, model.roi_size)")
    if report["unexpected"] and min_matched >= 1.0:  # dropping trained tensors changes the model's function
        unexpected = report["unexpected"]
        hint = ("a Swin UNETR v2? set model.swin_unetr.use_v2: true in --config" if any(
            k.startswith("swinViT.layers") and k.split(".")[1].endswith("c") for k in unexpected)
            else f"check --backbone and the network sizes in --config (model.{cfg.model.backbone})")
        raise PemmaError(f"{weights}: {len(unexpected)} of its tensors have no place in this {cfg.model.backbone} "
                         f"(e.g. {unexpected[0]}), so the imported model would compute something else; {hint} "
                         f"(--min-matched below 1 accepts an inexact import)")
    head_keys = [k for k in net.state_dict() if k.startswith(HEAD_PREFIX)]
    head_loaded = all(k in report["matched"] for k in head_keys)
    head = "selected" if label_map is not None else "loaded" if head_loaded else "new"
    if head == "new":
        log.info("import: the head (%s classes) does not fit %d classes; a new head 'out' is in place and trains "
                 "during adaptation (or pass --label-map)", source_classes, cfg.model.out_channels)
    cfg.save(out_dir / CONFIG_FILE)
    record = {"source": str(source), "weights": str(weights), "source_sha256": sha256_file(weights),
              "source_classes": source_classes, "head": head, "label_map": label_map,
              "counts": summary, **{k: v for k, v in report.items() if k != "matched"}}
    save_weights(net, out_dir, {"kind": KIND_BACKBONE, "backbone": cfg.model.backbone, "modalities": ["ct"],
                                "method": "import", "import": record, "train_cases": [], "val_cases": []})
    return {**summary, "head": head, "source_classes": source_classes, "out": str(out_dir)}


def untrained_head(meta: Mapping[str, Any], run_dir: Path, modalities: list[str]) -> str | None:
    """Why predictions of ``run_dir`` with ``modalities`` come from an untrained head, or None: an imported run
    whose head was replaced (``head: new``), or CT alone through an adapted run's exact route (the untouched base,
    so its head) on such a base."""
    base: Mapping[str, Any] | None = meta
    where, advice = f"{run_dir}: its", "adapt it (the head trains) or re-import with --label-map"
    if meta.get("method") != "import":
        route = meta.get("adapters", {}).get("ct", "") if isinstance(meta.get("adapters"), Mapping) else ""
        if modalities != ["ct"] or "exact" not in str(route) or not meta.get("base_run"):
            return None
        where = f"{run_dir}: CT alone runs its untouched base {meta['base_run']} (exact CT route), whose"
        advice = "re-import the base with --label-map, or adapt with --ct-route shared"
        from pemma.runs import read_meta

        try:
            base = read_meta(meta["base_run"])
        except Exception:  # a moved base is reported by loading, not here
            return None
    record = base.get("import") if base and base.get("method") == "import" else None
    if not isinstance(record, Mapping) or record.get("head") != "new":
        return None
    return (f"{where} head is new and untrained (imported from a {record.get('source_classes')}-class head without "
            f"--label-map): these predictions are not the source model's; {advice}")
