"""The method registry: each way of adding PET to a CT model, and each kind of run folder, registered once.

Modelled on peft's ``register_peft_method``: a method module (``pemma/methods/<name>.py``) calls
:func:`register_method` for what it trains from a CT base (``pemma adapt --method NAME``, strategy files) and
:func:`register_kind` for the run folders it writes (how they load, update and report). Everything else
(``load_model``, ``adapt``, ``update``, ``pemma params``, ``pemma reproduce``) looks them up here, so adding a
method is one new file, its name in :data:`pemma.vocab.METHODS` (the torch-free vocabulary that the CLI's choices,
strategy files and configs are checked against before any model code is imported), and its tests.

Example:
    >>> get_method("early-fusion").name, get_method("early-fusion").kind
    ('early_fusion', 'backbone')
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from pemma.config import RunConfig
from pemma.errors import PemmaError
from pemma.vocab import METHODS, canonical_method

if TYPE_CHECKING:
    from pemma.adapters.config import AdapterConfig
    from pemma.methods.adaptation import AdaptationSetup
    from pemma.models.loaded import LoadedModel
    from pemma.training.loop import TrainingTask


@dataclass(frozen=True)
class RunKind:
    """How finished run folders of one kind (``model.json`` ``kind``) are rebuilt, updated and reported.

    Args:
        name: the kind, one of :data:`pemma.vocab.RUN_KINDS`.
        load: ``(run_dir, meta, config, base_run) -> network``; ``base_run`` overrides a recorded base path.
        input_sets: ``meta -> [[modalities], ...]`` the run accepts, the first being what it was trained on.
        update: ``(loaded, run_dir, modalities, cfg) -> TrainingTask`` for ``pemma update``; None = not updatable.
        report: ``loaded -> {field: value}`` for ``pemma params`` (trainable, total, early_fusion, ...).
    """

    name: str
    load: Callable[[Path, dict[str, Any], RunConfig, Path | None], nn.Module]
    input_sets: Callable[[dict[str, Any]], list[list[str]]]
    update: Callable[[LoadedModel, Path, tuple[str, ...], RunConfig], TrainingTask] | None = None
    report: Callable[[LoadedModel], dict[str, Any]] | None = None


@dataclass(frozen=True)
class Method:
    """A method that trains a CT+PET model from a CT base run (``pemma adapt``, strategy ``methods:``).

    Args:
        name: canonical name (:data:`pemma.vocab.METHODS`).
        kind: the run kind it writes.
        description: one line for logs and ``--help``.
        build: ``(setup, adapter_cfg) -> TrainingTask``; ``adapter_cfg`` is the user's adapter settings or None.
        finish: ``(setup, out_dir, summary) -> summary`` run on the main process after training (e.g. late
            fusion's validation search for its logit weight). Default None.
    """

    name: str
    kind: str
    description: str
    build: Callable[[AdaptationSetup, AdapterConfig | None], TrainingTask]
    finish: Callable[[AdaptationSetup, Path, dict[str, Any]], dict[str, Any]] | None = None


_KINDS: dict[str, RunKind] = {}
_METHODS: dict[str, Method] = {}


def register_kind(kind: RunKind) -> RunKind:
    """Register a run kind (once; a second registration of the name is a bug)."""
    if kind.name in _KINDS:
        raise ValueError(f"run kind {kind.name!r} is registered twice")
    _KINDS[kind.name] = kind
    return kind


def register_method(method: Method) -> Method:
    """Register a method under its canonical name (once)."""
    if method.name != canonical_method(method.name):
        raise ValueError(f"register {method.name!r} under its canonical name {canonical_method(method.name)!r}")
    if method.name in _METHODS:
        raise ValueError(f"method {method.name!r} is registered twice")
    _METHODS[method.name] = method
    return method


def get_kind(name: str, source: str = "") -> RunKind:
    """The registered run kind ``name``; a :class:`PemmaError` naming ``source`` when unknown."""
    try:
        return _KINDS[name]
    except KeyError:
        raise PemmaError(f"{source or 'run'}: unsupported model kind {name!r} "
                         f"(known: {', '.join(_KINDS)})") from None


def get_method(name: str) -> Method:
    """The registered method for a canonical name or alias (``lora``, ``early-fusion``, ...)."""
    try:
        return _METHODS[canonical_method(name)]
    except (ValueError, KeyError):
        raise PemmaError(f"unknown method {name!r}; known: {', '.join(_METHODS)}") from None


def registered_methods() -> tuple[str, ...]:
    """Canonical names of the registered methods, in vocabulary order (:func:`register_method` takes only names
    of :data:`pemma.vocab.METHODS`)."""
    return tuple(m for m in METHODS if m in _METHODS)


def registered_kinds() -> tuple[str, ...]:
    """Names of the registered run kinds."""
    return tuple(_KINDS)
