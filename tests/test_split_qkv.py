"""Adapters on Q and V only: MONAI's fused ``attn.qkv`` split into q, k, v Linears with the same weights."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import UNETR, SwinUNETR
from peft.tuners.lora import LoraLayer
from torch import nn

from pemma.adapters import AdapterConfig, merge_adapters
from pemma.adapters.split_qkv import SplitQKV, needs_split, split_fused_qkv
from pemma.models.pemma_swin import PemmaSwinUNETR
from pemma.models.pemma_unetr import PemmaUNETR

UNETR_KW = {"img_size": 32, "feature_size": 8, "hidden_size": 48, "mlp_dim": 96, "num_heads": 4}
SWIN_KW = {"feature_size": 12, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1)}
NETS = {"unetr": (UNETR, UNETR_KW, PemmaUNETR, (1, 1, 32, 32, 32), "vit"),
        "swin_unetr": (SwinUNETR, SWIN_KW, PemmaSwinUNETR, (1, 1, 64, 32, 32), "swinViT")}
QV = ("attn.qkv.q", "attn.qkv.v")


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.mark.parametrize("bias", [True, False])
def test_split_layer_equals_fused(bias: bool) -> None:
    torch.manual_seed(0)
    fused = nn.Linear(24, 72, bias=bias)
    split = SplitQKV.from_fused(fused)
    x = torch.randn(3, 7, 24)
    assert torch.allclose(split(x), fused(x), atol=1e-6)
    assert torch.equal(split.k.weight, fused.weight[24:48])
    with pytest.raises(ValueError, match="3\\*C outputs"):
        SplitQKV.from_fused(nn.Linear(4, 5))


@pytest.mark.parametrize("backbone", list(NETS))
def test_split_network_equals_fused_network(backbone: str) -> None:
    klass, kwargs, _, shape, transformer = NETS[backbone]
    torch.manual_seed(0)
    net = klass(in_channels=1, out_channels=3, **kwargs).eval()
    x = torch.rand(shape)
    with torch.no_grad():
        reference = net(x)
        names = split_fused_qkv(net, transformer)
        split = net(x)
    assert names and all(n.startswith(transformer + ".") and n.endswith("attn.qkv") for n in names)
    assert all(isinstance(net.get_submodule(n), SplitQKV) for n in names)
    assert (split - reference).abs().max() < 1e-6


@pytest.mark.parametrize("backbone", list(NETS))
def test_lora_on_q_and_v_only(backbone: str) -> None:
    klass, kwargs, pemma_class, shape, _ = NETS[backbone]
    torch.manual_seed(0)
    base = klass(in_channels=1, out_channels=3, **kwargs)
    assert needs_split(QV) and not needs_split(("attn.qkv", "attn.proj"))
    model = pemma_class(base, AdapterConfig(rank=2, target_modules=QV))
    adapted = {n.rsplit(".", 1)[-1] for n, m in model.base_model.named_modules() if isinstance(m, LoraLayer)}
    assert adapted == {"q", "v"}
    assert model.split_qkv
    assert not any(isinstance(m, SplitQKV) for m in base.modules())  # the caller's base is untouched
    x = torch.rand(shape[0], 2, *shape[2:])
    with torch.no_grad():  # LoRA B starts at zero: the adapted model starts from the base's function on CT alone
        ct = model(x[:, :1], ("ct",))
        assert (ct - base.eval()(x[:, :1])).abs().max() < 1e-6
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.add_(0.01)
        merged = merge_adapters(model).eval()
        assert (merged(x, ("ct", "pet")) - model.eval()(x, ("ct", "pet"))).abs().max() < 1e-5
