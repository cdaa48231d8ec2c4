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


def test_another_split_in_the_same_out_is_refused(phantom: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    def stop(cfg, run, **kwargs):
        raise Stop

    monkeypatch.setattr(chains_module, "train", stop)
    strategy, out = tmp_path / "s.yaml", tmp_path / "out"
    strategy.write_text(STRATEGY)
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
