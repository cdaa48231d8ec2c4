"""``workers``: the method chains of ``pemma reproduce`` side by side in worker processes, with the results of one
process (``pemma.protocol.chains``)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from pemma.cli.main import build_parser
from pemma.errors import PemmaError
from pemma.protocol import chains
from pemma.protocol.strategy import StrategyError
from pemma.protocol.strategy_file import load_strategy, parse_strategy

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
RAW = {"name": "s", "phases": [{"name": "p", "operation": "pretrain", "centres": ["CHUM"], "modalities": ["ct"]}]}

#: two methods (two chains: adapt -> update each) on the session phantom (CHUM, CHUP, MDA; 2 cases each)
STRATEGY = """
name: workers_test
methods: [pemma_lora, early_fusion]
max_steps: 1
split: {val_fraction: 0.0, test_fraction: 0.5, seed: 0}
phases:
  - {name: pre, operation: pretrain, centres: [CHUM], modalities: [ct]}
  - {name: add, operation: adapt, centres: [MDA], modalities: [ct, pet]}
  - {name: upd, operation: update, centres: [CHUP], modalities: [pet]}
prognosis: {methods: [lora], head: cox, epochs: 1, train_adapters: false}
"""


def test_strategy_workers_key_is_validated_and_round_trips() -> None:
    assert parse_strategy(RAW).workers == 1  # the default: one process
    assert parse_strategy({**RAW, "workers": "auto"}).workers == "auto"
    assert parse_strategy({**RAW, "workers": 3}).to_dict()["workers"] == 3
    for bad in (0, -1, "two", True, 1.5):
        with pytest.raises(StrategyError, match="s.yaml: workers must be an integer >= 1 or auto"):
            parse_strategy({**RAW, "workers": bad}, source="s.yaml")
    assert parse_strategy(RAW).with_overrides(workers="auto").workers == "auto"
    assert load_strategy("demo").workers == "auto" and load_strategy("hecktor2022").workers == 1


def test_resolve_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chains.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert chains.resolve_workers("auto", CPU, chains=5)[0] == 2
    assert chains.resolve_workers("auto", CPU, chains=1)[0] == 1  # never more processes than chains
    assert chains.resolve_workers("auto", CUDA, chains=5) == (1, "1 process: the method chains one after another")
    assert chains.resolve_workers(3, CPU, chains=5)[0] == 3
    monkeypatch.setattr(chains.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert chains.resolve_workers("auto", CPU, chains=5)[0] == 1  # one core: nothing to gain
    with pytest.raises(PemmaError, match="workers must be an integer >= 1 or auto, got 0"):
        chains.resolve_workers(0, CPU, chains=5)


@pytest.mark.parametrize("command", [["demo"], ["reproduce", "--strategy", "demo", "--data", "d", "--out", "o"]])
def test_workers_flag(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    assert parser.parse_args([*command, "--workers", "auto"]).workers == "auto"
    assert parser.parse_args([*command, "--workers", "2"]).workers == 2
    assert parser.parse_args(command).workers is None  # not given: the strategy decides
    with pytest.raises(SystemExit):
        parser.parse_args([*command, "--workers", "0"])
    assert "must be an integer >= 1 or auto, got '0'" in capsys.readouterr().err


def test_chains_group_the_jobs_after_pretraining() -> None:
    strategy = parse_strategy({"name": "s", "methods": ["pemma_lora", "early_fusion"], "phases": [
        {"name": "pre", "operation": "pretrain", "centres": ["CHUM"], "modalities": ["ct"]},
        {"name": "add", "operation": "adapt", "centres": ["MDA"], "modalities": ["ct", "pet"]},
        {"name": "upd", "operation": "update", "centres": ["HGJ"], "modalities": ["pet"]}]})
    jobs = [("unetr", m, ("", ""), p) for m in strategy.methods for p in strategy.plan()]
    grouped = chains.chains_of(jobs)
    assert [[(j[1], j[3].phase.name) for j in c] for c in grouped] == [
        [("pemma_lora", "add"), ("pemma_lora", "upd")], [("early_fusion", "add"), ("early_fusion", "upd")]]


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
@pytest.mark.long  # two whole reproduce runs with prognosis: ~160 s in CI, which has no room for it (8-min budget)
@pytest.mark.usefixtures("one_thread")  # the workers get threads // 2 = 1 torch thread: the same arithmetic
def test_two_workers_give_the_results_of_one_process(phantom: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from pemma.protocol.runner import reproduce

    strategy = tmp_path / "s.yaml"
    strategy.write_text(STRATEGY)
    # bf16 autocast: every prediction of the run in its precision, the workers' lesion chains too
    one = reproduce(strategy, phantom, tmp_path / "one", progress=False, amp=True).parent
    assert "1 process: the method chains one after another" in capsys.readouterr().out
    two = reproduce(strategy, phantom, tmp_path / "two", progress=False, workers=2, amp=True).parent
    log = capsys.readouterr().out
    assert "2 worker processes x 1 torch thread" in log
    # the prognosis ran in the workers beside the chains, once the runs it reads were trained
    assert "unetr prognosis: lesion-feature chains: done in a worker" in log
    assert "unetr prognosis: neural stages: done in a worker" in log
    runs = [r for r in (two / "runs" / "unetr").glob("*/*") if not r.parent.name.startswith("prognosis")]
    assert len(runs) == 5  # the shared base + 2 chains x 2 phases, each trained and evaluated
    assert all((run / "phase.json").is_file() and (run / "evaluation.json").is_file() for run in runs)
    # the worker processes record the machine of each run they train, prognosis stages and chains included
    from pemma.protocol.provenance import run_machines
    from pemma.runtime import describe_machine, machine_line
    machines = run_machines(two)
    assert list(machines) == [machine_line(describe_machine(torch.device("cpu")))] and len(machines[
        next(iter(machines))]) > len(runs)
    assert _rows(two / "results_cases.csv") == _rows(one / "results_cases.csv")  # every case, every number
    # the prognosis: the same rows
    prognosis = json.loads((two / "prognosis.json").read_text())
    assert any(r["method"].startswith("lesion") for r in prognosis)
    assert any(r["stage"] == "ct+pet+ehr" for r in prognosis)
    assert prognosis == json.loads((one / "prognosis.json").read_text())
    assert json.loads((two / "strategy.json").read_text())["workers"] == 2
    # finished chains are not run again: a second call finds every run and spawns no worker
    reproduce(strategy, phantom, tmp_path / "two", progress=False, workers=2, amp=True)
    assert "chains" not in capsys.readouterr().err


def test_chain_tasks_wait_for_their_runs_and_leave_failures_to_the_caller(tmp_path: Path) -> None:
    from pemma.io_utils import write_text_atomic

    strategy = parse_strategy(RAW)
    data = chains.ProtocolData(str(tmp_path), {}, {})
    trained, untrained = tmp_path / "trained", tmp_path / "untrained"
    trained.mkdir()
    (trained / "phase.json").write_text("{}")
    done = chains.Task("writes", write_text_atomic, {"path": tmp_path / "a.txt", "text": "done"}, (trained,))
    waits = chains.Task("waits", write_text_atomic, {"path": tmp_path / "b.txt", "text": "x"}, (trained, untrained))
    fails = chains.Task("fails", json.loads, {"s": "not json"})
    left = chains.run_chains(strategy, data, tmp_path, [], 2, CPU, False, progress=False, tasks=[done, waits, fails])
    assert (tmp_path / "a.txt").read_text() == "done"
    assert not (tmp_path / "b.txt").exists()  # one of its runs never finished: not run
    assert left == [fails, waits]  # for the caller to run itself


def test_side_by_side_runs_in_a_worker_and_leaves_failures_to_the_caller(tmp_path: Path) -> None:
    from pemma.io_utils import write_text_atomic
    from pemma.runtime import side_by_side

    threads, seen = torch.get_num_threads(), []
    calls = [{"path": tmp_path / "a.txt", "text": "done"},
             {"path": tmp_path / "folder", "text": "x"}]  # a folder in the way: fails in the worker
    (tmp_path / "folder" / "inside").mkdir(parents=True)
    with side_by_side(write_text_atomic, calls):
        seen.append(torch.get_num_threads())
    assert (tmp_path / "a.txt").read_text() == "done"  # the worker's result is on disk when the block ends
    assert (tmp_path / "folder" / "inside").is_dir()  # its failure was not raised here
    assert seen == [max(1, threads // 2)] and torch.get_num_threads() == threads  # shared, then restored
