"""The prediction cache of ``pemma reproduce`` (:mod:`pemma.inference.prediction_cache`): a reused prediction equals a
recomputed one, an exact-route PEMMA run's CT-only input is served by its base's predictions (and equals what the
PEMMA network computes itself), the overlay figure draws evaluated cases without running or even loading a model,
and the lesion chain segments each case with the CT run once however many chains read it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import pemma
from pemma.data.layout import discover_cases
from pemma.inference import prediction_cache as pc_module
from pemma.inference.predict import predict_case
from pemma.inference.prediction_cache import PredictionCache, serving_network
from pemma.methods.loading import load_model

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]  # trains a tiny base and two adaptations

CPU = torch.device("cpu")
FAST = {"preset": "tiny", "target_spacing": [4.0, 4.0, 4.0], "roi": [32, 32, 32], "batch_size": 1, "max_steps": 1}


@pytest.fixture(scope="module")
def runs(phantom: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CT base (1 step), PEMMA LoRA adaptations of it on MDA on the exact and the shared CT route, and full
    fine-tuning (1 step each)."""
    root = tmp_path_factory.mktemp("prediction_cache")
    base = pemma.train(data=phantom, centres=["CHUM", "CHUP"], modalities=["ct"], out=root / "base", **FAST)
    out = {"base": Path(base.path)}
    for route in ("exact", "shared"):
        run = pemma.adapt(base=base, data=phantom, centres=["MDA"], add_modality="pet", method="lora",
                          ct_route=route, out=root / route, seed=3, **FAST)
        out[route] = Path(run.path)
    full = pemma.adapt(base=base, data=phantom, centres=["MDA"], add_modality="pet", method="full_finetune",
                       out=root / "full", seed=3, **FAST)
    out["full"] = Path(full.path)
    return out


