"""``pemma demo``: phantom + reproduce for each seed, and the seed summary (a small phantom and strategy here;
the shipped demo strategy's own run is measured in the README)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pemma.data.phantom import PhantomConfig

pytestmark = [pytest.mark.slow, pytest.mark.long]  # runs the whole demo (trains every phase)

STRATEGY = """
name: demo_test
backbones: [unetr]
preset: tiny
max_steps: 1
split: {val_fraction: 0.0, test_fraction: 0.5, seed: 0}
methods: [pemma_lora, early_fusion, full_finetune]
phases:
  - {name: pretrain, operation: pretrain, centres: [CHUM], modalities: [ct]}
  - {name: adapt_mda, operation: adapt, centres: [MDA], modalities: [ct, pet]}
  - {name: update_hgj, operation: update, centres: [HGJ], modalities: [pet]}
prognosis: {methods: [lora], head: cox, epochs: 1, train_adapters: false}
"""

#: the two-seed CLI test's strategy: PEMMA LoRA and early fusion, pretrain + adapt, no prognosis
CHEAP = """
name: demo_cheap
backbones: [unetr]
preset: tiny
max_steps: 1
split: {val_fraction: 0.0, test_fraction: 0.5, seed: 0}
methods: [pemma_lora, early_fusion]
phases:
  - {name: pretrain, operation: pretrain, centres: [CHUM], modalities: [ct]}
  - {name: adapt_mda, operation: adapt, centres: [MDA], modalities: [ct, pet]}
"""
SMALL = PhantomConfig(cases_per_centre=2, centres=("CHUM", "MDA", "HGJ"), ct_shape=(40, 40, 32))


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One seed of the demo with every method and the prognosis chain (shared by the tests of this file)."""
    from pemma.protocol import demo as demo_module

    tmp = tmp_path_factory.mktemp("demo_run")
    strategy = tmp / "demo_test.yaml"
    strategy.write_text(STRATEGY)
    report = demo_module.run_demo(tmp / "demo", seeds=[0], strategy=strategy, phantom=SMALL, progress=False)
    return report.parent


def test_demo_findings_carry_every_claim(demo_run: Path) -> None:
    findings = json.loads((demo_run / "findings.json").read_text())
    claims = [c for label, found in findings.items() if "lesion" not in label for c in found]
    assert [c["claim"] for c in claims] == ["CT+PET > CT", "pemma_lora ≥ early fusion − 0.03",
                                            "pemma_lora trains ≤ 10% of early fusion's parameters",
                                            "less CT forgetting after update_hgj (PET only)",
                                            "less PET forgetting after update_hgj (PET only)",
                                            "less CT+PET forgetting after update_hgj (PET only)",
                                            "pemma_lora PET-input gain over early fusion after update_hgj "
                                            "(PET only)", "Swin UNETR + DoRA ≥ Swin UNETR + LoRA ≥ UNETR + LoRA",
                                            "unetr lora: C-index gain with PET",
                                            "unetr lora: C-index gain with PET and EHR"]
    # the lesion chain's claims under their own label (lesion features of the PEMMA LoRA segmentation)
    assert [c["id"] for label, found in findings.items() if "lesion" in label for c in found] == \
        ["cindex_gain_pet", "cindex_gain_pet_ehr"]


def test_seed_summary_of_finished_runs(demo_run: Path, tmp_path: Path) -> None:
    """``seeds.md`` over two finished seed folders (here the same run twice: every number's min = max)."""
    import shutil

    from pemma.protocol.demo import write_seed_summary

    for seed in (0, 1):
        shutil.copytree(demo_run, tmp_path / f"seed_{seed}", ignore=shutil.ignore_patterns("runs"))
    summary = write_seed_summary({s: tmp_path / f"seed_{s}" for s in (0, 1)}, tmp_path / "seeds.md").read_text()
    assert summary.startswith("# Findings over seeds 0, 1")
    assert "[0](seed_0/report.md)" in summary and "[1](seed_1/report.md)" in summary
    # PEMMA's CT route is the CT model, so a PET-only update cannot change its CT-input DSCagg: drop 0 on every seed
    line = next(row for row in summary.splitlines() if row.startswith("| less CT forgetting"))
    assert "drop:pemma_lora 0.000 [0.000, 0.000]" in line
    assert "| lora | ct+pet+ehr |" in summary


