"""Shared machinery of the PEMMA models: the peft-wrapped copy of the CT base and the CT-only guarantee.

PEMMA: Saeed et al., arXiv 2504.13645. A PEMMA model holds

* ``base_model``: a peft ``LoraModel`` around a **deep copy** of the CT network. peft injects LoRA/DoRA
  layers into that copy in place (the caller's network is never touched) and wraps the base modules
  listed in ``train_parts`` in ``ModulesToSaveWrapper`` (a trainable copy per adapter; the original stays
  for CT-only input);
* the new PET modules (built by the subclass).

CT-only input takes one of two routes (``config.ct_route``). On the *exact* route (the default) the copy runs
its own MONAI ``forward`` with every adapter and wrapper disabled, which is exactly the CT model (tested to
1e-6, also after training). On the *shared* route (the paper's) CT alone runs through the adapted network
(adapters, trained copies of base modules, no PET tokens / skip), so CT-only batches train and CT output can
change (forgetting is then measured, not excluded by construction). The disabling flips peft's
per-layer ``_disable_adapters`` flag for the duration of the call and restores it; unlike
``disable_adapter_layers()`` it does not touch ``requires_grad`` (peft's toggle would re-enable gradients
of adapters the caller froze). peft is pinned to 0.21.2 in pyproject.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Sequence
from typing import ClassVar

import torch
from peft import LoraConfig
from peft.tuners.lora import LoraModel
from peft.utils.other import ModulesToSaveWrapper
from torch import nn
from torch.utils.checkpoint import checkpoint

from pemma.adapters.config import NEW_PARTS, AdapterConfig, AdapterDefaults, register_adapter_defaults
from pemma.adapters.recomputed_dora import register_recomputed_dora
from pemma.adapters.split_qkv import needs_split, split_fused_qkv
from pemma.adapters.state import adapter_active, adapters_disabled, is_adapter_param, recompute_as_now
from pemma.models.fused_attention import enable_fused_attention, fused_attention_off
from pemma.models.stacking import StackingMixin, StackLevel
from pemma.vocab import check_modalities

_ADAPTABLE = (nn.Linear, nn.Conv3d)


def first_conv(module: nn.Module) -> nn.Conv3d:
    """The first ``Conv3d`` inside ``module`` (raises ValueError when there is none: not a 3-D network)."""
    for m in module.modules():
        if isinstance(m, nn.Conv3d):
            return m
    raise ValueError(f"{type(module).__name__} has no Conv3d; PEMMA supports 3-D networks only")


def _strip_forward_overrides(net: nn.Module) -> list[str]:
    """Remove instance-level ``forward`` attributes from the copied network.

    A wrapper patched onto a module (e.g. a hand-made gradient checkpointing) stores ``block.forward``
    bound to the *original* block; a deep copy would keep calling the original (un-adapted) weights.
    """
    stripped = []
    for name, m in net.named_modules():
        if "forward" in m.__dict__:
            del m.__dict__["forward"]
            stripped.append(name or "<root>")
    return stripped


#: The PEMMA model class of each backbone, filled as the classes are defined.
PEMMA_MODELS: dict[str, type[PemmaAdaptedModel]] = {}


class PemmaAdaptedModel(StackingMixin, nn.Module):
    """Base class of :class:`~pemma.models.pemma_unetr.PemmaUNETR` and ``PemmaSwinUNETR``.

    Subclasses set the class attributes, build their PET modules after ``super().__init__`` and call
    :meth:`_set_new_parts_trainable`, and implement :meth:`_forward_adapted` and
    :meth:`~pemma.models.stacking.StackingMixin._build_stacked_pathway` (further modalities stacked on the model:
    :mod:`pemma.models.stacking`).

    Args:
        base: the CT network (MONAI, in_channels=1). Deep-copied; the caller's object is left unchanged.
        config: adapter configuration; stored resolved for this backbone as ``self.config``.
        adapter_name: peft adapter name. Default "ctpet".
        added_modality: the name of the modality the PEMMA pathway adds to CT (its channel follows the CT's; the
            pathway's modules keep their ``pet_*`` names). Default ``"pet"``.
    """

    backbone_name: ClassVar[str]
    transformer_name: ClassVar[str]
    #: where adapters go and what trains by default on this backbone
    adapter_defaults: ClassVar[AdapterDefaults]
    #: the PET modules on the path to the transformer's features (what a prognosis stage adds to train)
    feature_pet_parts: ClassVar[tuple[str, ...]]
    #: called as ``model(x, modalities)`` (see :func:`pemma.models.loaded.run_network`)
    accepts_modalities: ClassVar[bool] = True
    #: the constructor takes ``gradient_checkpointing`` (the base's own switch does not reach the copy)
    supports_gradient_checkpointing: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: object) -> None:
        """A subclass naming its ``backbone_name`` registers itself and its adapter defaults."""
        super().__init_subclass__(**kwargs)
        if "backbone_name" in cls.__dict__:
            if cls.backbone_name in PEMMA_MODELS:
                raise ValueError(f"a PEMMA model for {cls.backbone_name!r} is registered twice")
            register_adapter_defaults(cls.backbone_name, cls.adapter_defaults)
            PEMMA_MODELS[cls.backbone_name] = cls

    def __init__(self, base: nn.Module, config: AdapterConfig | None = None, adapter_name: str = "ctpet",
                 added_modality: str = "pet") -> None:
        super().__init__()
        config = AdapterConfig() if config is None else config
        if not isinstance(config, AdapterConfig):
            raise ValueError(f"config must be an AdapterConfig, got {type(config).__name__}")
        if not isinstance(adapter_name, str) or not adapter_name.isidentifier():
            raise ValueError(f"adapter_name must be an identifier such as 'ctpet', got {adapter_name!r}")
        self.config = config.resolve(self.backbone_name)
        self.adapter_name = adapter_name
        if not isinstance(added_modality, str) or not added_modality.isidentifier() or added_modality == "ct":
            raise ValueError(f"added_modality must be a modality name other than ct, got {added_modality!r}")
        self.added_modality = added_modality
        self.stack: list[StackLevel] = []  # modalities stacked on this one (pemma.models.stacking)
        self._merged = False
        self.merged_level = 0  # the level whose adapter a merged model holds
        self.ct_adapter: str | None = None  # adapter serving CT-only input; None = the exact CT base

        net = copy.deepcopy(base)
        self.stripped_forward_overrides = _strip_forward_overrides(net)
        # adapters on Q and V only (the authors' LoRA): the copy's fused qkv Linears become q, k, v Linears
        self.split_qkv = split_fused_qkv(net, self.transformer_name) if needs_split(self.config.target_modules) \
            else []
        net.requires_grad_(False)
        # fused attention on the copy's blocks where the base had it off (names kept so the exact CT route can
        # switch them back and give the base's output bit for bit); see pemma.models.fused_attention
        self.fused_attention_blocks = enable_fused_attention(net, self.transformer_name) \
            if self.config.fused_attention else []
        targets = self._resolve_targets(net, self.config.target_modules)
        base_parts = [p for p in self.config.train_parts if p not in NEW_PARTS[self.backbone_name]]
        children = [n for n, _ in net.named_children() if n != self.transformer_name]
        unknown = [p for p in base_parts if p not in children]
        if unknown:
            raise ValueError(f"train_parts {unknown} are neither new parts {list(NEW_PARTS[self.backbone_name])} "
                             f"nor base modules outside {self.transformer_name!r}: {children}")
        lora_config = LoraConfig(
            r=self.config.rank, lora_alpha=self.config.alpha, lora_dropout=self.config.dropout,
            use_dora=self.config.method == "dora", target_modules=targets, bias="none",
            init_lora_weights=True,
        )
        if self.config.method == "dora" and self.config.recompute_dora:
            register_recomputed_dora(lora_config)
        self.base_model = LoraModel(net, lora_config, adapter_name)
        # Trainable base parts: peft's ModulesToSaveWrapper (frozen original + trainable copy per adapter),
        # attached by exact name; LoraConfig.modules_to_save matches by bare suffix ("out" hits "lora_dropout").
        for part in base_parts:
            wrapper = ModulesToSaveWrapper(getattr(net, part), adapter_name)
            wrapper.set_adapter(adapter_name)  # as peft's own _set_trainable does; makes the copy trainable
            setattr(net, part, wrapper)

    # ------------------------------------------------------------------ construction helpers
    def _resolve_targets(self, net: nn.Module, suffixes: Sequence[str]) -> list[str]:
        """Full names of the adaptable layers inside the transformer that end with one of ``suffixes``."""
        prefix = self.transformer_name + "."
        names: list[str] = []
        for suffix in suffixes:
            hits = [n for n, m in net.named_modules()
                    if n.startswith(prefix) and (n == suffix or n.endswith("." + suffix))
                    and isinstance(m, _ADAPTABLE)]
            if not hits:
                raise ValueError(f"target module {suffix!r} matches no Linear/Conv3d layer in "
                                 f"{self.transformer_name!r} of {type(net).__name__}")
            names.extend(h for h in hits if h not in names)
        return names

    def _full_resolution(self, module: nn.Module, *inputs: torch.Tensor) -> torch.Tensor:
        """``module(*inputs)`` for an encoder that runs at the input's resolution (the first skip encoder, a modality's
        skip block); in training with ``config.checkpoint_full_resolution`` its activations are recomputed in backward
        instead of kept. The last decoder is not among them: it costs about twice the arithmetic per MiB saved (paper
        UNETR: 77 GFLOP for 783 MiB against 26 for 554; ``benchmarks/bench_flops.py``), and recomputing it did not
        lower the measured peak further (``benchmarks/bench_levers.py``)."""
        if self.config.checkpoint_full_resolution and torch.is_grad_enabled():
            return checkpoint(module, *inputs, use_reentrant=False, context_fn=recompute_as_now(module))
        return module(*inputs)

    def _set_new_parts_trainable(self) -> None:
        """``requires_grad`` of the new PET modules according to ``config.train_parts``."""
        for part in NEW_PARTS[self.backbone_name]:
            module = getattr(self, part)
            if module is not None:  # None: a part this configuration does not build (a shared PET embedding)
                module.requires_grad_(part in self.config.train_parts)

    # ------------------------------------------------------------------ adapters (thin peft layer)
    @property
    def net(self) -> nn.Module:
        """The MONAI network inside (with peft layers, or plain after :func:`merge_adapters`)."""
        return self.base_model.model if isinstance(self.base_model, LoraModel) else self.base_model

    @property
    def merged(self) -> bool:
        """True for a model returned by :func:`pemma.adapters.merging.merge_adapters`."""
        return self._merged

    @property
    def adapter_names(self) -> list[str]:
        """All peft adapters of this model (the first is ``self.adapter_name``)."""
        return [] if self._merged else list(self.base_model.peft_config)

    @property
    def active_adapters(self) -> list[str]:
        """Adapters used for ct+pet and pet input (and CT alone on the shared route)."""
        return [] if self._merged else list(self.base_model.active_adapters)

    def set_adapter(self, name: str | list[str]) -> None:
        """Activate adapter(s) (peft semantics: active adapters become trainable, the others frozen)."""
        names = [name] if isinstance(name, str) else list(name)
        missing = [n for n in names if n not in self.adapter_names]
        if missing:
            raise ValueError(f"unknown adapter(s) {missing}; this model has {self.adapter_names}")
        self.base_model.set_adapter(names)

    @property
    def shared_route(self) -> bool:
        """True when CT-only input runs through the adapted network (``config.ct_route == "shared"``)."""
        return self.config.ct_route == "shared"

    def add_ct_adapter(self, name: str = "ct_update") -> None:
        """Give CT-only input an adapter of its own (for a CT-only update on the exact route) and make only it
        trainable. On the shared route CT already runs the main adapter, so this is an error.

        Until this is called CT alone runs the exact CT base. Afterwards CT alone runs the base with the
        ``name`` adapter (same rank / alpha / targets as the main one, initialised to a zero update, so the
        output starts equal to the base); the base stays recoverable by disabling adapters. CT+PET and PET
        input keep using ``self.adapter_name``.
        """
        if self._merged:
            raise ValueError("cannot add an adapter to a merged model")
        if self.shared_route:
            raise ValueError("on the shared CT route CT-only input runs the main adapter; no CT adapter is added")
        if name in self.adapter_names:
            raise ValueError(f"adapter {name!r} already exists")
        main = self.base_model.peft_config[self.adapter_name]
        self.base_model.peft_config[name] = dataclasses.replace(main)
        self.base_model.inject_adapter(self.base_model.model, name)
        self.requires_grad_(False)
        for key, param in self.named_parameters():
            if f".{name}." in key or key.endswith(f".{name}"):
                param.requires_grad_(True)
        self.ct_adapter = name

    def adapter_for(self, modalities: Sequence[str]) -> str | None:
        """Which adapter serves an input set (None: the exact CT base)."""
        level = self.level_of(modalities)
        if level:
            return self.stack[level - 1].adapter
        if tuple(modalities) == ("ct",) and not self.shared_route:
            return self.ct_adapter
        return self.adapter_name

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """State of everything adaptation adds: LoRA/DoRA tensors, trainable base-module copies and the new
        PET modules (whatever their ``requires_grad``). The frozen base copy is left out."""
        out = {}
        for key, value in self.state_dict().items():
            if not key.startswith("base_model.") or ".modules_to_save." in key or is_adapter_param(key):
                out[key] = value
        return out

    # ------------------------------------------------------------------ forward
    def split_modalities(self, x: torch.Tensor, modalities: Sequence[str]) -> dict[str, torch.Tensor]:
        """Check ``x`` (B, len(modalities), D, H, W) against ``modalities``; ``{name: (B, 1, D, H, W)}``."""
        mods = check_modalities(modalities, self.modalities)
        if not isinstance(x, torch.Tensor) or x.ndim != 5:
            raise ValueError(f"x must be a (B, C, D, H, W) tensor, got shape {tuple(getattr(x, 'shape', ()))}")
        if x.shape[1] != len(mods):
            raise ValueError(f"x has {x.shape[1]} channels but modalities {mods} name {len(mods)}")
        return {m: x[:, i : i + 1] for i, m in enumerate(mods)}

    def forward(self, x: torch.Tensor, modalities: Sequence[str]) -> torch.Tensor:
        """Segmentation logits (B, out_channels, D, H, W).

        Args:
            x: (B, len(modalities), D, H, W), channels in ``self.modalities`` order ([CT, PET], or [CT, the
                added modality, the stacked ones]).
            modalities: the modalities present, e.g. ("ct", "pet"), ("ct",) or ("pet",).
        """
        inputs = self.split_modalities(x, modalities)
        level = self.level_of(tuple(inputs))
        if self._merged and level != self.merged_level:
            held = "+".join(self.level_modalities(self.merged_level))
            raise ValueError(f"this merged model holds the adapter of the {held} level only; use the unmerged model "
                             f"for {'+'.join(inputs)} input")
        if level:
            context = contextlib.nullcontext() if self._merged else adapter_active(self.base_model,
                                                                                    self.level_adapter(level))
            with context:
                return self._forward_adapted(inputs, level)
        if tuple(inputs) == ("ct",) and self.shared_route:  # the paper's route: CT through the adapted network
            context = adapter_active(self.base_model, self.adapter_name) if self.stack and not self._merged \
                else contextlib.nullcontext()
            with context:
                return self._forward_adapted(inputs, 0)
        if tuple(inputs) == ("ct",):
            if self._merged:
                raise ValueError("a merged PEMMA model has no unadapted CT path; use the unmerged model "
                                 "or the CT base model for CT-only input")
            if self.ct_adapter is not None:
                with adapter_active(self.base_model, self.ct_adapter):
                    return self.net(inputs["ct"])
            with adapters_disabled(self.base_model), fused_attention_off(self.net, self.fused_attention_blocks):
                return self.net(inputs["ct"])
        if (self.ct_adapter is None and not self.stack) or self._merged:
            return self._forward_adapted(inputs, 0)
        with adapter_active(self.base_model, self.adapter_name):
            return self._forward_adapted(inputs, 0)

    def _forward_adapted(self, inputs: dict[str, torch.Tensor], level: int = 0) -> torch.Tensor:
        """Logits through the adapted network of ``level`` for ``inputs`` ({modality: (B, 1, D, H, W)}, channel
        order; CT alone only on a shared route)."""
        raise NotImplementedError