@pytest.fixture(scope="module")
def cases(phantom: Path) -> list:
    return [c for c in discover_cases(phantom) if c.centre in ("CHUM", "MDA")]


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Count the network predictions the cache makes (its ``predict_case``)."""
    calls: list[str] = []

    def counted(model, case, modalities, *args, **kwargs):
        calls.append(f"{case.case_id}:{'+'.join(modalities)}")
        return predict_case(model, case, modalities, *args, **kwargs)
    monkeypatch.setattr(pc_module, "predict_case", counted)
    return calls


def test_a_reused_prediction_equals_a_recomputed_one(runs, cases, monkeypatch):
    calls = _counting(monkeypatch)
    cache = PredictionCache()
    model = load_model(runs["exact"])
    first, ref = cache.predict(model, cases[0], ["ct", "pet"], CPU)
    again, ref_again = cache.predict(model, cases[0], ["ct", "pet"], CPU)
    fresh, fresh_ref = predict_case(model, cases[0], ["ct", "pet"], CPU)
    assert calls == [f"{cases[0].case_id}:ct+pet"]  # the second call ran no network
    assert (cache.hits, cache.misses) == (1, 1)
    np.testing.assert_array_equal(again, fresh)
    np.testing.assert_array_equal(first, fresh)
    assert again.dtype == np.uint8 and again.shape == fresh_ref.shape[:3]
    np.testing.assert_array_equal(ref_again.affine, fresh_ref.affine)
    again[:] = 7  # callers get a copy: changing it does not change the cache
    np.testing.assert_array_equal(cache.predict(model, cases[0], ["ct", "pet"], CPU)[0], fresh)
    # another input set or case is another prediction
    cache.predict(model, cases[0], ["pet"], CPU)
    cache.predict(model, cases[1], ["ct", "pet"], CPU)
    assert len(calls) == 3 and len(cache) == 3


def test_exact_route_ct_input_is_served_by_the_base(runs, cases, monkeypatch):
    base, exact, shared = (load_model(runs[k]) for k in ("base", "exact", "shared"))
    assert serving_network(exact, ["ct"]) == serving_network(base, ["ct"]) == f"weights:{base.meta['sha256']}"
    assert serving_network(exact, ["ct", "pet"]) != serving_network(base, ["ct"])
    assert serving_network(shared, ["ct"]) != serving_network(base, ["ct"])  # the paper's route adapts CT too
    full = load_model(runs["full"])  # full fine-tuning trains the base copy that its exact CT route runs
    assert serving_network(full, ["ct"]) not in (serving_network(base, ["ct"]), serving_network(exact, ["ct"]))
    x = torch.rand(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # ... so its CT output is not the base's (the exact PEMMA run's is, bit for bit)
        assert not torch.equal(full(x, ["ct"]), base(x, ["ct"]))
        assert torch.equal(exact(x, ["ct"]), base(x, ["ct"]))
    cache = PredictionCache()
    from_base = {c.case_id: cache.predict(base, c, ["ct"], CPU)[0] for c in cases}
    calls = _counting(monkeypatch)
    for case in cases:
        served, _ = cache.predict(exact, case, ["ct"], CPU)
        np.testing.assert_array_equal(served, from_base[case.case_id])
        # the assumption the cache rests on: the exact route's own CT output is the base's, bit for bit
        np.testing.assert_array_equal(predict_case(exact, case, ["ct"], CPU)[0], served)
    assert calls == []
    cache.predict(shared, cases[0], ["ct"], CPU)
    assert calls == [f"{cases[0].case_id}:ct"]


def test_overlay_figure_draws_evaluated_cases_without_a_model(runs, cases, tmp_path, monkeypatch):
    from pemma.evaluation.evaluate import evaluate_model
    from pemma.protocol import overlays

    cache = PredictionCache()
    views = {"CT model (CT)": (runs["base"], ["ct"]), "pemma_lora (CT+PET)": (runs["exact"], ["ct", "pet"]),
             "pemma_lora shared (CT)": (runs["shared"], ["ct"])}
    for run, mods in views.values():
        evaluate_model(load_model(run), cases, mods, CPU, progress=False, predictions=cache)

    def forbidden(*args, **kwargs):
        raise AssertionError("the overlay ran or loaded a model for a case evaluation had predicted")
    monkeypatch.setattr(overlays, "load_model", forbidden)
    monkeypatch.setattr(pc_module, "predict_case", forbidden)
    seen = []
    monkeypatch.setattr(overlays, "plot_overlays", lambda rows, path, title: seen.append(rows) or Path(path))
    overlays.overlay_figure(cases, views, tmp_path / "o.png", CPU, title="t", n_cases=2, predictions=cache)
    (rows,) = seen
    assert len(rows) == 2
    for row in rows:
        case = next(c for c in cases if row["case_id"].startswith(c.case_id))
        k = int(row["case_id"].split("k=")[1].rstrip(")"))
        for name, (run, mods) in views.items():
            np.testing.assert_array_equal(row["predictions"][name], cache.cached(run, case, mods)[0][:, :, k])
    monkeypatch.undo()
    # without the cache the same figure runs the models and draws the same predictions
    again = []
    monkeypatch.setattr(overlays, "plot_overlays", lambda rows, path, title: again.append(rows) or Path(path))
    overlays.overlay_figure(cases, views, tmp_path / "o2.png", CPU, title="t", n_cases=2)
    for a, b in zip(rows, again[0], strict=True):
        assert a["case_id"] == b["case_id"]
        for name in views:
            np.testing.assert_array_equal(a["predictions"][name], b["predictions"][name])


def test_lesion_chains_segment_each_case_once(runs, phantom, tmp_path, monkeypatch):
    from pemma.protocol.prognosis import run_lesion_chains

    ids = sorted(c.case_id for c in discover_cases(phantom))
    train, held_out = ids[:4], ids[4:]
    kwargs = {"data_root": str(phantom), "base_run": runs["base"], "backbone": "unetr", "seed": 0,
              "train_ids": train, "held_out_ids": held_out, "centres": ["CHUM", "CHUP", "MDA"],
              "methods": ("lora", "dora")}
    calls = _counting(monkeypatch)
    # two chains on the same PEMMA run: the CT run segments every case once, the CT+PET run once too
    rows = run_lesion_chains(out=tmp_path / "cached", segmentation_adapters={"lora": runs["exact"],
                                                                            "dora": runs["exact"]}, **kwargs)
    assert sorted(calls) == sorted([f"{i}:ct" for i in ids] + [f"{i}:ct+pet" for i in ids])
    # the same chains computed with a cache each (as before the shared cache): the same features and rows
    from pemma.survival import chain_run

    original = chain_run.survival_chain
    monkeypatch.setattr(chain_run, "survival_chain",
                        lambda *a, **k: original(*a, **{**k, "predictions": PredictionCache()}))
    calls.clear()
    fresh = run_lesion_chains(out=tmp_path / "fresh", segmentation_adapters={"lora": runs["exact"],
                                                                            "dora": runs["exact"]}, **kwargs)
    assert len(calls) == 4 * len(ids)
    for name in ("lesion_lora", "lesion_dora"):
        assert (tmp_path / "cached" / name / "features.csv").read_text() == \
            (tmp_path / "fresh" / name / "features.csv").read_text()
    assert [r["c_index"] for r in rows] == [r["c_index"] for r in fresh]
