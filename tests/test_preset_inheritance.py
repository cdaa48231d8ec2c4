"""Verbs that build on a run (adapt, update, survival train / adapt) take that run's preset unless told otherwise:
adapting a paper-size base (``pemma import-model``, ``train --preset paper``) with the tiny preset's training
settings (lr 2e-3 instead of 1e-4, 30 epochs, one crop per case) was the silent default before. No training here:
the training function is replaced by one that records the configuration it was given."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import yaml
from conftest import main_result

import pemma
import pemma.methods
from pemma.api.run import resolve_preset
from pemma.cli.main import build_parser
from pemma.config import build_config
from pemma.io_utils import sha256_file


class Stop(Exception):
    pass


def _with_preset(run: Path, folder: Path, preset: str) -> Path:
    """A copy of ``run`` whose config records ``preset`` (what an imported paper-size run records)."""
    shutil.copytree(run, folder)
    raw = yaml.safe_load((folder / "config.yaml").read_text())
    raw["preset"] = preset
    (folder / "config.yaml").write_text(yaml.safe_dump(raw))
    meta = json.loads((folder / "model.json").read_text())  # as a run written with that config records it
    meta["config_sha256"] = sha256_file(folder / "config.yaml")
    (folder / "model.json").write_text(json.dumps(meta))
    return folder


def test_resolve_preset(bases: dict[str, Path], tmp_path: Path) -> None:
    paper = _with_preset(bases["unetr"], tmp_path / "paper", "paper")
    assert resolve_preset(None, paper) == "paper" and resolve_preset(None, bases["unetr"]) == "tiny"
    assert resolve_preset("tiny", paper) == "tiny"  # the caller's choice wins
    assert resolve_preset(None, tmp_path / "missing") == "tiny"  # the verb itself reports the missing run
    assert resolve_preset(None, None) == "tiny"
    # --resume keeps the preset of the run it continues (started with --preset tiny on a paper base, say)
    assert resolve_preset(None, paper, resumed=bases["unetr"]) == "tiny"
    assert resolve_preset(None, paper, resumed=tmp_path / "not_started") == "paper"


def test_adapt_and_update_train_with_the_preset_of_their_run(bases: dict[str, Path], phantom: Path,
                                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paper = _with_preset(bases["unetr"], tmp_path / "paper", "paper")
    seen = []

    def record(run, cfg, *args, **kwargs):
        seen.append(cfg)
        raise Stop

    monkeypatch.setattr(pemma.methods, "adapt", record)
    monkeypatch.setattr(pemma.methods, "update", record)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a paper-preset run on the phantom: no "--preset tiny" warning either
        with pytest.raises(Stop):
            pemma.adapt(paper, phantom, tmp_path / "ad", centres=["MDA"])
    with pytest.raises(Stop):
        pemma.adapt(paper, phantom, tmp_path / "ad2", centres=["MDA"], preset="tiny")
    with pytest.raises(Stop):
        pemma.update(paper, phantom, "pet", tmp_path / "up", centres=["MDA"])
    assert [c.preset for c in seen] == ["paper", "tiny", "paper"]
    assert [c.train.lr for c in seen] == [build_config("paper").train.lr, build_config("tiny").train.lr,
                                          build_config("paper").train.lr] and seen[0].train.lr != seen[1].train.lr


def test_the_cli_leaves_the_preset_to_the_run() -> None:
    parser = build_parser()
    for argv in (["adapt", "--base", "b", "--data", "d", "--out", "o"],
                 ["update", "--model", "m", "--data", "d", "--modalities", "pet", "--out", "o"],
                 ["survival", "train", "--base", "b", "--data", "d", "--out", "o"],
                 ["survival", "adapt", "--model", "m", "--out", "o"]):
        assert parser.parse_args(argv).preset is None, argv
    assert parser.parse_args(["train", "--data", "d", "--out", "o"]).preset == "tiny"
    help_text = main_result("adapt", "--help").stdout
    assert "default: the --base run's" in " ".join(help_text.split())


def test_survival_train_takes_the_preset_of_its_segmentation_run(bases: dict[str, Path], phantom: Path,
                                                                 tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import pemma.survival.training

    paper = _with_preset(bases["unetr"], tmp_path / "paper", "paper")
    seen = []

    def record(run, cfg, *args, **kwargs):
        seen.append(cfg)
        raise Stop

    monkeypatch.setattr(pemma.survival.training, "train_survival", record)
    for preset in (None, "tiny"):
        with pytest.raises(Stop):
            pemma.survival_train(paper, phantom, tmp_path / f"surv_{preset}", preset=preset)
    assert [c.preset for c in seen] == ["paper", "tiny"]
