"""Rebuild a trained model from its run folder (plain backbone runs and PEMMA-adapted runs)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pemma.config import RunConfig
from pemma.errors import PemmaError
from pemma.io_utils import sha256_file
from pemma.models.registry import build_backbone
from pemma.training.checkpoint import CONFIG_FILE, load_weights, read_meta


@dataclass
class LoadedModel:
    """A trained network, the configuration it was trained with, and the input sets it accepts.

    ``net`` is a plain MONAI network (``kind == "backbone"``, called as ``net(x)``) or a PEMMA model
    (``kind == "pemma"``, called as ``net(x, modalities)``).
    """

    net: nn.Module
    config: RunConfig
    meta: dict[str, Any]
    input_sets: list[list[str]]
    run_dir: Path | None = field(default=None)

    @property
    def kind(self) -> str:
        return str(self.meta.get("kind", "backbone"))

    def check_inputs(self, modalities: Sequence[str], source: str) -> None:
        if list(modalities) not in self.input_sets:
            accepted = " or ".join(",".join(s) for s in self.input_sets)
            channels = f" ({len(self.input_sets[0])} channel(s) expected)" if len(self.input_sets) == 1 else ""
            raise PemmaError(f"{source}: model expects input {accepted}, got {','.join(modalities)}{channels}")

    def __call__(self, x: torch.Tensor, modalities: Sequence[str]) -> torch.Tensor:
        return run_network(self.net, self.kind, self.meta.get("modalities", []), x, modalities)

    def predictor(self, modalities: Sequence[str]) -> Callable[[torch.Tensor], torch.Tensor]:
        """A window -> logits function for sliding-window inference with the given inputs."""
        return lambda x: self(x, modalities)


def run_network(net: nn.Module, kind: str, trained: Sequence[str], x: torch.Tensor,
                modalities: Sequence[str]) -> torch.Tensor:
    """Logits of ``net`` for ``x`` holding ``modalities`` ([CT, PET] order).

    A plain backbone trained on more channels than given (early fusion with one modality) gets the
    missing channels as zeros, as the PEMMA paper evaluates early fusion with a single modality.
    """
    if kind != "backbone":
        return net(x, tuple(modalities))
    if not trained or list(modalities) == list(trained):
        return net(x)
    full = x.new_zeros((x.shape[0], len(trained), *x.shape[2:]))
    for i, modality in enumerate(modalities):
        full[:, list(trained).index(modality)] = x[:, i]
    return net(full)


def base_constructor_kwargs(cfg: RunConfig, in_channels: int = 1) -> dict[str, Any]:
    """The MONAI constructor arguments of the network of ``cfg`` (for parameter accounting)."""
    kwargs = {**cfg.model.backbone_kwargs, "in_channels": in_channels, "out_channels": cfg.model.out_channels}
    if cfg.model.backbone == "unetr":
        kwargs["img_size"] = list(cfg.model.roi_size)
    return kwargs


def build_pemma(base: LoadedModel, adapter_cfg: Any) -> nn.Module:
    """A PEMMA model around the CT network of ``base`` (``base.net`` itself is left as it is).

    The base weights go into a fresh network through :func:`~pemma.adapters.artifacts.load_base_state`;
    ``model.load_report`` lists the loaded and skipped base tensors and the new ones (adapters, PET pathway,
    trainable copies of base modules).
    """
    from pemma.adapters.artifacts import load_base_state
    from pemma.models.pemma_swin import PemmaSwinUNETR
    from pemma.models.pemma_unetr import PemmaUNETR

    classes = {"unetr": PemmaUNETR, "swin_unetr": PemmaSwinUNETR}
    net = build_backbone(base.config.model, in_channels=1)
    report = load_base_state(net, base.net.state_dict())
    if report["new"] or report["skipped"]:
        raise PemmaError(f"{base.run_dir}: base weights do not fit its own configuration "
                         f"({len(report['new'])} missing, {len(report['skipped'])} skipped)")
    extra = {"gradient_checkpointing": True} if base.config.model.gradient_checkpointing and \
        base.config.model.backbone == "unetr" else {}
    model = classes[base.config.model.backbone](net, adapter_cfg, **extra)
    report["new"] = sorted(model.adapter_state_dict())
    model.load_report = report
    return model


def _load_backbone(run_dir: Path, meta: dict[str, Any], config: RunConfig) -> nn.Module:
    net = build_backbone(config.model, in_channels=len(meta["modalities"]))
    state = load_weights(run_dir)
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise PemmaError(f"{run_dir}: weights do not fit the configured network "
                         f"({str(exc).splitlines()[0]})") from None
    return net


def _load_pemma(run_dir: Path, meta: dict[str, Any], base_run: str | Path | None) -> nn.Module:
    from pemma.adapters.artifacts import load_adapter, read_adapter_config
    from pemma.adapters.config import AdapterConfig

    base_dir = Path(base_run or meta["base_run"])
    base = load_model(base_dir)
    if base.kind != "backbone":
        raise PemmaError(f"{base_dir}: the base of {run_dir} must be a plain CT run")
    stored = read_adapter_config(run_dir)
    model = build_pemma(base, AdapterConfig.from_dict(stored["adapter_config"]))
    if stored.get("ct_adapter"):
        model.add_ct_adapter(stored["ct_adapter"])
    load_adapter(model, run_dir, sha256_file(Path(base_dir) / "model.safetensors"))
    return model


def _base_of(run_dir: Path, meta: dict[str, Any], base_run: str | Path | None) -> tuple[LoadedModel, Path]:
    base_dir = Path(base_run or meta["base_run"])
    base = load_model(base_dir)
    if base.kind != "backbone":
        raise PemmaError(f"{base_dir}: the base of {run_dir} must be a plain CT run")
    if sha256_file(base_dir / "model.safetensors") != meta["base_sha256"]:
        raise PemmaError(f"{run_dir}: was trained on base {meta['base_sha256'][:12]} but {base_dir} holds "
                         f"{base.meta['sha256'][:12]}")
    return base, base_dir


def _load_full(run_dir: Path, meta: dict[str, Any], config: RunConfig) -> nn.Module:
    from pemma.adapters.config import AdapterConfig

    shell = LoadedModel(net=build_backbone(config.model, in_channels=1), config=config, meta={},
                        input_sets=[["ct"]], run_dir=run_dir)
    model = build_pemma(shell, AdapterConfig.from_dict(meta["adapter_config"]))
    model.requires_grad_(True)  # full fine-tuning trained everything
    try:
        model.load_state_dict(load_weights(run_dir))
    except RuntimeError as exc:
        raise PemmaError(f"{run_dir}: weights do not fit the configured model ({str(exc).splitlines()[0]})") from None
    return model


def _load_late_fusion(run_dir: Path, meta: dict[str, Any], config: RunConfig,
                      base_run: str | Path | None) -> nn.Module:
    from pemma.models.late_fusion import LateFusion

    base, _ = _base_of(run_dir, meta, base_run)
    pet_net = _load_backbone(run_dir, {"modalities": ["pet"]}, config)
    if meta.get("ct_member_sha256"):  # an update trained the CT member: its weights live in this run
        from pemma.io_utils import load_tensors

        ct_member = run_dir / "ct_member.safetensors"
        state = load_tensors(ct_member, sha256=meta["ct_member_sha256"], what="CT member weights",
                             manifest="model.json")
        try:
            base.net.load_state_dict(state)
        except RuntimeError as exc:
            raise PemmaError(f"{ct_member}: does not fit the CT network ({str(exc).splitlines()[0]})") from None
    return LateFusion(base.net, pet_net, float(meta["weight"]))


def load_model(run_dir: str | Path, device: torch.device | str = "cpu",
               base_run: str | Path | None = None) -> LoadedModel:
    """Load a run folder written by ``pemma train`` or ``pemma adapt`` (config, metadata, checked weights).

    Args:
        run_dir: the run folder.
        device: where the network goes. Default CPU.
        base_run: for an adapted run, the CT base run if it has moved since adaptation (its SHA-256 must
            still match). Default: the path recorded in the run.
    """
    run_dir = Path(run_dir)
    meta = read_meta(run_dir)
    config = RunConfig.load(run_dir / CONFIG_FILE)
    kind = meta.get("kind", "backbone")
    if kind == "backbone":
        net = _load_backbone(run_dir, meta, config)
        trained = list(meta["modalities"])
        input_sets = [trained] + ([[m] for m in trained] if len(trained) > 1 else [])
    elif kind in ("pemma", "pemma_full", "late_fusion"):
        if kind == "pemma":
            net = _load_pemma(run_dir, meta, base_run)
        elif kind == "pemma_full":
            net = _load_full(run_dir, meta, config)
        else:
            net = _load_late_fusion(run_dir, meta, config, base_run)
        input_sets = [list(s) for s in meta["input_sets"]]
    else:
        raise PemmaError(f"{run_dir}: unsupported model kind {kind!r}")
    net.to(device).eval()
    return LoadedModel(net=net, config=config, meta=meta, input_sets=input_sets, run_dir=run_dir)
