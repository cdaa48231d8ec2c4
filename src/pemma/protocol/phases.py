"""Strategy building blocks: names the protocol knows, the phase and split records, and the order rules.

Everything here raises :class:`StrategyError` with a message that names the phase; :mod:`pemma.protocol.strategy`
prefixes the file. See that module for the YAML format.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pemma.errors import PemmaError
from pemma.modalities import default_registry
from pemma.vocab import (
    ADAPTER_TYPES,
    CT_ROUTES,
    MODALITY_ALIASES,
    PEMMA_METHODS,
    PET_ONLY_METHODS,
    RECIPES,
    SURVIVAL_HEADS,
    adapter_type,
)

#: the modalities a strategy can name, in channel order: CT, PET and the catalogue's (MR, dose; pemma.modalities)
STRATEGY_MODALITIES: tuple[str, ...] = tuple(default_registry())

OPERATIONS: tuple[str, ...] = ("pretrain", "adapt", "update")
DEFAULT_VARIANT = "default"

TOP_KEYS = ("name", "backbones", "preset", "max_steps", "amp", "workers", "split", "methods", "routes", "recipes",
            "phases", "variants", "prognosis")
PHASE_KEYS = ("name", "operation", "centres", "modalities")
#: optional per-phase keys: ``epochs`` overrides the preset's number of epochs for that phase
OPTIONAL_PHASE_KEYS = ("epochs",)
OVERRIDE_KEYS = ("centres", "modalities")
SPLIT_KEYS = ("val_fraction", "test_fraction", "seed")
PROGNOSIS_KEYS = ("centres", "methods", "head", "epochs", "l2", "adapters_from_segmentation", "train_adapters",
                  "segmentation_route", "segmentation_recipe")
#: prognosis stages name the adapter type (``lora``, ``dora``); ``pemma_lora`` / ``pemma_dora`` are accepted
PROGNOSIS_METHODS: tuple[str, ...] = ADAPTER_TYPES
PROGNOSIS_HEADS: tuple[str, ...] = SURVIVAL_HEADS


class StrategyError(PemmaError):
    """An invalid strategy file; the message is one line naming the file and the phase."""


def name_list(value: Any, what: str) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items or not all(isinstance(v, str) and v.strip() for v in items):
        raise StrategyError(f"{what} must be a non-empty list of names, got {value!r}")
    return [v.strip() for v in items]


def names_in(value: Any, known: Sequence[str], what: str) -> tuple[str, ...]:
    """A non-empty list of names, duplicates dropped, each one of ``known`` (e.g. routes, recipes)."""
    names = tuple(dict.fromkeys(name_list(value, what)))
    for name in names:
        if name not in known:
            raise StrategyError(f"{what}: unknown name {name!r} (known: {', '.join(known)})")
    return names


def check_keys(raw: Any, allowed: Sequence[str], where: str) -> None:
    if not isinstance(raw, Mapping):
        raise StrategyError(f"{where} must be a mapping, got {type(raw).__name__}")
    unknown = sorted(str(k) for k in raw if k not in allowed)
    if unknown:
        raise StrategyError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(allowed)})")


def names_per_key(value: Any, known: Sequence[str], what: str, keys: Sequence[str], not_a_key: str,
                  ) -> tuple[str, ...] | dict[str, tuple[str, ...]]:
    """A list of names (each one of ``known``), or ``{key: names}`` with each key one of ``keys``; an unknown key
    raises ``"<what>: <key> is not <not_a_key>"``."""
    if not isinstance(value, Mapping):
        return names_in(value, known, what)
    checked = {}
    for key, names in value.items():
        if not isinstance(key, str) or key.strip() not in keys:
            raise StrategyError(f"{what}: {key!r} is not {not_a_key}")
        checked[key.strip()] = names_in(names, known, f"{what} of {key.strip()}")
    return checked


def check_routes(routes: Any) -> tuple[str, ...] | dict[str, tuple[str, ...]]:
    """A strategy's ``routes``: a list of CT routes for every PEMMA method, or ``{PEMMA method: routes}``."""
    return names_per_key(routes, CT_ROUTES, "routes", tuple(PEMMA_METHODS),
                         f"a PEMMA method (routes per method name {', '.join(PEMMA_METHODS)}; the baselines have no "
                         "route)")


