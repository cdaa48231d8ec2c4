"""Mixed precision where it pays (issue 13): ``amp: auto`` turns bf16 autocast on only on a CPU that computes bf16
natively (AMX / AVX512-BF16; elsewhere oneDNN emulates it: 24 s a step measured, against 0.92 s in fp32) and on
CUDA; a strategy's ``amp`` reaches every training and every prediction of ``reproduce``; asking for amp on a CPU
without native bf16 warns."""

from __future__ import annotations

import json
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import pemma.inference.prediction_cache as pc_module
import pemma.protocol.chains as chains_module
import pemma.protocol.runner as runner_module
import pemma.runtime as runtime
from pemma.cli.main import build_parser
from pemma.config import RunConfig
from pemma.data.layout import CaseRecord
from pemma.errors import PemmaError
from pemma.inference.predict import WindowSettings
from pemma.inference.prediction_cache import PredictionCache
from pemma.protocol.strategy import StrategyError
from pemma.protocol.strategy_file import load_strategy, parse_strategy
from pemma.training.engine import Engine

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize("native", [True, False])
def test_auto_follows_the_cpu_and_is_always_on_for_cuda(monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    monkeypatch.setattr(runtime, "native_bf16_cpu", lambda: native)
    on, why = runtime.resolve_amp("auto", CPU)
    assert on is native
    assert ("native bf16" in why) and (why.startswith("bf16") if native else why.startswith("fp32"))
    assert runtime.resolve_amp("auto", CUDA)[0] is True
    # an explicit choice is kept whatever the CPU
    assert runtime.resolve_amp(True, CPU)[0] is True and runtime.resolve_amp(False, CUDA)[0] is False


@pytest.mark.parametrize("bad", ["yes", 1, 0.0, None])
def test_a_bad_amp_setting_is_one_clear_error(bad: object) -> None:
    with pytest.raises(PemmaError, match="amp must be true, false or auto"):
        runtime.resolve_amp(bad, CPU)  # type: ignore[arg-type]


def test_without_the_cpu_probes_bf16_counts_as_not_native(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    assert runtime.native_bf16_cpu() is False


@pytest.mark.parametrize(("amx", "avx512_bf16", "kind"), [(True, False, "AMX"), (True, True, "AMX"),
                                                         (False, True, "AVX512-BF16"), (False, False, "none")])
def test_cpu_bf16_kind_names_what_the_cpu_has(monkeypatch: pytest.MonkeyPatch, amx: bool, avx512_bf16: bool,
                                              kind: str) -> None:
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    assert runtime.cpu_bf16_kind() == kind
    assert runtime.native_bf16_cpu() is (kind != "none")
    machine = runtime.describe_machine(CPU)
    assert machine["cpu_bf16"] == kind and machine["device"] == "cpu" and machine["torch"] == torch.__version__
    assert isinstance(machine["cores"], int) and machine["cores"] >= 1 and machine["cpu"]
    assert runtime.machine_line(machine).startswith(f"{machine['cpu']} (bf16: {kind}), {machine['cores']} cores, cpu;")


@pytest.mark.parametrize("native", [True, False])
def test_engine_warns_about_amp_on_a_cpu_without_native_bf16(monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    import pemma.training.engine as engine_module

    monkeypatch.setattr(engine_module, "native_bf16_cpu", lambda: native)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Engine(nn.Linear(2, 2), 10, 1e-3, CPU, amp=True)
        Engine(nn.Linear(2, 2), 10, 1e-3, CPU, amp=False)
    slow = [w for w in caught if "without native bf16" in str(w.message)]
    assert len(slow) == (0 if native else 1)


def test_the_strategy_key_is_validated_overridden_and_written_back() -> None:
    demo = load_strategy("demo")
    assert demo.amp == "auto"  # the CPU demo: bf16 where the CPU has it
    assert load_strategy("hecktor2022").amp is False  # the paper protocol: fp32 unless asked
    assert demo.with_overrides(amp=False).amp is False
    raw = demo.to_dict()
    assert parse_strategy(raw).to_dict() == raw
    with pytest.raises(StrategyError, match="amp must be true, false or auto, got 'fast'"):
        parse_strategy({**raw, "amp": "fast"}, source="s.yaml")


@pytest.mark.parametrize(("flag", "value"), [("auto", "auto"), ("on", True), ("off", False)])
def test_amp_flag_of_demo_and_reproduce(flag: str, value: object) -> None:
    from pemma.cli.options import amp_choice

    parser = build_parser()
    for argv in (["demo", "--amp", flag], ["reproduce", "--strategy", "demo", "--data", "d", "--out", "o", "--amp",
                                           flag]):
        assert amp_choice(parser.parse_args(argv)) == value
    assert amp_choice(parser.parse_args(["demo"])) is None  # not given: the strategy decides


def test_the_prediction_cache_predicts_in_its_own_window_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[WindowSettings] = []

    def fake_predict(model, case, modalities, device, window, inputs_cache, reference):
        seen.append(window)
        return np.zeros((2, 2, 2), np.uint8), object()
    monkeypatch.setattr(pc_module, "predict_case", fake_predict)
    model = types.SimpleNamespace(net=nn.Identity(), meta={"sha256": "abc"}, run_dir=None, kind="pemma_early_fusion",
                                  config=RunConfig())
    case = CaseRecord("MDA-001", "MDA", {"ct": "ct.nii.gz", "pet": "pet.nii.gz"})
    cache = PredictionCache(window=WindowSettings(amp=True))
    cache.predict(model, case, ["ct", "pet"], CPU)
    cache.predict(model, case, ["ct", "pet"], CPU)  # the same settings: from memory
    cache.predict(model, case, ["ct", "pet"], CPU, WindowSettings())  # fp32 asked for: another prediction
    assert [w.amp for w in seen] == [True, False] and cache.hits == 1


@pytest.mark.parametrize(("setting", "native", "expected"), [("auto", True, True), ("auto", False, False),
                                                             (True, False, True)])
def test_reproduce_trains_with_the_resolved_setting(phantom: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    setting: object, native: bool, expected: bool) -> None:
    class Stop(Exception):
        pass

    trained: list[bool] = []

    def fake_train(cfg, run, **kwargs):
        trained.append(cfg.train.amp)
        raise Stop
    monkeypatch.setattr(runtime, "native_bf16_cpu", lambda: native)
    monkeypatch.setattr(chains_module, "train", fake_train)
    strategy = tmp_path / "s.yaml"
    strategy.write_text("name: s\nmethods: [pemma_lora]\nsplit: {val_fraction: 0.0, test_fraction: 0.5, seed: 0}\n"
                        "phases:\n  - {name: pre, operation: pretrain, centres: [CHUM, CHUP], modalities: [ct]}\n"
                        "  - {name: add, operation: adapt, centres: [MDA], modalities: [ct, pet]}\n")
    with pytest.raises(Stop):
        runner_module.reproduce(strategy, phantom, tmp_path / "out", amp=setting, progress=False)
    assert trained == [expected]
    # where it ran is written before anything trains (the CPU kind changes the numbers of a seed)
    machine = json.loads((tmp_path / "out" / "machine.json").read_text())
    assert machine["torch"] == torch.__version__ and machine["device"] == "cpu"
    # and the run folder of the phase it started records it too (a later call may reuse the run elsewhere)
    (pretraining,) = (tmp_path / "out").glob("runs/*/*/*pre*/machine.json")
    assert json.loads(pretraining.read_text()) == machine