def test_demo_cli_with_two_seeds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture) -> None:
    """``pemma demo --seed 0 --seed 1``: one results folder per seed (its own split seed) and ``seeds.md``; a cheap
    strategy (the full one runs in :func:`demo_run`)."""
    import dataclasses

    from pemma.cli.main import main
    from pemma.data import phantom as phantom_module

    strategy = tmp_path / "demo_test.yaml"
    strategy.write_text(CHEAP)
    # the CLI always asks for the default phantom (pemma.api.demo builds it): the small one here
    @dataclasses.dataclass
    class SmallPhantom(PhantomConfig):
        cases_per_centre: int = SMALL.cases_per_centre
        centres: tuple[str, ...] = SMALL.centres
        ct_shape: tuple[int, int, int] = SMALL.ct_shape

    monkeypatch.setattr(phantom_module, "PhantomConfig", SmallPhantom)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--strategy", str(strategy), "--seed", "0", "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    assert f"report: {out / 'seeds.md'}" in printed and "# Findings over seeds 0, 1" in printed
    cts = sorted(p.name for p in (out / "phantom" / "imagesTr").glob("*__CT.nii.gz"))
    assert cts[0] == "CHUM-000__CT.nii.gz" and len(cts) == 6  # the small phantom, not the default one
    summary = (out / "seeds.md").read_text()
    for seed in (0, 1):
        assert json.loads((out / f"seed_{seed}" / "strategy.json").read_text())["split"]["seed"] == seed
        assert f"[{seed}](seed_{seed}/report.md)" in summary
    held = [row.split(" | ")[1] for row in summary.splitlines() if row.startswith("| CT+PET > CT")]
    assert held and held[0].endswith("/2")


def test_demo_prognosis_is_evaluated_on_the_held_out_cases(demo_run: Path) -> None:
    """The prognosis rows of a demo run: C-index of each stage on the split's validation + test cases (this
    phantom has relapses on both sides), equal to ``evaluate_survival`` on those cases; +PET starts from the
    PEMMA LoRA segmentation adapters."""
    from pemma.survival.evaluate import evaluate_survival

    folder = demo_run
    assert "## Prognosis" in (folder / "report.md").read_text()
    rows = json.loads((folder / "prognosis.json").read_text())
    # the neural stages, then the lesion-feature chain on the PEMMA LoRA segmentation (its own CT stage)
    assert [(r["method"], r["stage"]) for r in rows] == [("CT model", "ct"), ("lora", "ct+pet"), ("lora", "ct+pet+ehr"),
                                                         ("lesion-cox:lora", "ct"), ("lesion-cox:lora", "ct+pet"),
                                                         ("lesion-cox:lora", "ct+pet+ehr")]
    rows = rows[:3]
    split = json.loads((folder / "split.json").read_text())
    held_out = [i for c in split.values() for i in c["val"] + c["test"]]
    for row, name in zip(rows, ("ct", "lora_ct+pet", "lora_ct+pet+ehr"), strict=True):
        direct = evaluate_survival(next(folder.glob("runs/unetr/prognosis_*")) / name, folder.parent / "phantom",
                                   out_dir=folder.parent / "direct", case_ids=held_out, n_bootstrap=20)
        assert row["c_index"] == pytest.approx(direct["c_index"], abs=1e-12)
        assert row["n_cases"] == len(held_out) == direct["n_cases"] and row["events"] == direct["events"] > 0
    meta = json.loads((next(folder.glob("runs/unetr/prognosis_*/lora_ct+pet/survival.json"))).read_text())
    assert meta["init_adapters"] == str((folder / "runs/unetr/pemma_lora").resolve() / next(
        p.name for p in (folder / "runs/unetr/pemma_lora").iterdir() if p.name.startswith("01_adapt")))
