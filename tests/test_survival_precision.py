"""The survival stages run in fp32: no verb of ``pemma survival`` offers ``--amp`` (it used to be accepted and then
ignored), ``amp=True`` through the API is a one-line error before anything is read or written, and the
segmentation verbs keep their ``--amp``."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import main_result

import pemma
from pemma.errors import PemmaError

SURVIVAL_VERBS = {
    "train": ["--base", "b", "--data", "d", "--out", "o"],
    "adapt": ["--model", "m", "--add-ehr", "--out", "o"],
    "evaluate": ["--model", "m", "--data", "d"],
    "predict": ["--model", "m", "--data", "d", "--out", "o.csv"],
    "chain": ["--seg-ct", "s", "--data", "d", "--out", "o"],
}


@pytest.mark.parametrize("verb", sorted(SURVIVAL_VERBS))
def test_survival_verbs_do_not_offer_amp(verb: str) -> None:
    proc = main_result("survival", verb, *SURVIVAL_VERBS[verb], "--amp")
    assert proc.returncode == 2
    assert "unrecognized arguments: --amp" in proc.stderr and "Traceback" not in proc.stderr
    help_text = main_result("survival", verb, "--help").stdout
    assert "--device" in help_text and "--amp" not in help_text


@pytest.mark.parametrize("verb", ["train", "adapt", "update", "predict", "evaluate"])
def test_segmentation_verbs_keep_amp(verb: str) -> None:
    assert "--amp" in main_result(verb, "--help").stdout


@pytest.mark.parametrize("call", ["train", "adapt"])
def test_api_amp_is_an_error_before_anything_is_written(call: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(PemmaError, match="survival stages train and predict in fp32"):
        if call == "train":
            pemma.survival_train(tmp_path / "no-base", tmp_path / "no-data", out, amp=True)
        else:
            pemma.survival_adapt(tmp_path / "no-model", out, add_ehr=True, amp=True)
    assert not out.exists()


def test_config_file_amp_is_ignored_with_a_warning(tmp_path: Path) -> None:
    config = tmp_path / "amp.yaml"
    config.write_text("train:\n  amp: true\n")
    with pytest.warns(UserWarning, match="train.amp of the config is ignored"), pytest.raises(PemmaError):
        pemma.survival_train(tmp_path / "no-base", tmp_path / "no-data", tmp_path / "run", config=config)
    assert not (tmp_path / "run").exists()
