"""The Python API (``pemma.train`` ... ``pemma.evaluate``): the README example on the tiny phantom, agreement
with the CLI, a light ``import pemma``, and CLI flags whose help comes from the config fields."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli

import pemma
from pemma.cli.main import build_parser
from pemma.cli.options import field_of
from pemma.config import RunConfig

#: the FAST flags of conftest as keyword arguments
TINY = {"preset": "tiny", "spacing": [4, 4, 4], "roi": [32, 32, 32], "batch_size": 1, "val_every": 1, "max_steps": 2}


def _parsers(parser: argparse.ArgumentParser, name: str = "pemma") -> dict[str, argparse.ArgumentParser]:
    found = {name: parser}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for verb, sub in action.choices.items():
                found.update(_parsers(sub, f"{name} {verb}"))
    return found


def test_import_pemma_does_not_import_torch() -> None:
    code = ("import sys, pemma, pemma.cli.main; pemma.cli.main.build_parser(); "
            "assert pemma.__version__ and pemma.MODALITY_ORDER == ('ct', 'pet') and pemma.LABELS['GTVn'] == 2; "
            "assert callable(pemma.train) and callable(pemma.evaluate); "
            "print(sorted(m for m in ('torch', 'monai', 'nibabel') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_every_verb_is_in_the_api() -> None:
    for name in ("train", "adapt", "update", "predict", "evaluate", "reproduce", "demo", "params", "export", "synth",
                 "survival_train", "survival_adapt", "survival_evaluate", "survival_predict"):
        function = getattr(pemma, name)
        assert callable(function) and "Args:" in (function.__doc__ or "") and ">>>" in function.__doc__, name
    importlib.import_module("pemma.protocol.demo")  # the demo's module does not shadow the API function
    assert pemma.demo.__module__ == "pemma.api.protocol"
    with pytest.raises(AttributeError):
        pemma.no_such_function  # noqa: B018


def test_config_flags_take_help_from_the_fields() -> None:
    linked: dict[str, set[str]] = {}
    for name, parser in _parsers(build_parser()).items():
        for action in parser._actions:
            field = getattr(action, "config_field", None)
            if field is None:
                continue
            linked.setdefault(name, set()).add(action.option_strings[0])
            assert action.help.replace("%%", "%") == field_of(*field).metadata["help"], (name, action.option_strings)
            assert action.default is None, (name, action.option_strings)  # not given: preset / --config decide
    training = {"--seed", "--epochs", "--max-steps", "--batch-size", "--lr", "--val-every", "--checkpoint-every",
                "--roi", "--spacing", "--val-fraction", "--cache-dir", "--device", "--amp", "--gradient-checkpointing"}
    for verb in ("pemma train", "pemma adapt", "pemma update"):
        assert training <= linked[verb], (verb, training - linked[verb])
    for verb in ("pemma survival train", "pemma survival adapt"):  # fp32 only: no --amp
        assert training - {"--amp"} <= linked[verb] and "--amp" not in linked[verb], verb
    assert "--backbone" in linked["pemma train"]
    for verb in ("pemma predict", "pemma evaluate"):
        assert {"--roi", "--overlap", "--sw-batch-size", "--device", "--amp"} <= linked[verb]


def test_num_workers_is_gone_but_old_configs_load(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    old = tmp_path / "config.yaml"
    old.write_text("preset: tiny\ndata: {root: data/phantom, num_workers: 4, val_fraction: 0.3}\n")
    cfg = RunConfig.load(old)
    assert cfg.data.val_fraction == 0.3 and "num_workers" not in cfg.to_dict()["data"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--data", "d", "--out", "o", "--num-workers", "2"])
    assert "--num-workers" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown keys in data"):
        RunConfig.from_dict({"data": {"num_worker": 1}})  # other unknown keys are still refused


def test_keywords_set_config_fields() -> None:
    cfg = pemma.run_config("tiny", data="data/x", centres="CHUM, MDA", modalities=["pet", "ct"], roi=(32, 32, 32),
                           spacing=[4, 4, 4], weight_decay=0.5, ct_window=[-100, 100],
                           overrides={"train": {"epochs": 3, "seed": 1}}, seed=7)
    assert cfg.data.root == "data/x" and cfg.data.centres == ["CHUM", "MDA"] and cfg.data.modalities == ["ct", "pet"]
    assert cfg.model.roi_size == [32, 32, 32] and cfg.preprocess.target_spacing == [4, 4, 4]
    assert cfg.train.weight_decay == 0.5 and cfg.preprocess.ct_window == [-100, 100]
    assert cfg.train.epochs == 3 and cfg.train.seed == 7  # keywords win over overrides
    with pytest.raises(TypeError, match="weight_decy"):
        pemma.run_config("tiny", weight_decy=0.5)


@pytest.mark.slow
@pytest.mark.long  # ~50 s (two CLI subprocesses): moved out of CI to keep .ci/run under 8 min on 2 cores
def test_readme_example_matches_the_cli(phantom: Path, tmp_path: Path) -> None:
    data = str(phantom)
    run = pemma.train(data=data, centres=["CHUM"], modalities=["ct"], out=tmp_path / "ct", **TINY)
    ad = pemma.adapt(base=run, data=data, centres=["MDA"], add_modality="pet", method="lora", out=tmp_path / "ad",
                     **TINY)
    written = pemma.predict(ad, inputs=phantom / "imagesTr", modalities=["ct", "pet"], out=tmp_path / "preds",
                            centres=["MDA"])
    scores = pemma.evaluate(ad, data=data, centres=["MDA"], modalities=["ct", "pet"], out=tmp_path / "eval_api")

    assert isinstance(run, pemma.Run) and run.kind == "backbone" and os.fspath(run) == str(tmp_path / "ct")
    assert run.summary["steps"] == 2 and run.config.model.roi_size == [32, 32, 32]
    assert ad.kind == "pemma" and ad.meta["base_run"] == str((tmp_path / "ct").resolve())
    assert pemma.Run.open(ad).kind == "pemma" and str(ad) == str(tmp_path / "ad")
    assert sorted(p.name for p in written) == ["MDA-000.nii.gz", "MDA-001.nii.gz"]

    # the CLI accepts the API's run, and scores it exactly as pemma.evaluate did
    run_cli("predict", "--model", str(ad), "--modalities", "ct,pet", "--input", str(phantom / "imagesTr"),
            "--centres", "MDA", "--out", str(tmp_path / "preds_cli"))
    assert sorted(p.name for p in (tmp_path / "preds_cli").iterdir()) == sorted(p.name for p in written)
    for p in written:
        assert (tmp_path / "preds_cli" / p.name).is_file()
    proc = run_cli("evaluate", "--model", str(ad), "--data", data, "--centres", "MDA", "--modalities", "ct,pet",
                   "--out", str(tmp_path / "eval_cli"))
    cli = json.loads((tmp_path / "eval_cli" / "metrics_ct+pet.json").read_text())
    assert scores["n_cases"] == cli["n_cases"] == 2 and scores["centres"] == cli["centres"] == ["MDA"]
    assert scores["data"] == cli["data"] == str(phantom.resolve())  # the report says what it scored
    assert scores["DSCagg"] == pytest.approx(cli["DSCagg"], rel=1e-12, abs=0, nan_ok=True)
    assert [c["dice_GTVp"] for c in scores["cases"]] == pytest.approx([c["dice_GTVp"] for c in cli["cases"]])
    assert f"mean {scores['DSCagg']['mean']:.4f}" in proc.stdout
    assert json.loads(Path(scores["report"]["json"]).read_text())["DSCagg"] == scores["DSCagg"]
