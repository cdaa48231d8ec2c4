"""Configuration of a PEMMA adaptation (LoRA / DoRA adapters, PET pathway, modality dropout).

PEMMA: Saeed et al., "Parameter-efficient multi-modal adaptation", arXiv 2504.13645 (2025).
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass, field
from typing import Any

from pemma.vocab import ADAPTER_TYPES, BACKBONES, CT_ROUTES, DROPOUT_INPUT_SETS, RECIPES, VALIDATION_INPUTS

#: ``AdapterConfig.pet_patch_embedding`` choices: a trainable copy of the CT patch embedding, or the CT one (frozen)
PET_PATCH_EMBEDDINGS: tuple[str, ...] = ("copy", "shared")
#: ``AdapterConfig.pet_skip_block`` choices: pemma's zero-initialised conv block, or a copy of the base's encoder1
PET_SKIP_BLOCKS: tuple[str, ...] = ("conv", "encoder1_copy")
#: ``AdapterConfig.single_adapter`` choices (Swin): residual 48->48 adapter, or the authors' 48->96 + projection
SINGLE_ADAPTERS: tuple[str, ...] = ("residual", "projected")
#: ``AdapterConfig.pet_alone_skip`` choices (UNETR): PET alone's first skip from encoder1 plus the PET block, or the
#: PET block alone
PET_ALONE_SKIPS: tuple[str, ...] = ("added", "replaces")


@dataclass(frozen=True)
class AdapterDefaults:
    """Where adapters go and what trains on one backbone when the user does not say (registered by each PEMMA
    model class, see :class:`pemma.models.pemma_base.PemmaAdaptedModel`).

    Args:
        target_modules: suffixes of the transformer's Linear modules that get adapters (MONAI ``SABlock.qkv`` for
            UNETR; ``WindowAttention.qkv`` / ``.proj`` for Swin).
        new_parts: modules PEMMA adds to the backbone (always created; trained if listed in ``train_parts``).
        train_parts: what trains besides the adapters (new parts and top-level base modules).
        pet_entry_parts: new parts through which the added modality reaches the output when everything else is as
            it started (Swin: the fusion starts by passing CT through, and the PET skip block); when given, one of
            them must train, or the added modality could never change the output. Default none (UNETR: PET
            tokens join the CT tokens' attention from the start).
    """

    target_modules: tuple[str, ...]
    new_parts: tuple[str, ...]
    train_parts: tuple[str, ...]
    pet_entry_parts: tuple[str, ...] = ()


#: Per-backbone defaults, filled by :func:`register_adapter_defaults` (one entry per PEMMA model class).
DEFAULT_TARGET_MODULES: dict[str, tuple[str, ...]] = {}
NEW_PARTS: dict[str, tuple[str, ...]] = {}
DEFAULT_TRAIN_PARTS: dict[str, tuple[str, ...]] = {}
PET_ENTRY_PARTS: dict[str, tuple[str, ...]] = {}


def register_adapter_defaults(backbone: str, defaults: AdapterDefaults) -> None:
    """Record the adapter defaults of ``backbone`` (a name of :data:`pemma.vocab.BACKBONES`)."""
    if backbone not in BACKBONES:
        raise ValueError(f"backbone {backbone!r} is not in pemma.vocab.BACKBONES {BACKBONES}")
    DEFAULT_TARGET_MODULES[backbone] = tuple(defaults.target_modules)
    NEW_PARTS[backbone] = tuple(defaults.new_parts)
    DEFAULT_TRAIN_PARTS[backbone] = tuple(defaults.train_parts)
    PET_ENTRY_PARTS[backbone] = tuple(defaults.pet_entry_parts)


def _help(text: str) -> dict[str, str]:
    return {"help": text}


#: fields an interrupted run may resume with changed: memory levers whose outputs, gradients and weights are
#: bit-identical (every other field determines what trains, and a resume with it changed is refused)
RESUMABLE_FIELDS: tuple[str, ...] = ("checkpoint_full_resolution", "recompute_dora")
#: fields added after checkpoints began to record the adapter settings, with the value every earlier run trained
#: with: a ``--resume`` of such a checkpoint compares against it (an older authors'-recipe checkpoint validated
#: CT+PET only, and resuming it under ``each`` would change what its best weights are chosen by)
RECORDED_BEFORE_FIELD: dict[str, Any] = {"validation_inputs": "full", "pet_alone_skip": None}
#: recorded values that build the same network as another value of their field, which a ``--resume`` compares them
#: as: ``pet_alone_skip`` None (every UNETR run before the setting) is ``added``, so ``--pet-alone-skip added``
#: continues such a checkpoint (no flag gives None itself)
SAME_CONSTRUCTION: dict[str, dict[Any, Any]] = {"pet_alone_skip": {None: "added"}}


@dataclass
class AdapterConfig:
    """How a CT model is adapted to CT+PET (arXiv 2504.13645).

    ``target_modules`` and ``train_parts`` left as None mean "the backbone's default"; :meth:`resolve`
    fills them in, and a model always stores the resolved config (so a saved adapter is self-describing).

    Example:
        >>> import pemma.models  # registers each backbone's defaults (target modules, new and trained parts)
        >>> cfg = AdapterConfig(method="dora", rank=8, alpha=16).resolve("swin_unetr")
        >>> cfg.target_modules
        ('attn.qkv', 'attn.proj')
    """

    method: str = field(default="lora", metadata=_help("'lora' or 'dora' (weight-decomposed LoRA)."))
    rank: int = field(default=4, metadata=_help("rank r of the low-rank update B·A."))
    alpha: float = field(default=8.0, metadata=_help("LoRA scaling numerator: the update is B·A·x·alpha/r."))
    dropout: float = field(default=0.0, metadata=_help("dropout on the adapter input, in [0, 1)."))
    target_modules: tuple[str, ...] | None = field(
        default=None,
        metadata=_help("suffixes of Linear modules in the transformer that get adapters, e.g. 'attn.qkv'; "
                       "default: the backbone's (UNETR: attn.qkv; Swin: attn.qkv, attn.proj)."),
    )
    train_parts: tuple[str, ...] | None = field(
        default=None,
        metadata=_help("non-adapter parts that train: new modules (pet_embedding, pet_skip, fusion [Swin]) and "
                       "top-level base modules outside the transformer (e.g. encoder1, encoder2, out); a base "
                       "module trains as a copy, the original stays for CT-only input. Default: the backbone's."),
    )
    modality_dropout: tuple[float, float, float] = field(
        default=(0.6, 0.2, 0.2),
        metadata=_help("probabilities of the input sets (ct+pet, ct, pet) per training batch; sum to 1."),
    )
    ct_route: str = field(
        default="exact",
        metadata=_help("how CT-only input runs: 'exact' (the untouched CT base; CT output never changes) or "
                       "'shared' (the paper's: through the adapted network, so CT-only draws train)."),
    )
    validation_inputs: str = field(
        default="full",
        metadata=_help("what validation scores to keep the best weights: 'full' (CT and PET together) or 'each' "
                       "(every input set modality dropout trains: CT+PET, and CT and PET alone; each scored, "
                       "the mean DSCagg averaged over them: the authors')."),
    )
    pet_patch_embedding: str = field(
        default="copy",
        metadata=_help("UNETR: PET patch tokens from 'copy' (a trainable copy of the CT patch embedding, part "
                       "pet_embedding) or 'shared' (the CT model's own frozen embedding, as the authors did)."),
    )
    pet_skip_block: str = field(
        default="conv",
        metadata=_help("the PET block of the first skip (part pet_skip): 'conv' (a conv block with a zero-"
                       "initialised output) or 'encoder1_copy' (a copy of the base's encoder1, the authors'; on "
                       "Swin it replaces encoder1 for PET alone instead of being added)."),
    )
    pet_alone_skip: str | None = field(
        default=None,
        metadata=_help("UNETR: the first (full-resolution) skip of PET alone: 'added' (encoder1 reads the PET and the "
                       "pet_skip block's output is added: pemma's) or 'replaces' (the pet_skip block alone, as the "
                       "authors' Swin UNETR does with its PET copy of encoder1: encoder1 then only ever reads CT, so "
                       "a PET-only update cannot re-fit a module CT alone runs through). None (default): 'added', "
                       "which every UNETR run before this setting used. Swin UNETR: not settable (pet_skip_block "
                       "decides: 'encoder1_copy' replaces, 'conv' is added)."),
    )
    single_adapter: str = field(
        default="residual",
        metadata=_help("Swin: single-modality embedding adapter: 'residual' (1x1 conv, norm, ReLU, 1x1 conv, "
                       "zero-initialised, added) or 'projected' (the authors': conv C->C, BatchNorm, ReLU, conv "
                       "C->2C, then the CT+PET projection 2C->C)."),
    )
    fused_attention: bool = field(
        default=True,
        metadata=_help("UNETR: the adapted copy's attention blocks use torch's fused scaled_dot_product_attention "
                       "(MONAI SABlock use_flash_attention; UNETR does not pass it on) where the base did not: same "
                       "output to float rounding, faster and smaller in training; CT alone on the exact route "
                       "still runs the base's own attention."),
    )
    checkpoint_full_resolution: bool = field(
        default=True,
        metadata=_help("training memory: the full-resolution encoders (the first skip encoder, each added modality's "
                       "skip block) recompute their activations in backward instead of keeping them. Measured at the "
                       "paper preset on the CPU (benchmarks/bench_levers.py), LoRA against early fusion: UNETR "
                       "footprint 0.96x -> 0.71x, step 1.29x -> 1.37x; Swin UNETR footprint 0.92x -> 0.78x, step "
                       "0.97x -> 0.87x. Bit-identical outputs, gradients and weights; inference unchanged."),
    )
    recompute_dora: bool = field(
        default=True,
        metadata=_help("training memory, DoRA only: each DoRA linear recomputes its output in backward instead of "
                       "keeping the two output-sized tensors its magnitude gradient needs (pemma.adapters."
                       "recomputed_dora). Measured at the paper preset on the CPU, DoRA against early fusion: "
                       "Swin UNETR footprint 0.87x -> 0.79x, step 1.01x -> 0.95x; UNETR footprint 0.78x -> 0.74x, "
                       "step unchanged. Bit-identical outputs, gradients and weights; inference unchanged."),
    )
    recipe: str = field(
        default="pemma",
        metadata=_help("named set of defaults (YAML shipped with pemma, pemma/recipes): 'pemma' (pemma's own) or "
                       "'authors' (the paper's released configuration per backbone); explicit values override it; "
                       "recorded in the run."),
    )

    def __post_init__(self) -> None:
        if self.method not in ADAPTER_TYPES:
            raise ValueError(f"method must be one of {', '.join(ADAPTER_TYPES)}, got {self.method!r}")
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"rank must be a positive integer, got {self.rank!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not self.alpha > 0:
            raise ValueError(f"alpha must be a positive number, got {self.alpha!r}")
        self.alpha = float(self.alpha)
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) \
                or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        self.dropout = float(self.dropout)
        self.target_modules = self._names("target_modules", self.target_modules, allow_empty=False)
        self.train_parts = self._names("train_parts", self.train_parts, allow_empty=True)
        probs = tuple(self.modality_dropout)
        if len(probs) != 3 or any(isinstance(p, bool) or not isinstance(p, (int, float)) or p < 0 for p in probs):
            raise ValueError(f"modality_dropout must be 3 non-negative numbers (ct+pet, ct, pet), got {probs!r}")
        if not math.isclose(sum(probs), 1.0, abs_tol=1e-6):
            raise ValueError(f"modality_dropout must sum to 1, got {probs!r} (sum {sum(probs):g})")
        self.modality_dropout = tuple(float(p) for p in probs)  # type: ignore[assignment]
        for name in ("fused_attention", "checkpoint_full_resolution", "recompute_dora"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.ct_route not in CT_ROUTES:
            raise ValueError(f"ct_route must be one of {list(CT_ROUTES)}, got {self.ct_route!r}")
        for name, choices in (("pet_patch_embedding", PET_PATCH_EMBEDDINGS), ("pet_skip_block", PET_SKIP_BLOCKS),
                              ("single_adapter", SINGLE_ADAPTERS), ("recipe", RECIPES),
                              ("validation_inputs", VALIDATION_INPUTS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {list(choices)}, got {getattr(self, name)!r}")
        if self.pet_alone_skip is not None and self.pet_alone_skip not in PET_ALONE_SKIPS:
            raise ValueError(f"pet_alone_skip must be one of {list(PET_ALONE_SKIPS)} or None, "
                             f"got {self.pet_alone_skip!r}")
        if self.pet_patch_embedding == "shared" and self.train_parts is not None \
                and "pet_embedding" in self.train_parts:
            raise ValueError("train_parts names pet_embedding, but pet_patch_embedding='shared' has none "
                             "(PET goes through the frozen CT patch embedding)")

    @staticmethod
    def _names(what: str, value: Any, allow_empty: bool) -> tuple[str, ...] | None:
        if value is None:
            return None
        if isinstance(value, str):
            raise ValueError(f"{what} must be a list of names, not the string {value!r}")
        names = tuple(value)
        if not names and not allow_empty:
            raise ValueError(f"{what} must not be empty")
        if any(not isinstance(n, str) or not n or n != n.strip() for n in names):
            raise ValueError(f"{what} must hold non-empty names, got {list(names)!r}")
        if len(set(names)) != len(names):
            raise ValueError(f"{what} has duplicates: {list(names)!r}")
        return names

    # ------------------------------------------------------------------ defaults per backbone
    def resolve(self, backbone: str) -> AdapterConfig:
        """A copy with ``target_modules`` / ``train_parts`` filled in for ``backbone``, checked against it.

        Raises:
            ValueError: unknown backbone, or a ``train_parts`` entry naming a new module of another backbone.
        """
        if not NEW_PARTS:  # filled when pemma.models is imported (a layer above this one)
            raise ValueError("no backbone's adapter defaults are registered yet: import pemma.models first (each "
                             "PEMMA model module registers its backbone's)")
        if backbone not in NEW_PARTS:
            raise ValueError(f"backbone must be one of {list(NEW_PARTS)}, got {backbone!r}")
        targets = self.target_modules or DEFAULT_TARGET_MODULES[backbone]
        parts = DEFAULT_TRAIN_PARTS[backbone] if self.train_parts is None else self.train_parts
        if self.pet_patch_embedding == "shared":
            if backbone != "unetr":
                raise ValueError(f"pet_patch_embedding='shared' exists for unetr only, not {backbone!r}")
            parts = tuple(p for p in parts if p != "pet_embedding")
        if self.pet_alone_skip is not None and backbone != "unetr":
            raise ValueError(f"pet_alone_skip exists for unetr only, not {backbone!r} (there pet_skip_block decides: "
                             "'encoder1_copy' replaces encoder1 for PET alone, 'conv' is added to it)")
        if self.single_adapter != "residual" and backbone != "swin_unetr":
            raise ValueError(f"single_adapter={self.single_adapter!r} exists for swin_unetr only, not {backbone!r}")
        foreign = {p for b, new in NEW_PARTS.items() if b != backbone for p in new} - set(NEW_PARTS[backbone])
        bad = sorted(foreign & set(parts))
        if bad:
            raise ValueError(f"train_parts {bad} do not exist for backbone {backbone!r}; "
                             f"its new parts are {list(NEW_PARTS[backbone])}")
        return dataclasses.replace(self, target_modules=tuple(targets), train_parts=tuple(parts))

    def check_added_modality_reaches(self, backbone: str) -> None:
        """A new adaptation's ``train_parts`` must train one of the backbone's
        :attr:`AdapterDefaults.pet_entry_parts` (Swin: the fusion, which starts by passing CT through, or the PET
        skip block, which starts at zero), else its CT+PET predictions could never read the PET. Checked when an
        adaptation is set up, not when a run loads (a run adapted so before this check still loads).

        Raises:
            ValueError: naming the parts and the fix.
        """
        parts = self.resolve(backbone).train_parts or ()
        entry = PET_ENTRY_PARTS.get(backbone, ())
        if entry and not set(entry) & set(parts):
            raise ValueError(f"train_parts {list(parts)} train none of {list(entry)}: on {backbone} the added modality "
                             f"joins CT only through them (each starts as 'no change'), so CT+PET predictions could "
                             f"never read it; add one (the default trains {list(DEFAULT_TRAIN_PARTS[backbone])})")

    # ------------------------------------------------------------------ modality dropout
    def modality_choices(self, trainable_only: bool = False,
                         added: str = "pet") -> list[tuple[tuple[str, ...], float]]:
        """``[(modalities, probability), ...]`` of modality dropout.

        Args:
            trainable_only: drop the CT-only set and renormalise. CT-only input runs the frozen base model
                (CT is not forgotten), so a CT-only batch has nothing to train. Default False.
            added: the modality added to CT (``modality_dropout`` weighs ct+added, ct, added). Default ``pet``.
        """
        sets = [tuple(added if m == "pet" else m for m in s) for s in DROPOUT_INPUT_SETS]
        choices = [(m, p) for m, p in zip(sets, self.modality_dropout, strict=True)
                   if p > 0 and not (trainable_only and m == ("ct",))]
        total = sum(p for _, p in choices)
        if total <= 0:
            raise ValueError(f"modality_dropout {self.modality_dropout} leaves no trainable input set")
        return [(m, p / total) for m, p in choices]

    def sample_modalities(self, rng: random.Random, trainable_only: bool = False,
                          added: str = "pet") -> tuple[str, ...]:
        """Draw one input set (``added``: see :meth:`modality_choices`). Use the same seed on every DDP rank so all
        ranks take the same path."""
        choices = self.modality_choices(trainable_only, added)
        return rng.choices([m for m, _ in choices], weights=[p for _, p in choices], k=1)[0]

    def validation_sets(self, trainable_only: bool = False, added: str = "pet") -> tuple[tuple[str, ...], ...]:
        """The input sets validation scores alone (:attr:`validation_inputs`): ``full``: none (``()``, every
        modality together); ``each``: every set of :meth:`modality_choices` (same arguments), in (ct+added, ct,
        added) order."""
        if self.validation_inputs == "full":
            return ()
        return tuple(s for s, _ in self.modality_choices(trainable_only, added))

    def resume_settings(self) -> dict[str, Any]:
        """``{label: value}`` of the fields that determine the trained weights, as a checkpoint records them for
        ``--resume`` to compare (:func:`pemma.training.resume_settings.check_resume_settings`): every field but
        :data:`RESUMABLE_FIELDS`; ``method`` as ``adapter_method``, ``dropout`` as ``adapter_dropout`` (its flag)."""
        labels = {"method": "adapter_method", "dropout": "adapter_dropout"}
        return {labels.get(k, k): v for k, v in self.to_dict().items() if k not in RESUMABLE_FIELDS}

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdapterConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ValueError."""
        if not isinstance(data, dict):
            raise ValueError(f"adapter config must be a mapping, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown adapter config keys {unknown}; known: {sorted(known)}")
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**kwargs)

    @classmethod
    def help(cls) -> dict[str, str]:
        """``{field: help text}`` for CLIs and docs."""
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}
