"""Gradient checkpointing: same module tree, outputs and gradients as without it; PEMMA copies stay exact."""

from __future__ import annotations

import pytest
import torch
from adapted_pairs import assert_same_step, same_adapted_weights, training_step
from monai.networks.nets import UNETR, SwinUNETR

from pemma.adapters import AdapterConfig
from pemma.config import build_config
from pemma.models.checkpointed_unetr import CheckpointedUNETR
from pemma.models.pemma_swin import PemmaSwinUNETR
from pemma.models.pemma_unetr import PemmaUNETR
from pemma.models.registry import build_backbone

UNETR_KW = {"img_size": 32, "feature_size": 8, "hidden_size": 48, "mlp_dim": 96, "num_heads": 4}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _block_calls(net: torch.nn.Module) -> list[int]:
    """A counter of calls to the first transformer block (2 per training step when it is recomputed)."""
    calls = [0]
    net.vit.blocks[0].register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_build_backbone_checkpointed_unetr_keeps_tree_and_init():
    cfg = build_config("tiny").model
    cfg_ck = build_config("tiny", overrides={"model": {"gradient_checkpointing": True}}).model
    if cfg.backbone != "unetr":
        pytest.skip("tiny preset is not UNETR")
    torch.manual_seed(0)
    plain = build_backbone(cfg, in_channels=1)
    torch.manual_seed(0)
    ck = build_backbone(cfg_ck, in_channels=1)
    assert type(plain) is UNETR and isinstance(ck, CheckpointedUNETR) and ck.gradient_checkpointing
    assert [n for n, _ in ck.named_parameters()] == [n for n, _ in plain.named_parameters()]
    sd, sd_ck = plain.state_dict(), ck.state_dict()
    assert list(sd) == list(sd_ck) and all(torch.equal(sd[k], sd_ck[k]) for k in sd)
    assert not any("forward" in m.__dict__ for m in ck.modules())  # nothing patched onto instances


def test_checkpointed_unetr_equals_unetr_outputs_and_gradients():
    torch.manual_seed(0)
    plain = UNETR(1, 3, **UNETR_KW).train()
    ck = CheckpointedUNETR(1, 3, **UNETR_KW).train()
    ck.load_state_dict(plain.state_dict())
    x = torch.rand(2, 1, 32, 32, 32, generator=torch.Generator().manual_seed(1))
    calls_plain, calls_ck = _block_calls(plain), _block_calls(ck)
    assert_same_step(training_step(plain, x), training_step(ck, x))
    assert calls_plain == [1] and calls_ck == [2]  # forward, and the recomputation in backward
    with torch.no_grad():  # inference: UNETR.forward itself, nothing recomputed
        assert torch.equal(ck(x), plain(x)) and calls_ck == [3]
    ck.gradient_checkpointing = False
    training_step(ck, x)
    assert calls_ck == [4]


@pytest.mark.parametrize("ct_update", [False, True])
def test_pemma_unetr_on_checkpointed_base_equals_plain(ct_update: bool):
    """CT alone runs the copied base inside peft adapter contexts: no recomputation may run outside them."""
    torch.manual_seed(0)
    plain = UNETR(1, 3, **UNETR_KW)
    ck = CheckpointedUNETR(1, 3, **UNETR_KW)
    ck.load_state_dict(plain.state_dict())
    models = [PemmaUNETR(plain), PemmaUNETR(ck, gradient_checkpointing=True)]
    assert models[1].net.gradient_checkpointing is False and ck.gradient_checkpointing is True
    same_adapted_weights(models, ct_update)
    x = torch.rand(1, 2, 32, 32, 32, generator=torch.Generator().manual_seed(1))
    if ct_update:  # only the CT adapter trains
        assert_same_step(training_step(models[0], x[:, :1], ("ct",)), training_step(models[1], x[:, :1], ("ct",)))
    else:
        assert_same_step(training_step(models[0], x, ("ct", "pet")), training_step(models[1], x, ("ct", "pet")))


def test_pemma_swin_ct_update_on_checkpointed_base_equals_plain():
    """MONAI's use_checkpoint in the copied Swin base: a CT-only update gets the non-checkpointed gradients."""
    kw = {"feature_size": 12, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1)}
    torch.manual_seed(0)
    plain = SwinUNETR(1, 3, **kw)
    ck = SwinUNETR(1, 3, use_checkpoint=True, **kw)
    ck.load_state_dict(plain.state_dict())
    models = [PemmaSwinUNETR(plain, AdapterConfig()), PemmaSwinUNETR(ck, AdapterConfig())]
    same_adapted_weights(models, ct_update=True)
    x = torch.rand(1, 1, 64, 32, 32, generator=torch.Generator().manual_seed(1))
    assert_same_step(training_step(models[0], x, ("ct",)), training_step(models[1], x, ("ct",)))
    assert all(m.use_checkpoint for m in models[1].net.modules() if hasattr(m, "use_checkpoint"))  # restored


