"""``reproduce`` reuses an earlier call's finished runs in ``--out`` only under the same split: rerun with another
``--seed`` it would otherwise score the old runs as if trained on the new split (and rewrite split.json to say so).
No training: the training function stops the run."""

from __future__ import annotations

from pathlib import Path

import pytest

import pemma.protocol.chains as chains_module
import pemma.protocol.runner as runner_module
from pemma.errors import PemmaError

STRATEGY = ("name: s\nmethods: [pemma_lora]\nsplit: {val_fraction: 0.0, test_fraction: 0.5, seed: 0}\n"
            "phases:\n  - {name: pre, operation: pretrain, centres: [CHUM, CHUP, MDA], modalities: [ct]}\n"
            "  - {name: add, operation: adapt, centres: [MDA], modalities: [ct, pet]}\n")


class Stop(Exception):
    pass


@pytest.fixture
def stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """The strategy file and an --out; training raises :class:`Stop` (the checks before it are what is tested)."""
    def stop(cfg, run, **kwargs):
        raise Stop

    monkeypatch.setattr(chains_module, "train", stop)
    strategy = tmp_path / "s.yaml"
    strategy.write_text(STRATEGY)
    return strategy, tmp_path / "out"


def test_another_split_in_the_same_out_is_refused(phantom: Path, stopped: tuple[Path, Path]) -> None:
    strategy, out = stopped
    with pytest.raises(Stop):
        runner_module.reproduce(strategy, phantom, out, seed=0, progress=False)
    written = (out / "split.json").read_text()
    other = None
    for seed in range(1, 20):  # a seed whose split differs (two cases per centre: half the seeds give the same)
        try:
            runner_module.reproduce(strategy, phantom, out, seed=seed, progress=False)
        except PemmaError as exc:
            other = seed
            assert "holds the runs of another split" in str(exc) and str(out) in str(exc)
            break
        except Stop:
            continue  # the same split: the runs may be reused
    assert other is not None
    assert (out / "split.json").read_text() == written  # nothing rewritten
    with pytest.raises(Stop):  # the same seed again resumes
        runner_module.reproduce(strategy, phantom, out, seed=0, progress=False)


def test_other_training_settings_or_data_in_the_same_out_are_refused(phantom: Path, tmp_path: Path,
                                                                     stopped: tuple[Path, Path]) -> None:
    """The runs of an out folder were reused under another --max-steps, --preset or dataset (same case IDs): the
    report said "max steps 6" for 2-step runs. Now each is refused, naming what changed, before anything is
    written; the same settings still resume."""
    import shutil

    strategy, out = stopped
    with pytest.raises(Stop):
        runner_module.reproduce(strategy, phantom, out, seed=0, progress=False, max_steps=2)
    written = (out / "training.json").read_text()
    with pytest.raises(PemmaError, match=r"out: holds runs trained under other settings \(--max-steps 2 -> 6\)"):
        runner_module.reproduce(strategy, phantom, out, seed=0, progress=False, max_steps=6)
    with pytest.raises(PemmaError, match=r"--preset tiny -> paper"):
        runner_module.reproduce(strategy, phantom, out, seed=0, progress=False, max_steps=2, preset="paper")
    other = tmp_path / "other"  # the same IDs, one case's files replaced by another case's
    shutil.copytree(phantom, other)
    for name in ("imagesTr/{}__CT.nii.gz", "imagesTr/{}__PT.nii.gz", "labelsTr/{}.nii.gz"):
        shutil.copy(other / name.format("MDA-001"), other / name.format("MDA-000"))
    with pytest.raises(PemmaError, match=r"--data \(other files\)"):
        runner_module.reproduce(strategy, other, out, seed=0, progress=False, max_steps=2)
    assert (out / "training.json").read_text() == written  # nothing rewritten
    moved = tmp_path / "moved"  # the same dataset elsewhere: the same runs
    shutil.copytree(phantom, moved)
    with pytest.raises(Stop):
        runner_module.reproduce(strategy, moved, out, seed=0, progress=False, max_steps=2)


def test_reproduce_holds_the_lock_of_its_out_and_refuses_an_unreadable_record(phantom: Path, tmp_path: Path,
                                                                              stopped: tuple[Path, Path]) -> None:
    """Two reproduce calls on one --out wrote the same runs at once; an unreadable training.json was ignored."""
    import shutil

    from pemma.run_guards import run_folder_lock

    strategy, out = stopped
    with run_folder_lock(out), pytest.raises(PemmaError, match=r"out: another pemma command"):
        runner_module.reproduce(strategy, phantom, out, seed=0, progress=False)
    with pytest.raises(Stop):
        runner_module.reproduce(strategy, phantom, out, seed=0, progress=False)
    import nibabel as nib
    import numpy as np

    relabelled, out2 = tmp_path / "relabelled", tmp_path / "out2"  # an uncompressed label: its size is its shape's
    shutil.copytree(phantom, relabelled)
    gz = relabelled / "labelsTr" / "MDA-000.nii.gz"
    label = nib.load(gz)
    voxels = np.asarray(label.dataobj).astype(np.uint8)
    nib.save(nib.Nifti1Image(voxels, label.affine), relabelled / "labelsTr" / "MDA-000.nii")
    gz.unlink()
    with pytest.raises(Stop):
        runner_module.reproduce(strategy, relabelled, out2, seed=0, progress=False)
    size = (relabelled / "labelsTr" / "MDA-000.nii").stat().st_size
    voxels[voxels.shape[0] // 2, 0, 0] = 1 - min(1, voxels[voxels.shape[0] // 2, 0, 0])  # one voxel corrected
    nib.save(nib.Nifti1Image(voxels, label.affine), relabelled / "labelsTr" / "MDA-000.nii")
    assert (relabelled / "labelsTr" / "MDA-000.nii").stat().st_size == size
    with pytest.raises(PemmaError, match=r"--data \(other files\)"):
        runner_module.reproduce(strategy, relabelled, out2, seed=0, progress=False)
    (out / "training.json").write_text("{not json")
    with pytest.raises(PemmaError, match=r"training.json: unreadable"):
        runner_module.reproduce(strategy, phantom, out, seed=0, progress=False)


def test_an_earlier_full_finetuning_run_blocks_only_a_strategy_that_runs_it(phantom: Path,
                                                                            stopped: tuple[Path, Path]) -> None:
    """An exact-route full fine-tuning run of an earlier pemma in --out is refused where it would be reused (the
    strategy runs full_finetune on that backbone); a strategy of the PEMMA methods only, or of another backbone,
    never reads it and goes on (before, both were refused: 'it would be reused as today's baseline')."""
    import json

    strategy, out = stopped
    old = out / "runs" / "unetr" / "full_finetune" / "01_add_mda_ct-pet_0000"
    old.mkdir(parents=True)
    (old / "model.json").write_text(json.dumps({"kind": "pemma_full", "adapter_config": {"ct_route": "exact"}}))
    with pytest.raises(Stop):  # pemma_lora only
        runner_module.reproduce(strategy, phantom, out, seed=0, progress=False)
    with pytest.raises(Stop):  # full fine-tuning of another backbone
        runner_module.reproduce(strategy, phantom, out, seed=0, progress=False, methods=["full_finetune"],
                                backbones=["swin_unetr"])
    with pytest.raises(PemmaError, match="full fine-tuning run of an earlier pemma"):
        runner_module.reproduce(strategy, phantom, out, seed=0, progress=False, methods=["pemma_lora", "full"])
