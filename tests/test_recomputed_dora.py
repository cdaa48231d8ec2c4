"""DoRA layers recompute their output in backward (``AdapterConfig.recompute_dora``): same numbers, less kept."""

from __future__ import annotations

import pytest
import torch
from adapted_pairs import assert_same_step, same_adapted_weights, training_step
from monai.networks.nets import UNETR, SwinUNETR
from peft.tuners.lora import Linear as LoraLinear

from pemma.adapters import AdapterConfig
from pemma.adapters.recomputed_dora import RecomputedDoraLinear
from pemma.models.pemma_swin import PemmaSwinUNETR
from pemma.models.pemma_unetr import PemmaUNETR

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

UNETR_KW = {"img_size": 32, "feature_size": 8, "hidden_size": 48, "mlp_dim": 96, "num_heads": 4}
SWIN_KW = {"feature_size": 12, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1)}


def _pair(backbone: str, method: str = "dora", ct_update: bool = False):
    torch.manual_seed(0)
    if backbone == "unetr":
        base, build, shape = UNETR(1, 3, **UNETR_KW), PemmaUNETR, (1, 2, 32, 32, 32)
    else:
        base, build, shape = SwinUNETR(1, 3, **SWIN_KW), PemmaSwinUNETR, (1, 2, 64, 64, 64)
    models = [build(base, AdapterConfig(method=method, recompute_dora=False)),
              build(base, AdapterConfig(method=method))]
    same_adapted_weights(models, ct_update)
    return models, torch.rand(*shape, generator=torch.Generator().manual_seed(1))


def _saved_bytes(net: torch.nn.Module, x: torch.Tensor, mods: tuple[str, ...]) -> int:
    """Bytes of distinct storages autograd keeps for backward during one training forward."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(x, mods).sum().backward()
    return sum(seen.values())


@pytest.mark.parametrize("backbone", ["unetr", "swin_unetr"])
def test_recomputed_dora_equals_peft_dora_bit_for_bit_and_keeps_less(backbone: str):
    models, x = _pair(backbone)
    assert AdapterConfig().recompute_dora is True
    plain = [m for m in models[0].modules() if isinstance(m, LoraLinear)]
    recomputed = [m for m in models[1].modules() if isinstance(m, LoraLinear)]
    assert plain and not any(isinstance(m, RecomputedDoraLinear) for m in plain)
    assert len(recomputed) == len(plain) and all(isinstance(m, RecomputedDoraLinear) for m in recomputed)
    assert list(models[0].state_dict()) == list(models[1].state_dict())  # the same names: artifacts unchanged
    calls = [0]
    recomputed[0].base_layer.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    assert_same_step(training_step(models[0], x, ("ct", "pet")), training_step(models[1], x, ("ct", "pet")), atol=0.0)
    assert calls[0] == 2  # forward, and again in backward (the frozen linear inside the DoRA layer)
    assert _saved_bytes(models[1], x, ("ct", "pet")) < _saved_bytes(models[0], x, ("ct", "pet"))
    with torch.no_grad():  # inference runs peft's forward once
        assert torch.equal(models[1](x, ("ct", "pet")), models[0](x, ("ct", "pet")))
    assert calls[0] == 5  # + one more training step (2) + one inference call (1)


def test_recomputed_dora_runs_under_the_adapter_of_its_forward():
    """A CT-only update trains its own adapter inside ``adapter_active``; the recomputation in backward (after the
    context ended) must use that adapter, not the default one."""
    models, x = _pair("swin_unetr", ct_update=True)
    assert_same_step(training_step(models[0], x[:, :1], ("ct",)), training_step(models[1], x[:, :1], ("ct",)),
                     atol=0.0)


def test_lora_layers_and_the_flag():
    from pemma.cli.main import build_parser

    models, _ = _pair("unetr", method="lora")
    assert not any(isinstance(m, RecomputedDoraLinear) for m in models[1].modules())
    argv = ["adapt", "--base", "b", "--data", "d", "--out", "o"]
    assert build_parser().parse_args(argv).recompute_dora is None
    assert build_parser().parse_args([*argv, "--no-recompute-dora"]).recompute_dora is False
    with pytest.raises(ValueError, match="recompute_dora"):
        AdapterConfig(recompute_dora=1)
