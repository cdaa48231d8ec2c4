"""The parameter budget counts what it was given instead of building the same network again."""

from __future__ import annotations

import pytest

import pemma.models.budget as budget
from pemma.adapters.recipes import recipe_config


def _counting(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[int]]:
    """Record the feature sizes of every network the budget builds."""
    built: dict[str, list[int]] = {"pemma": [], "early_fusion": []}
    build, early = budget.build_for_count, budget.early_fusion_parameter_count

    def counted_build(backbone, kwargs, cfg):
        built["pemma"].append(kwargs.get("feature_size"))
        return build(backbone, kwargs, cfg)

    def counted_early(backbone, kwargs):
        built["early_fusion"].append(kwargs.get("feature_size"))
        return early(backbone, kwargs)

    monkeypatch.setattr(budget, "build_for_count", counted_build)
    monkeypatch.setattr(budget, "early_fusion_parameter_count", counted_early)
    return built


@pytest.mark.parametrize("feature_size", [budget.AUTHORS_EARLY_FUSION_FEATURE_SIZE, budget.AUTHORS_UNETR_FEATURE_SIZE])
def test_unetr_budget_builds_each_network_once(monkeypatch: pytest.MonkeyPatch, feature_size: int) -> None:
    kwargs = {"img_size": [32, 32, 32], "feature_size": feature_size, "hidden_size": 96, "mlp_dim": 192,
              "num_heads": 4}
    cfg = recipe_config("authors", "unetr")
    fresh = budget.authors_count("unetr", kwargs, cfg)  # nothing given: everything built here
    built = _counting(monkeypatch)
    out = budget.parameter_budget("unetr", kwargs, cfg)
    assert {k: out[k] for k in fresh} == fresh
    # the same-size early fusion is the authors' reference at 16; the configured PEMMA model is theirs at 48
    reference, theirs = budget.AUTHORS_EARLY_FUSION_FEATURE_SIZE, budget.AUTHORS_UNETR_FEATURE_SIZE
    assert built["early_fusion"] == [feature_size] + ([reference] if feature_size != reference else [])
    assert built["pemma"] == [feature_size] + ([theirs] if feature_size != theirs else [])
