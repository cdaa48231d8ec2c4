"""The process group waits long enough for validation (on the main process while the others wait at a barrier):
``PEMMA_DIST_TIMEOUT_MINUTES``, default 120 minutes, instead of the backend's default (NCCL: 10 minutes)."""

from __future__ import annotations

import datetime

import pytest
import torch

from pemma import runtime
from pemma.errors import PemmaError


def test_the_process_group_is_joined_with_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    joined: dict = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(runtime.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(runtime.dist, "init_process_group", lambda **kw: joined.update(kw))
    monkeypatch.setattr(runtime.dist, "get_rank", lambda: 1)
    monkeypatch.setattr(runtime.dist, "get_world_size", lambda: 2)
    monkeypatch.delenv(runtime.DIST_TIMEOUT_ENV, raising=False)
    info = runtime.init_distributed(torch.device("cpu"))
    assert info.world_size == 2 and joined == {"backend": "gloo", "timeout": datetime.timedelta(minutes=120)}
    monkeypatch.setenv(runtime.DIST_TIMEOUT_ENV, "45")
    runtime.init_distributed(torch.device("cpu"))
    assert joined["timeout"] == datetime.timedelta(minutes=45)


@pytest.mark.parametrize("value", ["0", "-5", "ten"])
def test_a_bad_timeout_is_one_line(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(runtime.DIST_TIMEOUT_ENV, value)
    with pytest.raises(PemmaError, match=f"PEMMA_DIST_TIMEOUT_MINUTES='{value}': must be a positive number"):
        runtime.dist_timeout()
