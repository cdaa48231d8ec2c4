"""Stacking modalities on an adapted PEMMA model: CT+PET -> CT+PET+MR -> ... (issue 14, part 2).

An adapted model (CT + one added modality, *level 0*) is the frozen base of each stacked modality. Stacking a
modality (:meth:`StackingMixin.add_modality`) adds a *level*:

* a second named peft adapter (``"ctpetmr"``: the level's modalities joined), injected beside the existing ones
  into the same wrapped layers (the base layers are wrapped, never edited) and **initialised as a copy of the level
  below's adapter**, with its own copies of the trainable base modules (peft ``ModulesToSaveWrapper.update``);
* the new modality's pathway modules, kept by name under ``stacked.<modality>``: ``embedding`` (a copy of the CT
  patch embedding, UNETR with ``pet_patch_embedding="shared"`` has none), ``skip`` (as the first added modality's
  ``pet_skip``), and on Swin UNETR ``fusion`` (the level below's fusion widened by one modality, the new channels
  zero: it starts equal to the one below);
* a route: ``exact`` (input sets without the new modality run the level below exactly, bit for bit) or ``shared``
  (every input set runs the new level, so the older input sets train further).

Which level serves an input set is decided by the modalities present (:meth:`StackingMixin.level_of`): the highest
level whose modality is present, or whose route is shared; level 0 otherwise. Everything generalises to N levels.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from collections.abc import Sequence

import torch
from peft.utils.other import ModulesToSaveWrapper
from torch import nn

from pemma.adapters.blocks import EmbeddingFusion
from pemma.vocab import CT_ROUTES

#: the trainable part of ``AdapterConfig.train_parts`` each stacked pathway module follows
STACKED_PARTS: dict[str, str] = {"embedding": "pet_embedding", "skip": "pet_skip", "fusion": "fusion"}


@dataclasses.dataclass(frozen=True)
class StackLevel:
    """One stacked modality: its name, the peft adapter serving its input sets, and its route (``exact`` or
    ``shared``, see the module docstring)."""

    modality: str
    adapter: str
    route: str = "exact"

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


def base_module(module: nn.Module) -> nn.Module:
    """The frozen original of a base module that trains as a peft ``ModulesToSaveWrapper`` copy."""
    return module.original_module if isinstance(module, ModulesToSaveWrapper) else module


def input_subsets(modalities: Sequence[str]) -> list[tuple[str, ...]]:
    """Every non-empty subset of ``modalities`` in channel order: the full set first, then larger before smaller
    (e.g. ct+pet+mr, ct+pet, ct+mr, pet+mr, ct, pet, mr)."""
    mods = tuple(modalities)
    return [s for n in range(len(mods), 0, -1) for s in itertools.combinations(mods, n)]


def stacked_dropout(modalities: Sequence[str], full: float, trainable: Sequence[tuple[str, ...]]
                    ) -> list[tuple[tuple[str, ...], float]]:
    """Modality dropout over the ``trainable`` subsets of ``modalities``: the full set with probability ``full``
    (``AdapterConfig.modality_dropout[0]``), the rest shared equally by the other subsets (for two modalities this
    is the default (0.6, 0.2, 0.2)); renormalised when the full set is the only one."""
    everything = tuple(modalities)
    others = [s for s in trainable if s != everything]
    if not others:
        return [(everything, 1.0)]
    if everything not in trainable:
        return [(s, 1.0 / len(others)) for s in others]
    return [(everything, full), *[(s, (1.0 - full) / len(others)) for s in others]]


class StackingMixin:
    """Stacked modalities of a :class:`~pemma.models.pemma_base.PemmaAdaptedModel` (see the module docstring).

    The model class provides ``base_model`` (peft ``LoraModel``), ``adapter_name``, ``added_modality``,
    ``adapter_names``, ``pet_embedding`` / ``pet_skip`` and implements :meth:`_build_stacked_pathway`.
    """

    stack: list[StackLevel]
    merged_level: int

    # ------------------------------------------------------------------ levels
    @property
    def modalities(self) -> tuple[str, ...]:
        """Every modality of the model in channel order: CT, the added one, the stacked ones."""
        return ("ct", self.added_modality, *(level.modality for level in self.stack))

    def level_modalities(self, level: int) -> tuple[str, ...]:
        """The modalities level ``level`` reads (level 0: CT and the added modality)."""
        return self.modalities[: 2 + level]

    def level_adapter(self, level: int) -> str:
        """The peft adapter of level ``level`` (level 0: ``adapter_name``)."""
        return self.adapter_name if level == 0 else self.stack[level - 1].adapter

    def level_of(self, modalities: Sequence[str]) -> int:
        """The level serving an input set: the highest whose modality is present or whose route is shared."""
        present = set(modalities)
        for k in range(len(self.stack), 0, -1):
            level = self.stack[k - 1]
            if level.modality in present or level.route == "shared":
                return k
        return 0

    def embedding_of(self, modality: str) -> nn.Module | None:
        """The patch-embedding module of an added / stacked modality (None: the CT one is shared)."""
        if modality == self.added_modality:
            return self.pet_embedding
        path = self.stacked[modality]
        return path["embedding"] if "embedding" in path else None

    def skip_of(self, modality: str) -> nn.Module:
        """The first-skip block of an added / stacked modality."""
        return self.pet_skip if modality == self.added_modality else self.stacked[modality]["skip"]

    # ------------------------------------------------------------------ stacking
    def add_modality(self, modality: str, route: str = "exact", adapter: str | None = None) -> StackLevel:
        """Stack ``modality`` on this model (a new level; see the module docstring) and make only it trainable.

        Args:
            modality: the new modality's name (not one the model has).
            route: ``exact`` (the older input sets keep running the level below exactly) or ``shared``.
            adapter: the new peft adapter's name. Default: the level's modalities joined (``"ctpetmr"``).

        Returns:
            the new :class:`StackLevel`.
        """
        if self._merged:
            raise ValueError("cannot add a modality to a merged model")
        if not isinstance(modality, str) or not modality.isidentifier():
            raise ValueError(f"modality must be a name such as 'mr', got {modality!r}")
        if modality in self.modalities:
            raise ValueError(f"the model already has {modality} (modalities {', '.join(self.modalities)})")
        if route not in CT_ROUTES:
            raise ValueError(f"route must be one of {list(CT_ROUTES)}, got {route!r}")
        below = self.level_adapter(len(self.stack))
        name = adapter or "".join((*self.modalities, modality))
        if not name.isidentifier() or name in self.adapter_names:
            raise ValueError(f"adapter name {name!r} is not a new identifier (adapters: {self.adapter_names})")
        self._copy_adapter(below, name)
        self.stack.append(StackLevel(modality, name, route))
        if not hasattr(self, "stacked"):
            self.stacked = nn.ModuleDict()
        modules = self._build_stacked_pathway(modality, route)
        self.stacked[modality] = nn.ModuleDict({k: v for k, v in modules.items() if v is not None})
        self.requires_grad_(False)
        for key, param in self.named_parameters():
            if name in key.split("."):
                param.requires_grad_(True)
        for part, module in self.stacked[modality].items():
            module.requires_grad_(STACKED_PARTS[part] in self.config.train_parts)
        return self.stack[-1]

    def _copy_adapter(self, source: str, name: str) -> None:
        """Inject peft adapter ``name`` (same rank, alpha, targets as ``source``) and copy ``source``'s tensors into
        it, including its copies of the trainable base modules."""
        self.base_model.peft_config[name] = dataclasses.replace(self.base_model.peft_config[source])
        self.base_model.inject_adapter(self.base_model.model, name)
        for wrapper in [m for m in self.net.modules() if isinstance(m, ModulesToSaveWrapper)]:
            wrapper.update(name)
        state = self.state_dict()
        with torch.no_grad():
            for key, value in state.items():
                parts = key.split(".")
                if name in parts:
                    value.copy_(state[".".join(source if p == name else p for p in parts)])

    def _widened_fusion(self, below: nn.Module, route: str) -> nn.Module:
        """The level below's ``EmbeddingFusion`` widened by the newest modality (its projection columns zero, the
        single-modality adapters of the older modalities copied), so it starts equal to ``below``."""
        mods = self.modalities
        channels = below.project.out_channels
        single = (mods[-1],) if route == "exact" else mods  # exact: the older modalities alone run levels below
        fusion = EmbeddingFusion(channels, mods, single=single, style=below.style)
        old = below.project.in_channels
        with torch.no_grad():
            fusion.project.weight.zero_()
            fusion.project.weight[:, :old].copy_(below.project.weight)
            fusion.project.bias.copy_(below.project.bias)
            for m in single:
                if m not in below.single:
                    continue
                adapter = copy.deepcopy(below.single[m])
                if below.style == "projected":  # its last conv feeds the wider projection: new rows zero
                    last = adapter.body[-1]
                    wide = nn.Conv3d(last.in_channels, fusion.project.in_channels, kernel_size=1)
                    wide.weight.zero_()
                    wide.bias.zero_()
                    wide.weight[:old].copy_(last.weight)
                    wide.bias[:old].copy_(last.bias)
                    adapter.body[-1] = wide
                fusion.single[m] = adapter
        return fusion

    def _build_stacked_pathway(self, modality: str, route: str) -> dict[str, nn.Module | None]:
        """``{"embedding", "skip"[, "fusion"]}`` modules of a newly stacked modality (built by the backbone)."""
        raise NotImplementedError

    def level_state_dict(self, level: int) -> dict[str, torch.Tensor]:
        """The tensors level ``level`` (>= 1) adds: its adapter's LoRA/DoRA tensors and base-module copies, and its
        pathway modules (``stacked.<modality>.*``)."""
        if not 1 <= level <= len(self.stack):
            raise ValueError(f"level must be in 1..{len(self.stack)}, got {level}")
        stacked = self.stack[level - 1]
        return {k: v for k, v in self.adapter_state_dict().items()
                if stacked.adapter in k.split(".") or k.startswith(f"stacked.{stacked.modality}.")}

    def serving(self) -> dict[str, str]:
        """``{input set: adapter}`` for every subset of the modalities (``"none (exact CT base)"`` where CT alone
        runs the untouched base)."""
        return {"+".join(s): self.adapter_for(s) or "none (exact CT base)" for s in input_subsets(self.modalities)}