def check_recipes(recipes: Any) -> tuple[str, ...] | dict[str, tuple[str, ...]]:
    """A strategy's ``recipes``: a list of recipes for every CT route, or ``{CT route: recipes}`` (e.g. the paper's
    recipe on the paper's route only: ``{exact: [pemma], shared: [authors]}``)."""
    return names_per_key(recipes, RECIPES, "recipes", CT_ROUTES, f"a CT route (recipes per route name "
                                                                  f"{', '.join(CT_ROUTES)})")


def check_variants(variants: Any, phases: Sequence[Phase]) -> list[str]:
    """The variant names of ``variants`` (``{variant: {phase name: {centres / modalities}}}``), each entry checked
    for its shape and keys; expanding and checking each variant's phases is the strategy's."""
    if not isinstance(variants, Mapping):
        raise StrategyError("variants must map a variant name to phase overrides")
    names = [p.name for p in phases]
    for variant, overrides in variants.items():
        where = f"variant {variant!r}"
        if not isinstance(variant, str) or not variant.strip() or "/" in variant:
            raise StrategyError(f"{where}: name must be a non-empty string without '/'")
        if overrides is not None and not isinstance(overrides, Mapping):
            raise StrategyError(f"{where} must map phase names to changed fields ({{}} for none), got {overrides!r}")
        check_keys(overrides or {}, names, f"{where} (phase names)")
        for phase_name, change in (overrides or {}).items():
            check_keys(change or {}, OVERRIDE_KEYS, f"{where}, phase {phase_name!r}")
    return list(variants)


