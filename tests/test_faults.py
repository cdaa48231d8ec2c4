"""Faults become one line: a broken header, a device this torch cannot use, a checkpoint of another model, an
edited config, an unwritable or full disk, and bugs (one line plus a log file with the traceback)."""

from __future__ import annotations

import contextlib
import errno
import io
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from test_runs import _backbone_run
from torch import nn

from pemma.cli import main as cli_main
from pemma.errors import PemmaError
from pemma.io_utils import load_nifti, sha256_file
from pemma.methods import load_model
from pemma.runs import CONFIG_FILE
from pemma.runtime import resolve_device
from pemma.training.engine import Engine


def _main(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli_main.main(argv)
    return code, err.getvalue()


def test_singular_affine_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "ct.nii.gz"
    img = nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4))
    img.set_sform(np.diag([1.0, 1.0, 0.0, 1.0]), code=2)  # the sform wins over the qform: zero slice spacing
    nib.save(img, str(path))
    with pytest.raises(PemmaError, match=r"ct.nii.gz: CT has a singular voxel-to-world affine \(voxel spacing "
                                         r"\(1.0, 1.0, 0.0\) mm\)"):
        load_nifti(path, what="CT")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a torch without CUDA")
def test_cuda_on_a_cpu_only_torch_is_one_line() -> None:
    with pytest.raises(PemmaError, match="--device cuda: this torch .* has no usable CUDA .*use --device cpu"):
        resolve_device("cuda")
    with pytest.raises(PemmaError, match="--device gpu0: not a device"):
        resolve_device("gpu0")
    assert resolve_device("cpu") == torch.device("cpu")


def test_checkpoint_of_another_model_is_refused(tmp_path: Path) -> None:
    torch.manual_seed(0)
    small = Engine(nn.Linear(4, 2), total_steps=2, lr=0.1, device=torch.device("cpu"))
    small.step(lambda m: m(torch.ones(1, 4)).sum())
    small.save(tmp_path)
    wider = Engine(nn.Linear(5, 2), total_steps=2, lr=0.1, device=torch.device("cpu"))
    with pytest.raises(PemmaError, match="checkpoint.pt: checkpoint does not fit this model and settings"):
        wider.resume(tmp_path)


def test_config_edited_to_another_backbone_is_one_line(tmp_path: Path) -> None:
    run = _backbone_run(tmp_path / "ct")
    cfg = yaml.safe_load((run / CONFIG_FILE).read_text())
    cfg["model"]["backbone"] = "swin_unetr"
    cfg["model"]["roi_size"] = [48, 48, 48]  # a UNETR window, not a Swin one
    (run / CONFIG_FILE).write_text(yaml.safe_dump(cfg))
    with pytest.raises(PemmaError, match=r"ct/config.yaml: changed after the run was written"):
        load_model(run)

    def record_checksum() -> None:  # as if the edit were deliberate: the run's record follows it
        meta = json.loads((run / "model.json").read_text())
        meta["config_sha256"] = sha256_file(run / CONFIG_FILE)
        (run / "model.json").write_text(json.dumps(meta))

    record_checksum()
    with pytest.raises(PemmaError, match=r"ct/config.yaml: invalid config \(model.roi_size \[48, 48, 48\] does not "
                                         r"fit swin_unetr"):
        load_model(run)
    cfg["model"]["roi_size"] = [64, 64, 64]
    (run / CONFIG_FILE).write_text(yaml.safe_dump(cfg))
    record_checksum()
    with pytest.raises(PemmaError, match=r"ct: weights do not fit the configured network"):
        load_model(run)


def test_metadata_that_cannot_rebuild_the_model_is_one_line(tmp_path: Path) -> None:
    run = _backbone_run(tmp_path / "ct")
    meta = json.loads((run / "model.json").read_text())
    del meta["modalities"]
    (run / "model.json").write_text(json.dumps(meta))
    with pytest.raises(PemmaError, match=r"ct: cannot rebuild the backbone model from config.yaml and model.json "
                                         r"\('modalities'\); were they edited by hand"):
        load_model(run)


