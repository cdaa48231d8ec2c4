"""DDP ranks agree on failure: a validation case that only rank 0 reads is bad, and every rank reports the one
clear error (no rank crashes in DDP set-up with a traceback of its own)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import FAST

from pemma.data.layout import discover_cases, select_cases, split_cases
from pemma.data.phantom import PhantomConfig, synthesize_phantom
from pemma.io_utils import save_nifti

pytestmark = [pytest.mark.slow, pytest.mark.long]  # torchrun, 2 processes


def test_bad_validation_case_read_by_rank_0_only_fails_every_rank_with_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    synthesize_phantom(data, PhantomConfig(cases_per_centre=3, centres=("CHUM",), ct_shape=(48, 48, 32), seed=2),
                       progress=False)
    cases = select_cases(discover_cases(data), require_label=True)
    _, val = split_cases(cases, 0.34, seed=0)
    assert len(val) == 1
    # the label grid overlaps the CT (the up-front check passes) but its tumour lies beyond the CT's last slice:
    # only the loader, which builds the validation set on rank 0 alone, refuses it
    ct = nib.load(val[0].images["ct"])
    label = np.zeros((*ct.shape[:2], ct.shape[2] * 2), np.uint8)
    label[10:20, 10:20, ct.shape[2] + 8:ct.shape[2] + 12] = 1
    save_nifti(label, ct.affine, val[0].label, dtype=np.uint8)

    out = tmp_path / "run"
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    cmd = [torchrun, "--nproc_per_node", "2", "--master_port", str(30500 + os.getpid() % 1000), "-m", "pemma.cli.main",
           "train", "--data", str(data), "--modalities", "ct", *FAST, "--val-fraction", "0.34", "--seed", "0",
           "--max-steps", "2", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode != 0
    expected = f"pemma train: error: {val[0].label}: the label of case {val[0].case_id} does not overlap the CT"
    # one line per rank, the same line (counted, not split into lines: two processes share stderr)
    assert proc.stderr.count(expected) == 2, proc.stderr[-3000:]
    assert proc.stderr.count("pemma train: error:") == 2, proc.stderr[-3000:]
    assert "unexpected error" not in proc.stderr, proc.stderr[-3000:]
    # no rank printed a Python traceback: the only one allowed is torchrun's own launcher report (ChildFailedError,
    # which torchrun prints whenever a process exits non-zero)
    tracebacks = proc.stderr.split("Traceback (most recent call last):")[1:]
    assert all(t.lstrip().startswith('File "') and "torchrun" in t.splitlines()[1] for t in tracebacks), \
        proc.stderr[-3000:]
    assert len(tracebacks) <= 1 and "/pemma/" not in proc.stderr, proc.stderr[-3000:]