def _calls(module: torch.nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("backbone", ["unetr", "swin_unetr"])
def test_full_resolution_checkpointing_equals_plain_and_recomputes(backbone: str):
    """``checkpoint_full_resolution`` (the default): the same outputs and gradients as without it, bit for bit; the
    first skip encoder and the PET skip block run twice per training step (forward, recomputation in backward), the
    last decoder once; every module once in inference."""
    torch.manual_seed(0)
    if backbone == "unetr":
        base, shape, last = UNETR(1, 3, **UNETR_KW), (1, 2, 32, 32, 32), "decoder2"
        build = PemmaUNETR
    else:
        base = SwinUNETR(1, 3, feature_size=12, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))
        shape, last, build = (1, 2, 64, 64, 64), "decoder1", PemmaSwinUNETR
    assert AdapterConfig().checkpoint_full_resolution is True
    models = [build(base, AdapterConfig(checkpoint_full_resolution=False)), build(base, AdapterConfig())]
    same_adapted_weights(models)
    watched = [_calls(m) for m in (models[1].net.encoder1, models[1].pet_skip, getattr(models[1].net, last))]
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(1))
    assert_same_step(training_step(models[0], x, ("ct", "pet")), training_step(models[1], x, ("ct", "pet")), atol=0.0)
    # Swin's encoder1 is frozen and reads the CT (no gradient): autograd records nothing there, so nothing is
    # recomputed; UNETR trains its encoder1
    first = 2 if any(p.requires_grad for p in models[1].net.encoder1.parameters()) else 1
    assert first == (2 if backbone == "unetr" else 1)
    assert [c[0] for c in watched] == [first, 2, 1]
    with torch.no_grad():
        assert torch.equal(models[1](x, ("ct", "pet")), models[0](x, ("ct", "pet")))
    assert [c[0] for c in watched] == [first + 1, 3, 2]


def test_full_resolution_checkpointing_is_a_flag_and_validated():
    from pemma.cli.main import build_parser

    argv = ["adapt", "--base", "b", "--data", "d", "--out", "o"]
    assert build_parser().parse_args(argv).checkpoint_full_resolution is None  # not given: the config's default
    assert build_parser().parse_args([*argv, "--checkpoint-full-resolution"]).checkpoint_full_resolution is True
    assert build_parser().parse_args([*argv, "--no-checkpoint-full-resolution"]).checkpoint_full_resolution is False
    with pytest.raises(ValueError, match="checkpoint_full_resolution"):
        AdapterConfig(checkpoint_full_resolution="yes")


def test_recomputation_sees_the_adapter_state_of_the_forward():
    """A block checkpointed inside ``adapter_active`` is recomputed in backward after the context ended; with
    ``recompute_as_now`` it runs under the forward's adapter, so the gradients are those of the plain block."""
    from peft import LoraConfig, inject_adapter_in_model
    from torch.utils.checkpoint import checkpoint

    from pemma.adapters.state import adapter_active, recompute_as_now

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh(), torch.nn.Linear(8, 8))
    for name in ("a", "b"):
        net = inject_adapter_in_model(LoraConfig(r=2, target_modules=["0", "2"], init_lora_weights=False), net,
                                      adapter_name=name)
    for layer in (net[0], net[2]):
        layer.set_adapter("a")  # "a" active outside the context, as a model's default adapter would be
    for p in net.parameters():
        p.requires_grad_("lora_" in "".join(n for n, q in net.named_parameters() if q is p))
    x = torch.randn(4, 8)

    def grads(run) -> dict[str, torch.Tensor]:
        net.zero_grad(set_to_none=True)
        with adapter_active(net, "b"):
            out = run()
        out.square().sum().backward()
        return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}

    plain = grads(lambda: net(x))
    guarded = grads(lambda: checkpoint(net, x, use_reentrant=False, context_fn=recompute_as_now(net)))
    unguarded = grads(lambda: checkpoint(net, x, use_reentrant=False))
    assert plain.keys() == guarded.keys() and all(".b." in n for n in plain)
    for n in plain:
        torch.testing.assert_close(guarded[n], plain[n], rtol=0, atol=0)
    # without it the recomputation ran adapter "a": the gradients reach b's parameters with a's activations, silently
    assert unguarded.keys() == plain.keys() and any(not torch.allclose(unguarded[n], plain[n]) for n in plain)
