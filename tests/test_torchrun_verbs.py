"""Under torchrun only the training verbs run (DDP); any other verb is refused with one line in each process.

Seen: `torchrun --nproc_per_node 2 -m pemma.cli.main predict ...` and `evaluate ...` ran the whole prediction /
evaluation in both processes, each writing every label map, metrics JSON and cases CSV (the same files, twice)."""

from __future__ import annotations

import contextlib
import io

import pytest

from pemma.cli import main as cli_main


def pemma(*args: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = cli_main.main(list(args))
    return code, err.getvalue()


@pytest.mark.parametrize("verb", [
    ["predict", "--model", "runs/x", "--input", "data", "--out", "preds"],
    ["evaluate", "--model", "runs/x", "--data", "data"],
    ["check", "data"],
    ["params", "runs/x"],
])
def test_a_verb_without_ddp_is_refused_under_torchrun(verb: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")  # what torchrun sets in every process it starts
    code, err = pemma(*verb)
    assert code == 2
    assert err.startswith(f"pemma {verb[0]}: error: runs as one process: under torchrun (2 processes) each would do "
                          "all of its work and write the same files; torchrun is for the training verbs"), err
    assert "Traceback" not in err


#: each training verb with just enough flags to parse
TRAINING_VERBS = [
    ["train", "--data", "d", "--out", "o"],
    ["adapt", "--base", "b", "--data", "d", "--out", "o"],
    ["update", "--model", "m", "--modalities", "pet", "--data", "d", "--out", "o"],
    ["survival", "train", "--base", "b", "--data", "d", "--out", "o"],
    ["survival", "adapt", "--model", "m", "--out", "o"],
]


@pytest.mark.parametrize("verb", TRAINING_VERBS)
def test_the_training_verbs_are_the_ones_torchrun_runs(verb: list[str]) -> None:
    assert cli_main.build_parser().parse_args(verb).distributed is True
    for other in (["predict", "--model", "m", "--input", "i", "--out", "o"], ["reproduce", "--strategy", "demo",
                                                                                "--data", "d", "--out", "o"]):
        assert not getattr(cli_main.build_parser().parse_args(other), "distributed", False)
