"""Routes and recipes in the protocol: which (CT route, recipe) pairs each method runs with, where their runs live,
and how they reach :func:`pemma.methods.adapt` / :func:`pemma.methods.update`.

The PEMMA methods run once per pair of the strategy's ``routes`` and each route's ``recipes``
(:data:`pemma.vocab.CT_ROUTES`, :data:`pemma.vocab.RECIPES`; :meth:`~pemma.protocol.strategy.Strategy.recipes_of`);
the baselines (early fusion, late fusion, full fine-tuning) have neither and run once, with ``route`` and ``recipe``
left empty in the results. The default pair (``exact``, ``pemma``) keeps the run folder of a method as it always
was (``runs/<backbone>/<method>/<key>``), so old result folders resume; any other pair gets
``runs/<backbone>/<method>_<route>_<recipe>/<key>``.

Only what differs from the defaults is passed on: a non-default pair becomes the ``adapter_cfg`` of
:func:`pemma.methods.adapt`, resolved from the recipe (:func:`pemma.adapters.recipes.recipe_config`) with the pair's
route on top; updates inherit both from the run they continue.

Example:
    >>> pairs(load_strategy("demo"), "pemma_lora")  # routes {pemma_lora: [exact, shared]}, recipes per route
    [('exact', 'pemma'), ('shared', 'authors')]
    >>> method_folder("pemma_lora", "shared", "pemma")
    'pemma_lora_shared_pemma'
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from pemma.adapters.recipes import recipe_config
from pemma.errors import PemmaError
from pemma.protocol.results import DEFAULT_RECIPE, DEFAULT_ROUTE
from pemma.vocab import PEMMA_METHODS


def pairs(strategy: Any, method: str) -> list[tuple[str, str]]:
    """The (route, recipe) pairs ``method`` runs with: each of its routes with that route's recipes for PEMMA methods,
    ``[("", "")]`` for the baselines.

    Args:
        strategy: a :class:`~pemma.protocol.strategy.Strategy` (its ``routes_of(method)`` and ``recipes_of(route)``).
        method: a canonical method name.
    """
    if method not in PEMMA_METHODS:
        return [("", "")]
    return [(route, recipe) for route in strategy.routes_of(method) for recipe in strategy.recipes_of(route)]


def method_folder(method: str, route: str, recipe: str) -> str:
    """The run-folder name of a method with a route and a recipe (the method alone for the defaults / baselines)."""
    if (route or DEFAULT_ROUTE, recipe or DEFAULT_RECIPE) == (DEFAULT_ROUTE, DEFAULT_RECIPE):
        return method
    return f"{method}_{route}_{recipe}"


def _takes(function: Callable[..., Any], name: str) -> bool:
    return name in inspect.signature(function).parameters


def adapt_kwargs(method: str, route: str, recipe: str, backbone: str, where: str) -> dict[str, Any]:
    """Keyword arguments for :func:`pemma.methods.adapt` that carry a non-default route / recipe.

    The recipe is resolved here (:func:`pemma.adapters.recipes.recipe_config`) into the ``adapter_cfg`` the run
    trains with, and the pair's route is always given explicitly on top of it, so ``(exact, authors)`` runs the
    authors' recipe on the exact route (the recipe alone would choose ``shared``).

    Args:
        method: the method (baselines get nothing).
        route, recipe: the pair of this run.
        backbone: the backbone the recipe is resolved for.
        where: prefix of the error (the strategy file).

    Raises:
        PemmaError: the recipe cannot be resolved for this backbone / method (one line).
    """
    if method not in PEMMA_METHODS:
        return {}
    route = route or DEFAULT_ROUTE
    recipe = recipe or DEFAULT_RECIPE
    if (route, recipe) == (DEFAULT_ROUTE, DEFAULT_RECIPE):
        return {}
    try:
        config = recipe_config(recipe, backbone, PEMMA_METHODS[method], {"ct_route": route})
    except ValueError as exc:
        raise PemmaError(f"{where}: recipe {recipe!r} with route {route!r} for {method} on {backbone}: {exc}") \
            from None
    return {"adapter_cfg": config}


def update_kwargs(update: Callable[..., Any], method: str, route: str, recipe: str) -> dict[str, Any]:
    """Keyword arguments for ``update`` (:func:`pemma.methods.update`): a non-default route / recipe where it takes
    them (otherwise the updated run inherits both from the run it continues)."""
    if method not in PEMMA_METHODS:
        return {}
    given = {"ct_route": route if route and route != DEFAULT_ROUTE else None,
             "recipe": recipe if recipe and recipe != DEFAULT_RECIPE else None}
    return {k: v for k, v in given.items() if v is not None and _takes(update, k)}
