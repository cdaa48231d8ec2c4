"""Strategy files: the phases of a continual-learning protocol, their variants and the per-centre split.

A strategy is a small YAML file (``strategies/hecktor2022.yaml`` is the authors' protocol, commented)::

    name: hecktor2022
    backbones: [unetr]          # --backbone, --preset and --max-steps override these three
    preset: tiny
    max_steps: null
    amp: false                  # mixed precision: true, false or auto (on for CUDA or a CPU with native bf16); --amp
    workers: 1                  # processes running the method chains side by side after pretraining, or auto
                                # (pemma.protocol.chains.resolve_workers); --workers
    split: {val_fraction: 0.2, test_fraction: 0.2, seed: 0}
    methods: [pemma_lora, pemma_dora, early_fusion, late_fusion, full_finetune]
    routes: [exact]             # CT routes of the PEMMA methods (pemma.vocab.CT_ROUTES), or per method:
                                # {pemma_lora: [exact, shared]}; --ct-route overrides
    recipes: [pemma]            # adaptation recipes of the PEMMA methods (pemma.vocab.RECIPES), or per CT route:
                                # {exact: [pemma], shared: [authors]}; --recipe overrides
    phases:                     # {name, operation, centres, modalities}, in training order
      - {name: pretrain, operation: pretrain, centres: [CHUM, CHUP, CHUS, CHUV], modalities: [ct]}
      - ...
    variants:                   # variant name -> {phase name -> replaced fields}
      pet_only: {}
      ct_only: {update_hgj: {modalities: [ct]}, update_hmr: {modalities: [ct]}}

Routes and recipes: the PEMMA methods run once per (route, recipe) pair, each of their routes with the recipes of
that route (:meth:`Strategy.recipes_of`); the baselines once (they have neither).

Operations: ``pretrain`` trains the CT base model (shared by every method); ``adapt`` adds a modality to
it (PEMMA adapters, or a baseline built from the base); ``update`` continues training an adapted model on
new centres with the modalities given, without replay.

Variants: ``phases`` is the base sequence; each entry of ``variants`` names a full protocol obtained by
replacing the ``modalities`` and/or ``centres`` of the phases it lists (``{}`` = the base sequence as
written). Without ``variants`` there is one variant, ``default``. Every expanded variant is validated like
the base. Phases whose whole history is identical across variants get the same :attr:`PlannedPhase.run_key`,
so a runner trains them once and reuses them (the key covers the phases only: a runner adds the backbone,
method, preset and split to its run-folder name).

Rules (a violation raises :class:`StrategyError`, one line naming the file and the phase): the first
phase is ``pretrain`` on CT only and no later phase is; ``adapt`` follows a pretrain and adds one modality
not seen before (CT, PET, or a catalogued one: MR, dose); a second ``adapt`` stacks its new modality on the adapted
model (its modalities: every one seen so far and the new one; PEMMA methods only; late fusion adds PET only);
``update`` follows an adapt and uses only modalities the model already has; phase names are unique; centres are
HECKTOR centres or centres of the dataset; no unknown keys. Every centre is evaluated with every subset of the
strategy's modalities (:attr:`Strategy.eval_input_sets`: ct, pet, ct+pet for the shipped CT+PET strategies).

Reading a file: :mod:`pemma.protocol.strategy_file` (:func:`~pemma.protocol.strategy_file.load_strategy`).

Example:
    >>> from pemma.protocol.strategy_file import load_strategy
    >>> strategy = load_strategy("strategies/hecktor2022.yaml").with_overrides(preset="tiny", max_steps=20)
    >>> [p.run_key for p in strategy.plan() if p.variant == "pet_only"][-1]
    '03_update_hmr_pet_0999d89b'
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from pemma.config import build_config
from pemma.errors import PemmaError
from pemma.protocol.phases import (
    DEFAULT_VARIANT,
    OPERATIONS,
    STRATEGY_MODALITIES,
    Phase,
    PrognosisSpec,
    SplitSpec,
    StrategyError,
    canonical_centres,
    check_centres,
    check_methods,
    check_order,
    check_recipes,
    check_routes,
    check_variants,
    eval_input_sets,
    name_list,
)
from pemma.protocol.results import DEFAULT_RECIPE, DEFAULT_ROUTE
from pemma.protocol.split import split_case_ids
from pemma.runtime import valid_workers
from pemma.vocab import (
    BACKBONES,
    CT_ROUTES,
    EVAL_INPUTS,
    HECKTOR_CENTRES,
    METHODS,
    PEMMA_METHODS,
    canonical_method,
    method_choices,
)

__all__ = ["DEFAULT_VARIANT", "EVAL_INPUTS", "HECKTOR_CENTRES", "METHODS", "OPERATIONS", "Phase",
           "PlannedPhase", "SplitSpec", "Strategy", "StrategyError", "split_case_ids"]

@dataclass(frozen=True)
class PlannedPhase:
    """A phase of one variant, with the key that identifies its whole training history.

    ``run_key`` (e.g. ``"02_update_hgj_pet_1a2b3c4d"``) is equal for two variants exactly when this phase
    and every phase before it are equal, so it names a reusable run folder. ``parent_key`` is the key of
    the previous phase (None for the first). ``eval_centres`` are the centres seen up to this phase.
    """

    variant: str
    index: int
    phase: Phase
    run_key: str
    parent_key: str | None
    eval_centres: tuple[str, ...]


def _key(chain: Sequence[Phase]) -> str:
    last = chain[-1]
    blob = json.dumps([[p.name, p.operation, list(p.centres), list(p.modalities)] + ([p.epochs] if p.epochs else [])
                       for p in chain])
    digest = hashlib.sha1(blob.encode()).hexdigest()[:8]
    return f"{len(chain) - 1:02d}_{last.name}_{last.inputs.replace('+', '-')}_{digest}"


def _available_presets() -> list[str]:
    files = resources.files("pemma") / "presets"
    return sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".yaml"))


#: where :meth:`Strategy.with_overrides`' changes come from, for its error messages
_OVERRIDE_SOURCES = {"backbones": "--backbone", "preset": "--preset", "max_steps": "--max-steps", "amp": "--amp",
                     "workers": "--workers", "variants": "--variant", "dataset_centres": "the dataset's centres",
                     "routes": "--ct-route", "recipes": "--recipe", "split": "--seed"}


@dataclass(frozen=True)
class Strategy:
    """A validated protocol. Build it with :func:`load_strategy` or :func:`parse_strategy`.

    ``variants`` maps a variant name to ``{phase name: {"modalities": [...], "centres": [...]}}``.
    ``dataset_centres`` (optional) widens the known centres and requires every centre to be present.
    ``source`` (the file) prefixes every error. ``routes`` / ``recipes``: the CT routes and recipes each PEMMA
    method runs with (:data:`pemma.vocab.CT_ROUTES`, :data:`pemma.vocab.RECIPES`; defaults ``exact`` / ``pemma``).
    """

    name: str
    phases: tuple[Phase, ...]
    backbones: tuple[str, ...] = ("unetr",)
    preset: str = "tiny"
    max_steps: int | None = None
    amp: bool | str = False
    workers: int | str = 1
    split: SplitSpec = field(default_factory=SplitSpec)
    methods: tuple[str, ...] = METHODS
    variants: Mapping[str, Mapping[str, Mapping[str, Any]]] = field(default_factory=dict)
    dataset_centres: tuple[str, ...] | None = None
    source: str = "<strategy>"
    prognosis: PrognosisSpec | None = None
    routes: tuple[str, ...] | Mapping[str, tuple[str, ...]] = (DEFAULT_ROUTE,)
    recipes: tuple[str, ...] | Mapping[str, tuple[str, ...]] = (DEFAULT_RECIPE,)

    def __post_init__(self) -> None:
        try:
            self._validate()
        except StrategyError as exc:
            raise StrategyError(f"{self.source}: {exc}") from None

    def _validate(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise StrategyError(f"name must be a non-empty string, got {self.name!r}")
        for b in name_list(self.backbones, "backbones"):
            if b not in BACKBONES:
                raise StrategyError(f"unknown backbone {b!r} (known: {', '.join(BACKBONES)})")
        for m in name_list(self.methods, "methods"):
            if m not in method_choices():
                raise StrategyError(f"unknown method {m!r} (known: {', '.join(METHODS)})")
        object.__setattr__(self, "recipes", check_recipes(self.recipes))
        object.__setattr__(self, "routes", check_routes(self.routes))
        if self.preset not in _available_presets():
            raise StrategyError(f"unknown preset {self.preset!r} (known: {', '.join(_available_presets())})")
        if self.max_steps is not None and (isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int)
                                           or self.max_steps < 1):
            raise StrategyError(f"max_steps must be null or an integer >= 1, got {self.max_steps!r}")
        if not (isinstance(self.amp, bool) or self.amp == "auto"):
            raise StrategyError(f"amp must be true, false or auto, got {self.amp!r}")
        if not valid_workers(self.workers):
            raise StrategyError(f"workers must be an integer >= 1 or auto, got {self.workers!r}")
        if not self.phases:
            raise StrategyError("phases must list at least one phase")
        dataset, known = self._known()
        object.__setattr__(self, "backbones", tuple(dict.fromkeys(name_list(self.backbones, "backbones"))))
        methods = (canonical_method(m) for m in name_list(self.methods, "methods"))
        object.__setattr__(self, "methods", tuple(dict.fromkeys(methods)))
        object.__setattr__(self, "phases", check_centres(tuple(self.phases), known, dataset, ""))
        check_order(self.phases, "")
        check_methods(self.phases, self.methods, "")
        for variant in check_variants(self.variants, self.phases):
            where = f"variant {variant!r}"
            expanded = check_centres(self._expand(variant), known, dataset, f"{where}, ")
            check_order(expanded, f"{where}, ")
            check_methods(expanded, self.methods, f"{where}, ")
        self._check_configs()
        if self.prognosis is not None and self.prognosis.centres:
            centres = canonical_centres(self.prognosis.centres, known, dataset, "prognosis")
            object.__setattr__(self, "prognosis", dataclasses.replace(self.prognosis, centres=centres))

    def _check_configs(self) -> None:
        """Every backbone must build a valid run config with the preset (e.g. ROI sizes it accepts)."""
        for backbone in self.backbones:
            try:
                build_config(self.preset, overrides={"model": {"backbone": backbone},
                                                     "train": {"max_steps": self.max_steps}})
            except PemmaError as exc:
                raise StrategyError(f"backbone {backbone!r} with preset {self.preset!r}: {exc}") from None

    def routes_of(self, method: str) -> tuple[str, ...]:
        """The CT routes ``method`` runs with (``routes`` as a list: every PEMMA method; as a mapping: per method,
        ``exact`` for a PEMMA method it does not list)."""
        if isinstance(self.routes, Mapping):
            return tuple(self.routes.get(method, (DEFAULT_ROUTE,)))
        return tuple(self.routes)

    @property
    def all_routes(self) -> tuple[str, ...]:
        """Every route some PEMMA method of the strategy runs with, in :data:`pemma.vocab.CT_ROUTES` order."""
        used = {r for m in self.methods if m in PEMMA_METHODS for r in self.routes_of(m)}
        return tuple(r for r in CT_ROUTES if r in used) or (DEFAULT_ROUTE,)

    def recipes_of(self, route: str) -> tuple[str, ...]:
        """The recipes the PEMMA methods run with on CT route ``route`` (``recipes`` as a list: every route; as a
        mapping: per route, ``pemma`` for a route it does not list)."""
        if isinstance(self.recipes, Mapping):
            return tuple(self.recipes.get(route, (DEFAULT_RECIPE,)))
        return tuple(self.recipes)

    @property
    def pairs(self) -> tuple[tuple[str, str], ...]:
        """Every (route, recipe) some PEMMA method of the strategy runs with: each of :attr:`all_routes` with its
        :meth:`recipes_of`."""
        return tuple((route, recipe) for route in self.all_routes for recipe in self.recipes_of(route))

    @property
    def modalities(self) -> tuple[str, ...]:
        """Every modality some phase of some variant names, in channel order (``("ct", "pet")`` for the shipped
        strategies)."""
        used = {m for v in self.variant_names for p in self.variant_phases(v) for m in p.modalities}
        return tuple(m for m in STRATEGY_MODALITIES if m in used)

    @property
    def eval_input_sets(self) -> tuple[tuple[str, ...], ...]:
        """The input sets every centre is evaluated with: every subset of :attr:`modalities`, smaller first (ct, pet,
        ct+pet for a CT+PET strategy, as :data:`pemma.vocab.EVAL_INPUT_SETS`)."""
        return eval_input_sets(self.modalities)

    @property
    def prognosis_centres(self) -> tuple[str, ...]:
        """The centres of the prognosis experiment (every centre of the phases when not listed)."""
        if self.prognosis is None:
            return ()
        return self.prognosis.centres or tuple(dict.fromkeys(c for p in self.plan() for c in p.phase.centres))

    def _known(self) -> tuple[set[str] | None, dict[str, str]]:
        dataset = set(self.dataset_centres) if self.dataset_centres is not None else None
        return dataset, {c.upper(): c for c in (*HECKTOR_CENTRES, *sorted(dataset or ()))}

    def _require_variant(self, variant: str) -> None:
        if variant not in self.variant_names:
            known = ", ".join(self.variant_names)
            raise StrategyError(f"{self.source}: unknown variant {variant!r} (known: {known})")

    def _expand(self, variant: str) -> tuple[Phase, ...]:
        overrides = self.variants.get(variant) or {}
        out = []
        for phase in self.phases:
            change = dict(overrides.get(phase.name) or {})
            try:
                out.append(dataclasses.replace(phase, **change) if change else phase)
            except StrategyError as exc:
                raise StrategyError(f"variant {variant!r}, {exc}") from None
        return tuple(out)

    @property
    def variant_names(self) -> tuple[str, ...]:
        """The variant names in file order (``("default",)`` when the file has no ``variants``)."""
        return tuple(self.variants) or (DEFAULT_VARIANT,)

    def variant_phases(self, variant: str) -> tuple[Phase, ...]:
        """The phases of one variant, overrides applied and centres validated.

        Example:
            >>> [p.modalities for p in strategy.variant_phases("ct_only")][-1]
            ('ct',)
        """
        self._require_variant(variant)
        if not self.variants:
            return self.phases
        dataset, known = self._known()
        return check_centres(self._expand(variant), known, dataset, f"variant {variant!r}, ")

    def plan(self) -> list[PlannedPhase]:
        """Every (variant, phase) in run order, with run keys shared where histories are identical."""
        out = []
        for variant in self.variant_names:
            phases = self.variant_phases(variant)
            parent = None
            for i in range(len(phases)):
                key = _key(phases[: i + 1])
                seen = tuple(dict.fromkeys(c for p in phases[: i + 1] for c in p.centres))
                out.append(PlannedPhase(variant, i, phases[i], key, parent, seen))
                parent = key
        return out

    def centre_learnt_at(self, variant: str) -> dict[str, int]:
        """``{centre: index of the first phase of ``variant`` that trains on it}`` (for forgetting)."""
        learnt: dict[str, int] = {}
        for i, phase in enumerate(self.variant_phases(variant)):
            for centre in phase.centres:
                learnt.setdefault(centre, i)
        return learnt

    def with_overrides(self, *, backbones: Sequence[str] | None = None, preset: str | None = None,
                       max_steps: int | None = None, variants: Sequence[str] | None = None,
                       dataset_centres: Iterable[str] | None = None, seed: int | None = None,
                       routes: Sequence[str] | None = None, recipes: Sequence[str] | None = None,
                       amp: bool | str | None = None, workers: int | str | None = None) -> Strategy:
        """A re-validated copy with command-line overrides applied (``None`` keeps the file's value).

        Args:
            backbones: e.g. ``["swin_unetr"]`` from ``--backbone``.
            preset: e.g. ``"tiny"`` from ``--preset``.
            max_steps: from ``--max-steps``.
            variants: keep only these variants, in this order.
            dataset_centres: centres found in the dataset (then every strategy centre must be among them).
            seed: the split seed (also the training seed), e.g. from ``--seed``.
            routes: the PEMMA methods' CT routes, e.g. ``["shared"]`` from ``--ct-route``.
            recipes: the PEMMA methods' recipes, e.g. ``["authors"]`` from ``--recipe``.
            amp: mixed precision, ``True``, ``False`` or ``"auto"`` (from ``--amp``).
            workers: processes for the method chains, an integer or ``"auto"`` (from ``--workers``).

        Example:
            >>> strategy.with_overrides(backbones=["swin_unetr"], max_steps=5).max_steps
            5
        """
        changes: dict[str, Any] = {}
        if backbones is not None:
            changes["backbones"] = tuple(backbones)
        if preset is not None:
            changes["preset"] = preset
        if max_steps is not None:
            changes["max_steps"] = max_steps
        if amp is not None:
            changes["amp"] = amp
        if workers is not None:
            changes["workers"] = workers
        if variants is not None:
            for variant in variants:
                self._require_variant(variant)
            changes["variants"] = {v: self.variants.get(v, {}) for v in variants} if self.variants else {}
        if dataset_centres is not None:
            changes["dataset_centres"] = tuple(sorted(set(dataset_centres)))
        if routes is not None:
            changes["routes"] = tuple(routes)
        if recipes is not None:
            changes["recipes"] = tuple(recipes)
        if seed is not None:
            changes["split"] = dataclasses.replace(self.split, seed=seed)
        try:
            return dataclasses.replace(self, **changes)
        except StrategyError as exc:  # the file is valid (it loaded): what the command line changed is not
            at_fault = [k for k in changes if not self._accepts(k, changes[k])] or list(changes)
            given = ", ".join(_OVERRIDE_SOURCES[k] for k in at_fault)
            raise StrategyError(f"{given} (over {self.source}): {str(exc).removeprefix(f'{self.source}: ')}") \
                from None

    def _accepts(self, key: str, value: Any) -> bool:
        """Whether this strategy stays valid with the one override ``key`` (to name the flag at fault)."""
        try:
            dataclasses.replace(self, **{key: value})
        except StrategyError:
            return False
        return True

    def to_dict(self) -> dict[str, Any]:
        """Plain data (YAML/JSON-ready) equal to what :func:`parse_strategy` reads back."""
        return {"name": self.name, "backbones": list(self.backbones), "preset": self.preset,
                "max_steps": self.max_steps, "amp": self.amp, "workers": self.workers,
                "split": dataclasses.asdict(self.split), "methods": list(self.methods),
                "routes": ({m: list(r) for m, r in self.routes.items()} if isinstance(self.routes, Mapping)
                           else list(self.routes)),
                "recipes": ({r: list(n) for r, n in self.recipes.items()} if isinstance(self.recipes, Mapping)
                            else list(self.recipes)),
                "phases": [{"name": p.name, "operation": p.operation, "centres": list(p.centres),
                            "modalities": list(p.modalities), **({"epochs": p.epochs} if p.epochs else {})}
                           for p in self.phases],
                "variants": {k: {n: dict(c) for n, c in (v or {}).items()} for k, v in self.variants.items()},
                **({"prognosis": self.prognosis.to_dict()} if self.prognosis else {})}
