"""Recipes: named sets of adaptation defaults, shipped as YAML with the package (``pemma/recipes/<name>.yaml``).

A recipe has one section per backbone whose keys are :class:`~pemma.adapters.config.AdapterConfig` fields.
``pemma`` holds pemma's own defaults; ``authors`` the configuration of the PEMMA authors' released code
(arXiv 2504.13645; see the project's method notes). Precedence: AdapterConfig defaults < recipe < explicit values.

Example:
    >>> cfg = recipe_config("authors", "unetr", method="lora", overrides={"rank": 8})
    >>> cfg.target_modules, cfg.rank, cfg.recipe
    (('attn.qkv.q', 'attn.qkv.v'), 8, 'authors')
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from importlib import resources
from typing import Any

import yaml

from pemma.adapters.config import AdapterConfig
from pemma.vocab import BACKBONES, RECIPES

#: AdapterConfig fields a recipe may not set (the method comes from ``--method``, the name from the file)
_NOT_IN_RECIPE = ("method", "recipe")


def recipe_values(name: str | None, backbone: str) -> dict[str, Any]:
    """The AdapterConfig values of recipe ``name`` (None: ``pemma``) for ``backbone``, lists as tuples.

    Raises:
        ValueError: unknown recipe or backbone, or a recipe file with a missing section or an unknown key.
    """
    name = "pemma" if name is None else name
    if name not in RECIPES:
        raise ValueError(f"recipe must be one of {list(RECIPES)}, got {name!r}")
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {list(BACKBONES)}, got {backbone!r}")
    path = resources.files("pemma") / "recipes" / f"{name}.yaml"
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get(backbone), dict):
        raise ValueError(f"recipe file {name}.yaml has no section for backbone {backbone!r}")
    known = {f.name for f in dataclasses.fields(AdapterConfig)} - set(_NOT_IN_RECIPE)
    unknown = sorted(set(data[backbone]) - known)
    if unknown:
        raise ValueError(f"recipe file {name}.yaml, section {backbone}: unknown keys {unknown}; known {sorted(known)}")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in data[backbone].items()}


def recipe_config(name: str | None, backbone: str, method: str = "lora",
                  overrides: Mapping[str, Any] | None = None) -> AdapterConfig:
    """An :class:`AdapterConfig` from recipe ``name`` (None: ``pemma``) for ``backbone``, with ``overrides``
    (explicitly given values; None values count as not given) on top; it records the recipe's name.

    Args:
        name: a recipe of :data:`pemma.vocab.RECIPES`, or None for ``pemma``.
        backbone: ``unetr`` or ``swin_unetr``.
        method: ``lora`` or ``dora``.
        overrides: AdapterConfig fields given by the user (flags / keyword arguments).
    """
    values = recipe_values(name, backbone)
    given = {k: v for k, v in dict(overrides or {}).items() if v is not None}
    bad = sorted(set(given) & set(_NOT_IN_RECIPE))
    if bad:
        raise ValueError(f"{bad} cannot be overridden here (use the method / recipe arguments)")
    return AdapterConfig(method=method, recipe="pemma" if name is None else name, **{**values, **given})