def test_loader_errors_keep_their_cause_and_bugs_surface(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pemma.methods.backbone as backbone
    from pemma.methods.loading import damaged_weights

    run = _backbone_run(tmp_path / "ct")
    meta = json.loads((run / "model.json").read_text())
    (run / "model.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "modalities"}))
    with pytest.raises(PemmaError, match="edited by hand") as caught:
        load_model(run)
    assert isinstance(caught.value.__cause__, KeyError)  # the original error is chained, not dropped
    (run / "model.json").write_text(json.dumps(meta))

    def bug(*args: object, **kwargs: object) -> None:
        raise TypeError("build() got an unexpected keyword argument 'x'")

    monkeypatch.setattr(backbone, "build_backbone", bug)
    with pytest.raises(TypeError, match="unexpected keyword"):  # a bug is not blamed on the run's files
        load_model(run)
    with pytest.raises(RuntimeError) as mismatch:
        nn.Linear(2, 2).load_state_dict(nn.Linear(3, 2).state_dict())
    assert damaged_weights(mismatch.value) and not damaged_weights(RuntimeError("CUDA error: out of memory"))


@pytest.mark.parametrize(("error", "expected"), [
    (PermissionError(errno.EACCES, "Permission denied", "/shared/out/model.safetensors"),
     "/shared/out/model.safetensors: Permission denied"),
    (OSError(errno.ENOSPC, "No space left on device", "/full/preds/a.nii.gz"),
     "/full/preds/a.nii.gz: No space left on device"),
    (FileExistsError(errno.EEXIST, "File exists", "runs/x"), "runs/x: File exists"),
])
def test_file_system_failures_are_one_line(monkeypatch: pytest.MonkeyPatch, error: OSError, expected: str) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr("pemma.api.synth", fail)
    code, err = _main(["synth", "somewhere"])
    assert code == 2
    assert err.strip() == f"pemma synth: error: {expected} (check the path, its permissions and free space)"


def test_a_bug_is_one_line_and_a_log_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def bug(*args: object, **kwargs: object) -> None:
        return {}["missing"]

    monkeypatch.setattr("pemma.api.synth", bug)
    monkeypatch.setattr("tempfile.gettempdir", lambda: str(tmp_path))
    monkeypatch.delenv("PEMMA_DEBUG", raising=False)
    code, err = _main(["synth", "somewhere"])
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert err.startswith("pemma synth: unexpected error: KeyError: 'missing' (traceback in ")
    log = Path(err.split("traceback in ")[1].split(";")[0])
    assert log.parent == tmp_path / "pemma-errors" and "Traceback" in log.read_text() and "bug" in log.read_text()
    monkeypatch.setenv("PEMMA_DEBUG", "1")
    with pytest.raises(KeyError):
        _main(["synth", "somewhere"])


def test_resume_with_other_settings_is_refused(tmp_path: Path) -> None:
    from pemma.config import build_config
    from pemma.training.loop import check_resume_settings

    run = tmp_path / "run"
    run.mkdir()
    build_config("tiny", overrides={"train": {"lr": 0.002, "seed": 0}}).save(run / CONFIG_FILE)
    same = build_config("tiny", overrides={"train": {"lr": 0.002, "seed": 0, "device": "cpu"}})
    check_resume_settings(run, same)  # no checkpoint yet: nothing to compare
    torch.save({"step": 1}, run / "checkpoint.pt")
    check_resume_settings(run, same)  # the device may change between the two halves
    other = build_config("tiny", overrides={"train": {"lr": 0.001, "seed": 3}})
    with pytest.raises(PemmaError, match=r"run: --resume with other settings than the interrupted run: "
                                         r"train.seed 0 → 3, train.lr 0.002 → 0.001; rerun with the same flags, "
                                         r"or --force to start over$"):
        check_resume_settings(run, other)
    # other centres: the first half trained on cases the second half's config.yaml would not record
    build_config("tiny", overrides={"data": {"centres": ["CHUM", "CHUP"]}}).save(run / CONFIG_FILE)
    check_resume_settings(run, build_config("tiny", overrides={"data": {"centres": ["chup", "CHUM"]}}))
    with pytest.raises(PemmaError, match=r"data.centres \[CHUM, CHUP\] → \[CHUM, MDA\]"):
        check_resume_settings(run, build_config("tiny", overrides={"data": {"centres": ["CHUM", "MDA"]}}))


def test_resume_compares_what_the_checkpoint_recorded(tmp_path: Path) -> None:
    """The dataset (its folder, resolved), and what the checkpoint records besides the config (adapters, the base run
    by its weights checksum) must be the interrupted run's; a checkpoint without that record compares the config."""
    from pemma.config import build_config
    from pemma.training.loop import check_resume_settings

    run = tmp_path / "run"
    run.mkdir()
    cfg = build_config("tiny", overrides={"data": {"root": str(tmp_path / "data")}})
    cfg.save(run / CONFIG_FILE)
    base = {"run": str(tmp_path / "ct"), "sha256": "a" * 64}
    settings = {"method": "pemma_lora", "base": base, "alpha": 8.0, "ct_route": "exact",
                "modality_dropout": [0.6, 0.2, 0.2]}
    torch.save({"step": 5}, run / "checkpoint.pt")  # written before the record existed: the config alone
    check_resume_settings(run, cfg, {**settings, "alpha": 32.0})
    torch.save({"step": 5, "settings": settings}, run / "checkpoint.pt")
    assert check_resume_settings(run, cfg, dict(settings))["step"] == 5  # the same flags resume
    moved = {**settings, "base": {"run": str(tmp_path / "moved"), "sha256": "a" * 64}}
    check_resume_settings(run, cfg, moved)  # the base moved, its weights are the same
    other = {**settings, "alpha": 32.0, "base": {"run": str(tmp_path / "r1"), "sha256": "b" * 64},
             "ct_route": "shared", "modality_dropout": [0.5, 0.25, 0.25]}
    with pytest.raises(PemmaError) as err:
        check_resume_settings(run, cfg, other)
    assert str(err.value) == (f"{run}: --resume with other settings than the interrupted run: base "
                              f"{tmp_path / 'ct'} → {tmp_path / 'r1'}, alpha 8 → 32, ct_route exact → shared, "
                              "modality_dropout [0.6, 0.2, 0.2] → [0.5, 0.25, 0.25]; rerun with the same flags, or "
                              "--force to start over")
    data2 = build_config("tiny", overrides={"data": {"root": str(tmp_path / "data2")}})
    with pytest.raises(PemmaError, match=f"data.root {tmp_path / 'data'} → {tmp_path / 'data2'};"):
        check_resume_settings(run, data2, settings)
    # a setting added since the checkpoint was written: it trained with the old behaviour, which must stay
    check_resume_settings(run, cfg, {**settings, "validation_inputs": "full"})
    with pytest.raises(PemmaError, match="validation_inputs full → each"):  # was resumed under the new choice
        check_resume_settings(run, cfg, {**settings, "validation_inputs": "each"})


def _resume_after_one_step(run: Path, monkeypatch: pytest.MonkeyPatch, best: float, best_step: int,
                           reads: list[Path]) -> tuple[dict, nn.Module, nn.Module]:
    """Resume (no data, no steps) the run ``run`` whose checkpoint holds one step and ``best`` at ``best_step``;
    the checkpoint reads are appended to ``reads``. The summary, the resumed model and the first one."""
    import pemma.training.engine as engine_module
    import pemma.training.loop as loop
    import pemma.training.resume_settings as resume_settings
    from pemma.config import build_config
    from pemma.data.dataset import EpochPlan

    run.mkdir()
    cfg = build_config("tiny", overrides={"train": {"device": "cpu", "amp": False}})
    cfg.save(run / CONFIG_FILE)
    torch.manual_seed(0)
    first = Engine(nn.Linear(3, 2), total_steps=4, lr=0.1, device=torch.device("cpu"))
    first.step(lambda module: module(torch.ones(1, 3)).square().sum())
    first.save(run, best=best, best_step=best_step)
    read = resume_settings.load_state

    def counted(run_dir: Path) -> dict:
        reads.append(Path(run_dir))
        return read(run_dir)

    monkeypatch.setattr(resume_settings, "load_state", counted)
    monkeypatch.setattr(engine_module, "load_state", counted)
    monkeypatch.setattr(loop.SegmentationTraining, "_data", lambda self, train, val: (None, EpochPlan(1, 1, 0)))
    monkeypatch.setattr(loop.SegmentationTraining, "_train_steps", lambda self, crops, plan, total: None)
    model = nn.Linear(3, 2)
    task = loop.TrainingTask(model=model, modalities=["ct"], forward=lambda m, x, s: m(x),
                             predictor=lambda m, inputs: m, save=lambda m, d, meta: None, describe=[])
    return loop.train_task(task, cfg, [], [], run, resume=True, progress=False), model, first.model


def test_resume_reads_the_checkpoint_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The settings check reads the checkpoint (a truncated one is reported first); the engine restores that
    same content instead of reading the file a second time."""
    run, reads = tmp_path / "run", []
    summary, model, first = _resume_after_one_step(run, monkeypatch, 0.5, 1, reads)
    assert reads == [run]
    assert (summary["steps"], summary["best_step"]) == (1, 1)
    torch.testing.assert_close(model.weight, first.weight)  # restored from that single read
    assert "resumed at step 1 (best mean DSCagg 0.5000 at step 1)" in (run / "train.log").read_text()


def test_resume_before_any_validation_says_there_is_no_score(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """It logged "resumed at step 1 (best mean DSCagg -1.0000 at step -1)": the checkpoint's "none yet"."""
    run = tmp_path / "run"
    _resume_after_one_step(run, monkeypatch, -1.0, -1, [])
    log = (run / "train.log").read_text()
    assert "resumed at step 1 (no validation score yet)" in log and "-1.0000" not in log and "step -1" not in log


def test_predict_writes_the_good_cases_and_names_the_bad_ones(phantom: Path, tmp_path: Path) -> None:
    import shutil

    run = _backbone_run(tmp_path / "ct")
    data = tmp_path / "data"
    (data / "imagesTr").mkdir(parents=True)
    for case in ("MDA-000", "MDA-001"):
        shutil.copy(phantom / "imagesTr" / f"{case}__CT.nii.gz", data / "imagesTr")
    (data / "imagesTr" / "MDA-000__CT.nii.gz").write_bytes(b"not a nifti")
    code, err = _main(["predict", "--model", str(run), "--input", str(data / "imagesTr"), "--out",
                       str(tmp_path / "preds"), "--device", "cpu"])
    lines = err.strip().splitlines()
    assert code == 2 and (tmp_path / "preds" / "MDA-001.nii.gz").is_file()
    assert not (tmp_path / "preds" / "MDA-000.nii.gz").exists()
    assert any(line.startswith("pemma predict: warning: ") and "MDA-000__CT.nii.gz" in line for line in lines)
    assert lines[-1].startswith("pemma predict: error: ") and "wrote 1 of 2 label maps; 1 case(s) failed: MDA-000" \
        in lines[-1]
