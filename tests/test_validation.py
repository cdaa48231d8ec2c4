"""Configs and strategies are validated completely before anything runs: each bad value is one PemmaError line
naming the setting (and the file it came from) and the fix. Fast: nothing here trains."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from pemma.config import RunConfig, build_config
from pemma.errors import PemmaError
from pemma.protocol.strategy import StrategyError, split_case_ids
from pemma.protocol.strategy_file import parse_strategy
from pemma.vocab import ROI_MULTIPLES

E = "invalid configuration: "

#: overrides -> the whole error line
CONFIG_ERRORS: list[tuple[dict[str, dict[str, Any]], str]] = [
    ({"model": {"backbone": "swin_unetr", "roi_size": [48, 48, 48]}},
     E + "model.roi_size [48, 48, 48] does not fit swin_unetr, which needs every side to be a multiple of 32; "
         "use e.g. 64 64 64 (--roi)"),
    ({"model": {"roi_size": [40, 48, 48]}},
     E + "model.roi_size [40, 48, 48] does not fit unetr, which needs every side to be a multiple of 16; "
         "use e.g. 48 48 48 (--roi)"),
    ({"model": {"unetr": {"hidden_size": 96, "num_heads": 5}}},
     E + "model.unetr.hidden_size 96 is not divisible by unetr.num_heads 5; choose num_heads dividing it, e.g. 4"),
    ({"model": {"swin_unetr": {"feature_size": 16}}},
     E + "model.swin_unetr.feature_size must be a positive multiple of 12, got 16 (a number)"),
    ({"model": {"swin_unetr": {"num_heads": [1, 2, 2]}}},  # was an IndexError inside MONAI, with a traceback
     E + "model.swin_unetr.num_heads must be 4 positive integers (one per stage), got [1, 2, 2] (a list)"),
    ({"model": {"swin_unetr": {"depths": [2, 2, -1, 2]}}},  # 0 is allowed: MONAI builds a stage without blocks
     E + "model.swin_unetr.depths must be 4 integers >= 0 (one per stage), got [2, 2, -1, 2] (a list)"),
    ({"model": {"unetr": [16]}},
     E + "model.unetr must be a mapping of keyword arguments, got [16] (a list); write e.g. unetr: {feature_size: 16}"),
    ({"train": {"seed": "3"}},
     E + "train.seed must be a whole number, got '3' (a string); write one integer without quotes, e.g. seed: 0"),
    ({"train": {"seed": -1}}, E + "train.seed must be >= 0, got -1"),
    ({"train": {"lr": [0.1, 0.2]}},
     E + "train.lr must be one finite number, got [0.1, 0.2] (a list); write lr: 0.002"),
    ({"train": {"lr": float("nan")}}, E + "train.lr must be one finite number, got nan (a number); write lr: 0.002"),
    ({"train": {"epochs": 2.5}},
     E + "train.epochs must be a whole number, got 2.5 (a number); write one integer without quotes, e.g. epochs: 30"),
    ({"train": {"max_steps": [5]}},
     E + "train.max_steps must be a whole number, got [5] (a list); write one integer without quotes"),
    ({"train": {"amp": "yes"}}, E + "train.amp must be true or false, got 'yes' (a string)"),
    ({"train": {"weight_decay": -0.1}}, E + "train.weight_decay must be >= 0, got -0.1"),
    ({"train": {"label_ratios": 1}},
     E + "train.label_ratios must be a list, got 1 (a number); write a list, e.g. label_ratios: [1.0, 1.0, 1.0]"),
    ({"data": {"val_fraction": [0.2]}},
     E + "data.val_fraction must be one finite number, got [0.2] (a list); write val_fraction: 0.2"),
    ({"data": {"centres": ["CHUM", 7]}},
     E + "data.centres must be a list of names, got ['CHUM', 7]; write names such as [CHUM, CHUP]"),
    ({"data": {"root": ["a", "b"]}}, E + "data.root must be a string, got ['a', 'b'] (a list)"),
    ({"preprocess": {"target_spacing": 3}},
     E + "preprocess.target_spacing must be a list, got 3 (a number); write a list, e.g. target_spacing: "
         "[3.0, 3.0, 3.0]"),
    ({"preprocess": {"crop_mm": [200, 200]}},
     E + "preprocess.crop_mm must have 3 values (x, y, z), got [200.0, 200.0]; write e.g. crop_mm: "
         "[200.0, 200.0, 200.0]"),
    ({"preprocess": {"ct_window": [-250]}}, E + "preprocess.ct_window must be [low, high], got [-250.0]"),
]


@pytest.mark.parametrize(("overrides", "line"), CONFIG_ERRORS, ids=[str(o) for o, _ in CONFIG_ERRORS])
def test_bad_config_value_is_one_line(overrides: dict[str, dict[str, Any]], line: str) -> None:
    with pytest.raises(PemmaError) as err:
        build_config("tiny", overrides=overrides)
    assert str(err.value) == line


@pytest.mark.parametrize(("overrides", "expected"), [
    ({"data": {"centres": "CHUM"}}, ("centres", ["CHUM"])),  # one centre, never the letters C, H, U, M
    ({"data": {"centres": "CHUM,CHUP"}}, ("centres", ["CHUM", "CHUP"])),
    ({"data": {"modalities": "ct+pet"}}, ("modalities", ["ct", "pet"])),
    ({"train": {"lr": "1e-3"}}, ("lr", 0.001)),  # YAML 1.1 reads 1e-3 as a string
    ({"train": {"epochs": 3.0}}, ("epochs", 3)),
    ({"model": {"backbone": "swin_unetr", "roi_size": [64, 96, 32]}}, ("roi_size", [64, 96, 32])),
])
def test_values_that_are_accepted(overrides: dict[str, dict[str, Any]], expected: tuple[str, Any]) -> None:
    cfg = build_config("tiny", overrides=overrides)
    section = next(iter(overrides))
    value = getattr(getattr(cfg, section), expected[0])
    assert value == expected[1] and type(value) is type(expected[1])


def test_roi_multiples_match_the_registered_backbones() -> None:
    from pemma.models.registry import get_backbone

    assert {name: get_backbone(name).roi_multiple for name in ROI_MULTIPLES} == ROI_MULTIPLES


def test_config_file_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "my.yaml"
    path.write_text("data:\n  centres: CHUM\ntrain:\n  seed: [1]\n")
    with pytest.raises(PemmaError) as err:
        build_config("tiny", path)
    assert str(err.value) == (f"{path}: invalid configuration: train.seed must be a whole number, got [1] (a list); "
                              f"write one integer without quotes, e.g. seed: 0")
    assert build_config("tiny", path, overrides={"train": {"seed": 2}}).data.centres == ["CHUM"]  # the flag wins
    path.write_text("- train\n- seed\n")
    with pytest.raises(PemmaError, match=r"my.yaml: invalid configuration: the file must map sections"):
        build_config("tiny", path)
    for text, unknown in (("train:\n  lrr: 0.1\n", "unknown keys in train: ['lrr']"),
                          ("trainn:\n  lr: 0.1\n", "unknown config sections ['trainn']")):
        path.write_text(text)  # the unknown names come from the file: it is named
        with pytest.raises(PemmaError) as err:
            build_config("tiny", path)
        assert str(err.value) == f"{path}: invalid configuration: {unknown}"
    path.write_text("train: 5\n")
    with pytest.raises(PemmaError) as err:
        RunConfig.load(path)
    assert str(err.value) == f"{path}: invalid config (train must be a mapping of settings, got 5 (a number))"


DEMO: dict[str, Any] = {"name": "t", "split": {"val_fraction": 0.25, "test_fraction": 0.25, "seed": 0},
                        "phases": [{"name": "pretrain", "operation": "pretrain", "centres": ["CHUM"],
                                    "modalities": ["ct"]}]}


def _with(**changes: Any) -> dict[str, Any]:
    return {**DEMO, **changes}


STRATEGY_ERRORS: list[tuple[dict[str, Any], str]] = [
    (_with(split={"val_fraction": 0.2, "test_fraction": 0.2, "seed": "0"}),
     "s.yaml: split: seed must be an integer >= 0, got '0'"),
    (_with(split={"seed": -3}), "s.yaml: split: seed must be an integer >= 0, got -3"),
    (_with(split={"val_fraction": [0.2]}), "s.yaml: split: val_fraction must be a number in [0, 1), got [0.2]"),
    (_with(split=[0.2, 0.2]), "s.yaml: split must be a mapping, got [0.2, 0.2]"),
    (_with(variants=["pet_only"]), "s.yaml: variants must be a mapping, got ['pet_only']"),
    (_with(variants={"pet_only": ["x"]}),
     "s.yaml: variant 'pet_only' must map phase names to changed fields ({} for none), got ['x']"),
    (_with(max_steps="5"), "s.yaml: max_steps must be null or an integer >= 1, got '5'"),
    (_with(phases=[{**DEMO["phases"][0], "epochs": [3]}]),
     "s.yaml: phase 'pretrain': epochs must be a positive integer, got [3]"),
    (_with(phases=[{**DEMO["phases"][0], "centres": "CHUM,CHUP"}]),
     "s.yaml: phase 'pretrain' (#1): unknown centre 'CHUM,CHUP' (known: CHUM, CHUP, CHUS, CHUV, MDA, HGJ, HMR, "
     "CHB, USZ)"),
]


@pytest.mark.parametrize(("raw", "line"), STRATEGY_ERRORS, ids=[line.split(": ", 1)[1][:40] for _, line in
                                                               STRATEGY_ERRORS])
def test_bad_strategy_value_is_one_line(raw: dict[str, Any], line: str) -> None:
    with pytest.raises(StrategyError) as err:
        parse_strategy(raw, "s.yaml")
    assert str(err.value) == line


def test_strategy_centre_as_a_string_is_one_centre() -> None:
    strategy = parse_strategy(_with(phases=[{**DEMO["phases"][0], "centres": "chum"}]), "s.yaml")
    assert strategy.phases[0].centres == ("CHUM",)


def test_strategy_backbone_must_fit_the_preset(monkeypatch: pytest.MonkeyPatch) -> None:
    """A preset whose ROI a backbone refuses fails when the strategy is read, not when that phase trains."""
    import pemma.config

    real = pemma.config.preset_dict
    monkeypatch.setattr(pemma.config, "preset_dict", lambda name: {**real(name), "model": {"roi_size": [48] * 3}})
    parse_strategy(_with(backbones=["unetr"]), "s.yaml")
    with pytest.raises(StrategyError) as err:
        parse_strategy(_with(backbones=["unetr", "swin_unetr"]), "s.yaml")
    assert str(err.value) == ("s.yaml: backbone 'swin_unetr' with preset 'tiny': invalid configuration: model.roi_size "
                              "[48, 48, 48] does not fit swin_unetr, which needs every side to be a multiple of 32; "
                              "use e.g. 64 64 64 (--roi)")


@pytest.mark.parametrize(("n", "val", "test", "line"), [
    (4, 0.2, 0.9, "split: test_fraction 0.9 holds out 4 of the 4 cases of centre MDA, leaving no training case; "
                  "lower the fractions"),
    (10, 0.99, 0.5, "split: test_fraction 0.5 and val_fraction 0.99 (a share of the rest) hold out 5 + 5 of the 10 "
                    "cases of centre MDA, leaving no training case; lower the fractions"),
])
def test_split_leaving_no_training_case_is_an_error(n: int, val: float, test: float, line: str) -> None:
    from pemma.protocol.phases import SplitSpec

    ids = {"CHUM": [f"CHUM-{i:03d}" for i in range(20)], "MDA": [f"MDA-{i:03d}" for i in range(n)]}
    with pytest.raises(StrategyError) as err:
        split_case_ids({"MDA": ids["MDA"]}, SplitSpec(val_fraction=val, test_fraction=test))
    assert str(err.value) == line
    for fractions in ((0.25, 0.25), (0.5, 0.5)):  # every centre keeps a training case: no error
        parts = split_case_ids(ids, SplitSpec(*fractions))
        assert all(part["train"] for part in parts.values())


def _cli_error(*args: str) -> str:
    from pemma.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    lines = err.getvalue().strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err.getvalue(), err.getvalue()
    return lines[0]


def test_cli_swin_roi_and_strategy_split_fail_in_one_line(tmp_path: Path) -> None:
    line = _cli_error("train", "--data", str(tmp_path), "--backbone", "swin_unetr", "--roi", "48", "48", "48",
                      "--out", str(tmp_path / "run"))
    assert line == ("pemma train: error: invalid configuration: model.roi_size [48, 48, 48] does not fit swin_unetr, "
                    "which needs every side to be a multiple of 32; use e.g. 64 64 64 (--roi)")
    assert not (tmp_path / "run").exists()


def test_reproduce_split_without_training_cases_fails_before_training(phantom: Path, tmp_path: Path) -> None:
    strategy = tmp_path / "s.yaml"
    strategy.write_text(yaml.safe_dump(_with(split={"val_fraction": 0.2, "test_fraction": 0.9, "seed": 0})))
    line = _cli_error("reproduce", "--strategy", str(strategy), "--data", str(phantom), "--out", str(tmp_path / "o"))
    assert line == (f"pemma reproduce: error: {strategy}: split: test_fraction 0.9 holds out 2 of the 2 cases of "
                    f"centre CHUM, leaving no training case; lower the fractions")
    assert not (tmp_path / "o").exists()


def test_corrupt_checkpoint_never_suggests_weights_only_false(tmp_path: Path) -> None:
    from pemma.runs import STATE_FILE, load_state

    torch.save({"step": 3, "payload": Path("x")}, tmp_path / STATE_FILE)  # a pickled object besides tensors
    with pytest.raises(PemmaError) as err:
        load_state(tmp_path)
    message = str(err.value)
    assert "weights_only" not in message and "\n" not in message
    assert message == (f"{tmp_path / STATE_FILE}: truncated or corrupt checkpoint (it holds Python objects besides "
                       f"tensors, which pemma never unpickles); delete it to train again from the start")
    (tmp_path / STATE_FILE).write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(PemmaError, match=r"truncated or corrupt checkpoint \(.+\); delete it"):
        load_state(tmp_path)
