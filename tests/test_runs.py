"""One run-folder format: kind, package versions, checksums and base reference, read the same way by every kind;
run folders written before the format had ``kind`` / ``versions`` still load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pemma.config import build_config
from pemma.errors import PemmaError
from pemma.io_utils import sha256_file
from pemma.methods import load_model
from pemma.models.registry import build_backbone
from pemma.runs import CONFIG_FILE, MODEL_FILE, MODEL_META, check_base, package_versions, read_meta, save_weights

TINY = {"model": {"roi_size": [32, 32, 32]}}


def _backbone_run(folder: Path, seed: int = 0) -> Path:
    cfg = build_config("tiny", overrides=TINY)
    torch.manual_seed(seed)
    net = build_backbone(cfg.model, in_channels=1)
    folder.mkdir(parents=True)
    cfg.save(folder / CONFIG_FILE)
    save_weights(net, folder, {"backbone": "unetr", "modalities": ["ct"], "method": "CT-only"})
    return folder


def test_run_metadata_records_kind_versions_and_checksum(tmp_path: Path) -> None:
    run = _backbone_run(tmp_path / "ct")
    meta = read_meta(run)
    assert meta["kind"] == "backbone"
    assert meta["versions"] == package_versions()
    assert set(meta["versions"]) == {"pemma", "torch", "monai", "peft"}
    assert meta["sha256"] == sha256_file(run / MODEL_FILE)


def test_old_run_without_kind_or_versions_still_loads(tmp_path: Path) -> None:
    run = _backbone_run(tmp_path / "old")
    meta = json.loads((run / MODEL_META).read_text())
    del meta["kind"], meta["versions"]
    (run / MODEL_META).write_text(json.dumps(meta))
    loaded = load_model(run)
    assert loaded.kind == "backbone" and loaded.input_sets == [["ct"]]
    x = torch.rand(1, 1, 32, 32, 32)
    assert loaded(x, ["ct"]).shape == (1, 3, 32, 32, 32)


def test_check_base_finds_moved_and_changed_bases(tmp_path: Path) -> None:
    base = _backbone_run(tmp_path / "base")
    meta = {"base_run": str(base), "base_sha256": read_meta(base)["sha256"]}
    assert check_base(tmp_path / "child", meta) == base
    moved = base.rename(tmp_path / "moved")
    with pytest.raises(PemmaError, match="model folder not found .*pass --base if it moved"):
        check_base(tmp_path / "child", meta)
    assert check_base(tmp_path / "child", meta, moved) == moved
    other = _backbone_run(tmp_path / "other", seed=1)
    with pytest.raises(PemmaError, match="child: was trained on base .* but .*other holds"):
        check_base(tmp_path / "child", meta, other)
    with pytest.raises(PemmaError, match="records no base run"):
        check_base(tmp_path / "child", {})


def test_prognosis_folder_is_not_a_segmentation_model(tmp_path: Path) -> None:
    folder = tmp_path / "surv"
    folder.mkdir()
    (folder / "survival.json").write_text("{}")
    with pytest.raises(PemmaError, match="is a prognosis run"):
        load_model(folder)
