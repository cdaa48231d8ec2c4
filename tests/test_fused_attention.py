"""Fused attention on the PEMMA copy of a UNETR: same outputs and gradients as MONAI's einsum attention."""

from __future__ import annotations

import pytest
import torch
from monai.networks.blocks.selfattention import SABlock
from monai.networks.nets import UNETR

from pemma.adapters import AdapterConfig
from pemma.adapters.merging import merge_adapters
from pemma.models.fused_attention import enable_fused_attention, fused_attention_off
from pemma.models.pemma_unetr import PemmaUNETR

UNETR_KW = {"img_size": 32, "feature_size": 8, "hidden_size": 48, "mlp_dim": 96, "num_heads": 4}

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def base() -> UNETR:
    torch.manual_seed(0)
    return UNETR(1, 3, **UNETR_KW).eval()


def _pair(base: UNETR, **cfg) -> tuple[PemmaUNETR, PemmaUNETR]:
    """The same adapted model with fused attention on and off (identical, non-zero trainable weights)."""
    fused = PemmaUNETR(base, AdapterConfig(fused_attention=True, **cfg))
    plain = PemmaUNETR(base, AdapterConfig(fused_attention=False, **cfg))
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in fused.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    plain.load_state_dict(fused.state_dict())
    return fused, plain


def _flags(model: torch.nn.Module) -> list[bool]:
    return [m.use_flash_attention for m in model.modules() if isinstance(m, SABlock)]


def test_switch_reaches_the_copy_only_and_is_recorded(base):
    fused, plain = _pair(base)
    assert _flags(fused) == [True] * 12 and _flags(plain) == [False] * 12
    assert len(fused.fused_attention_blocks) == 12 and plain.fused_attention_blocks == []
    assert _flags(base) == [False] * 12  # the caller's base is untouched
    assert fused.config.to_dict()["fused_attention"] is True
    assert AdapterConfig.from_dict(AdapterConfig(fused_attention=False).to_dict()).fused_attention is False
    with pytest.raises(ValueError, match="fused_attention"):
        AdapterConfig(fused_attention="yes")


@pytest.mark.parametrize("cfg", [{"method": "lora"}, {"method": "dora", "recipe": "authors", "ct_route": "shared",
                                                       "target_modules": ("attn.qkv.q", "attn.qkv.v")}],
                         ids=["lora", "dora-split-qkv"])
def test_outputs_and_gradients_equal_einsum_attention(base, cfg):
    fused, plain = _pair(base, **cfg)
    x = torch.rand(2, 2, 32, 32, 32, generator=torch.Generator().manual_seed(1))
    for mods in (("ct", "pet"), ("pet",), ("ct",)):
        xi = x[:, [("ct", "pet").index(m) for m in mods]]
        fused.zero_grad()
        plain.zero_grad()
        out_f, out_p = fused(xi, mods), plain(xi, mods)
        assert (out_f - out_p).abs().max().item() <= 1e-5, mods
        if not out_f.requires_grad:  # CT alone on the exact route: the frozen base, nothing to train
            continue
        out_f.square().mean().backward()
        out_p.square().mean().backward()
        grads = [(n, p.grad, dict(plain.named_parameters())[n].grad) for n, p in fused.named_parameters()
                 if p.requires_grad and p.grad is not None]
        assert grads
        for name, gf, gp in grads:
            scale = max(gp.abs().max().item(), 1e-8)
            assert (gf - gp).abs().max().item() <= 1e-4 * scale + 1e-7, name


def test_exact_ct_route_runs_the_base_attention_bit_for_bit(base):
    fused, _ = _pair(base)
    x = torch.rand(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(fused(x, ("ct",)), base(x))
    assert _flags(fused) == [True] * 12  # switched back on after the call
    merged = merge_adapters(fused.eval())
    assert _flags(merged) == [True] * 12


def test_unfusable_blocks_are_left_alone():
    torch.manual_seed(0)
    net = UNETR(1, 3, dropout_rate=0.1, **UNETR_KW)
    assert enable_fused_attention(net, "vit") == []
    net = UNETR(1, 3, **UNETR_KW)
    names = enable_fused_attention(net, "vit")
    assert names == [f"vit.blocks.{i}.attn" for i in range(12)]
    with fused_attention_off(net, names):
        assert _flags(net) == [False] * 12
    assert _flags(net) == [True] * 12