@dataclass(frozen=True)
class SplitSpec:
    """Seeded per-centre split: ``test_fraction`` held out first, then ``val_fraction`` of the rest."""

    val_fraction: float = 0.2
    test_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise StrategyError(f"split: {name} must be a number in [0, 1), got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise StrategyError(f"split: seed must be an integer >= 0, got {self.seed!r}")


@dataclass(frozen=True)
class Phase:
    """One training phase: ``operation`` on ``centres`` with ``modalities`` (kept in :data:`STRATEGY_MODALITIES`
    order)."""

    name: str
    operation: str
    centres: tuple[str, ...]
    modalities: tuple[str, ...]
    epochs: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip() or "/" in self.name:
            raise StrategyError(f"phase {self.name!r}: name must be a non-empty string without '/'")
        where = f"phase {self.name!r}"
        if self.operation not in OPERATIONS:
            raise StrategyError(f"{where}: unknown operation {self.operation!r} (known: {', '.join(OPERATIONS)})")
        centres = name_list(self.centres, f"{where}: centres")
        if len(set(centres)) != len(centres):
            raise StrategyError(f"{where}: centres listed twice in {centres}")
        mods = [MODALITY_ALIASES.get(m.lower(), m.lower()) for m in name_list(self.modalities, f"{where}: modalities")]
        for mod in mods:
            if mod not in STRATEGY_MODALITIES:
                raise StrategyError(f"{where}: unknown modality {mod!r} (known: {', '.join(STRATEGY_MODALITIES)})")
        if self.epochs is not None and (isinstance(self.epochs, bool) or not isinstance(self.epochs, int)
                                        or self.epochs < 1):
            raise StrategyError(f"{where}: epochs must be a positive integer, got {self.epochs!r}")
        object.__setattr__(self, "centres", tuple(centres))
        object.__setattr__(self, "modalities", tuple(m for m in STRATEGY_MODALITIES if m in mods))

    @property
    def inputs(self) -> str:
        """The modalities as one input-set name: ``"ct"``, ``"pet"``, ``"ct+pet"``, ``"ct+pet+mr"`` ..."""
        return "+".join(self.modalities)


def check_order(phases: Sequence[Phase], where: str) -> None:
    seen_names: set[str] = set()
    seen_mods: set[str] = set()
    adapted = False
    for i, phase in enumerate(phases):
        at = f"{where}phase {phase.name!r} (#{i + 1})"
        if phase.name in seen_names:
            raise StrategyError(f"{at}: duplicate phase name")
        seen_names.add(phase.name)
        if i == 0 and phase.operation != "pretrain":
            raise StrategyError(f"{at}: the first phase must be 'pretrain' (a CT base model), got {phase.operation!r}")
        if phase.operation == "pretrain":
            if i > 0:
                raise StrategyError(f"{at}: 'pretrain' must be the first phase only")
            if phase.modalities != ("ct",):
                raise StrategyError(f"{at}: 'pretrain' trains the CT base model, so modalities must be [ct]")
        elif phase.operation == "adapt":
            new = [m for m in phase.modalities if m not in seen_mods]
            if not new:
                raise StrategyError(f"{at}: 'adapt' must add a modality not seen before "
                                    f"(seen: {', '.join(sorted(seen_mods))})")
            if len(new) > 1:
                raise StrategyError(f"{at}: 'adapt' adds one modality at a time, got {', '.join(new)}")
            if adapted and set(phase.modalities) != seen_mods | set(new):
                raise StrategyError(f"{at}: a second 'adapt' stacks {new[0]} on the adapted model, so its modalities "
                                    f"must be every modality seen so far ({', '.join(sorted(seen_mods))}) and {new[0]}")
            adapted = True
        elif not adapted:
            raise StrategyError(f"{at}: 'update' needs an 'adapt' phase before it")
        else:
            new = [m for m in phase.modalities if m not in seen_mods]
            if new:
                raise StrategyError(f"{at}: 'update' uses {new[0]!r}, which no earlier phase added; use 'adapt'")
        seen_mods.update(phase.modalities)


def check_methods(phases: Sequence[Phase], methods: Sequence[str], where: str) -> None:
    """The methods can run the phases: a second ``adapt`` (a stacked modality) needs a PEMMA method and is not
    followed by an ``update`` (a stacked run is not updated); late fusion adds PET only."""
    adapts = [p for p in phases if p.operation == "adapt"]
    if len(adapts) > 1:
        late = [p for p in phases[phases.index(adapts[1]):] if p.operation == "update"]
        if late:
            raise StrategyError(f"{where}phase {late[0].name!r}: 'update' after a stacked modality (phase "
                                f"{adapts[1].name!r}) is not supported; stack the modality after the updates")
    for i, phase in enumerate(adapts):
        at = f"{where}phase {phase.name!r}"
        if i > 0:
            others = [m for m in methods if m not in PEMMA_METHODS]
            if others:
                raise StrategyError(f"{at}: a second 'adapt' stacks a modality on the adapted model, which only the "
                                    f"PEMMA methods ({', '.join(PEMMA_METHODS)}) do; remove {', '.join(others)}")
        added = [m for m in phase.modalities if m != "ct"][-1:]
        pet_only = [m for m in methods if m in PET_ONLY_METHODS]
        if pet_only and added and added != ["pet"]:
            raise StrategyError(f"{at}: {', '.join(pet_only)} adds pet only, not {added[0]}; remove it from methods")


def eval_input_sets(modalities: Sequence[str]) -> tuple[tuple[str, ...], ...]:
    """The input sets a strategy evaluates: every non-empty subset of its modalities, smaller sets first, in channel
    order (for CT and PET: :data:`pemma.vocab.EVAL_INPUT_SETS`, ct, pet, ct+pet)."""
    mods = tuple(m for m in STRATEGY_MODALITIES if m in modalities)
    return tuple(s for n in range(1, len(mods) + 1) for s in itertools.combinations(mods, n))


def canonical_centres(centres: Sequence[str], known: Mapping[str, str], dataset: set[str] | None,
                      at: str) -> tuple[str, ...]:
    """The centres in their known spelling; unknown ones, or ones absent from ``dataset``, raise."""
    out = []
    for centre in centres:
        canonical = known.get(centre.upper())
        if canonical is None:
            names = ", ".join(dict.fromkeys(known.values()))
            raise StrategyError(f"{at}: unknown centre {centre!r} (known: {names})")
        if dataset is not None and canonical not in dataset:
            raise StrategyError(f"{at}: centre {canonical!r} has no cases in the dataset "
                                f"(found: {', '.join(sorted(dataset)) or 'none'})")
        out.append(canonical)
    return tuple(out)


def check_centres(phases: Sequence[Phase], known: Mapping[str, str], dataset: set[str] | None,
                  where: str) -> tuple[Phase, ...]:
    return tuple(dataclasses.replace(phase, centres=canonical_centres(phase.centres, known, dataset,
                                                                        f"{where}phase {phase.name!r} (#{i + 1})"))
                 for i, phase in enumerate(phases))


@dataclass(frozen=True)
class PrognosisSpec:
    """The prognosis experiment of a strategy: CT -> CT+PET -> CT+PET+EHR on the pretrained CT model.

    Args:
        centres: centres whose cases are used (the strategy's split: training cases train, validation and
            test cases are held out and evaluated). Empty = every centre of the phases. Default empty.
        methods: adapter methods, each a chain of its own ("lora", "dora"). Default both.
        head: survival head, "mtlr" or "cox". Default "mtlr".
        epochs: epochs per stage; None = the preset's. Default None.
        l2: weight penalty of the head and the clinical projection (``pemma survival train|adapt --l2``); None =
            chosen by inner cross-validation on the training cases of each stage. Default None.
        adapters_from_segmentation: the +PET stage starts from the adapters and PET pathway of the strategy's
            PEMMA segmentation run of the same method (its ``adapt`` phase), when the strategy has one.
            Default True.
        train_adapters: whether stages whose adapters already exist (+PET started from segmentation, +EHR)
            train them too (True), or only the head and clinical projection on image features computed once
            (False, much faster). Default True.
        segmentation_route, segmentation_recipe: which of the method's segmentation runs starts +PET when the
            strategy runs several (CT routes × recipes): the first run with this route and recipe (None: any).
            Default None, None: the method's first (route, recipe). A pair the run does not train (narrowed by
            ``--ct-route`` / ``--recipe``) falls back to the first, and the log says so.
    """

    centres: tuple[str, ...] = ()
    methods: tuple[str, ...] = PROGNOSIS_METHODS
    head: str = "mtlr"
    epochs: int | None = None
    l2: float | None = None
    adapters_from_segmentation: bool = True
    train_adapters: bool = True
    segmentation_route: str | None = None
    segmentation_recipe: str | None = None

    def __post_init__(self) -> None:
        where = "prognosis"
        for name, choices in (("segmentation_route", CT_ROUTES), ("segmentation_recipe", RECIPES)):
            if getattr(self, name) is not None and getattr(self, name) not in choices:
                raise StrategyError(f"{where}: {name} must be null or one of {', '.join(choices)}, got "
                                    f"{getattr(self, name)!r}")
        centres = () if not self.centres else tuple(name_list(self.centres, f"{where}: centres"))
        try:  # the adapter types; pemma_lora / pemma_dora accepted
            methods = tuple(dict.fromkeys(adapter_type(m) for m in name_list(self.methods, f"{where}: methods")))
        except ValueError as exc:
            raise StrategyError(f"{where}: {exc}") from None
        if self.head not in PROGNOSIS_HEADS:
            raise StrategyError(f"{where}: unknown head {self.head!r} (known: {', '.join(PROGNOSIS_HEADS)})")
        if self.epochs is not None and (isinstance(self.epochs, bool) or not isinstance(self.epochs, int)
                                        or self.epochs < 1):
            raise StrategyError(f"{where}: epochs must be null or a positive integer, got {self.epochs!r}")
        if self.l2 is not None:
            if isinstance(self.l2, bool) or not isinstance(self.l2, (int, float)) or not self.l2 >= 0:
                raise StrategyError(f"{where}: l2 must be null or a number >= 0, got {self.l2!r}")
            object.__setattr__(self, "l2", float(self.l2))
        for name in ("adapters_from_segmentation", "train_adapters"):
            if not isinstance(getattr(self, name), bool):
                raise StrategyError(f"{where}: {name} must be true or false, got {getattr(self, name)!r}")
        object.__setattr__(self, "centres", centres)
        object.__setattr__(self, "methods", methods)

    @classmethod
    def parse(cls, raw: Any) -> PrognosisSpec | None:
        """From the YAML mapping (None when absent)."""
        if raw is None:
            return None
        check_keys(raw, PROGNOSIS_KEYS, "prognosis")
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in raw.items()})

    def digest(self, started: Mapping[str, str] | None = None) -> str:
        """8 hex characters naming these settings and the image features (the runner's prognosis folder), so
        changed settings retrain; ``started``: ``{method: segmentation run folder}`` of the methods whose +PET
        starts from another run than their default one (none: the digest these settings always had)."""
        from pemma.survival.model import FEATURES

        blob = json.dumps({**self.to_dict(), "features": FEATURES, **({"started": dict(started)} if started else {})},
                          sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:8]

    def to_dict(self) -> dict[str, Any]:
        return {"centres": list(self.centres), "methods": list(self.methods), "head": self.head,
                "epochs": self.epochs, "l2": self.l2, "adapters_from_segmentation": self.adapters_from_segmentation,
                "train_adapters": self.train_adapters,
                # only when chosen: the digest (the prognosis folder) of strategies that do not choose stays
                **{k: getattr(self, k) for k in ("segmentation_route", "segmentation_recipe")
                   if getattr(self, k) is not None}}
