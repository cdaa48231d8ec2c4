"""CPU bf16 guard for convolutions smaller than their kernel (pemma.training.precision)."""

from __future__ import annotations

import torch
from torch import nn

from pemma.training.engine import Engine
from pemma.training.precision import SmallInputFp32Conv3d, guard_small_convolutions


def _grads(conv: nn.Conv3d, x: torch.Tensor, g: torch.Tensor, amp: bool) -> tuple[torch.Tensor, torch.Tensor]:
    conv.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        y = conv(x)
    y.backward(g.to(y.dtype))
    return y, conv.weight.grad.clone()


def test_small_input_runs_in_fp32_under_bf16_autocast_and_its_weight_gradient_is_right():
    torch.manual_seed(0)
    conv = nn.Conv3d(24, 24, 3, padding=1)
    reference = nn.Conv3d(24, 24, 3, padding=1)
    reference.load_state_dict(conv.state_dict())
    assert guard_small_convolutions(conv) == 1 and isinstance(conv, SmallInputFp32Conv3d)
    assert conv.state_dict().keys() == reference.state_dict().keys()
    for _ in range(5):  # depth 2 < kernel 3: the shape whose bf16 weight gradient torch 2.13 gets wrong on AMX
        x, g = torch.randn(2, 24, 2, 4, 4), torch.randn(2, 24, 2, 4, 4)
        y, dw = _grads(conv, x, g, amp=True)
        y_ref, dw_ref = _grads(reference, x, g, amp=False)
        assert y.dtype == torch.float32
        torch.testing.assert_close(y, y_ref)
        torch.testing.assert_close(dw, dw_ref)


def test_other_inputs_are_untouched():
    torch.manual_seed(1)
    conv = nn.Conv3d(4, 4, 3, padding=1)
    plain = nn.Conv3d(4, 4, 3, padding=1)
    plain.load_state_dict(conv.state_dict())
    guard_small_convolutions(conv)
    x = torch.randn(1, 4, 6, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv(x).dtype == torch.bfloat16  # large enough: bf16 as before
        assert torch.equal(conv(x), plain(x))
    small = torch.randn(1, 4, 2, 6, 6)
    assert torch.equal(conv(small), plain(small))  # no autocast: exactly nn.Conv3d
    assert guard_small_convolutions(conv) == 0  # already guarded


def test_engine_guards_convolutions_only_for_cpu_amp():
    def net() -> nn.Module:
        return nn.Sequential(nn.Conv3d(1, 2, 3, padding=1), nn.ConvTranspose3d(2, 2, 2, stride=2))

    with_amp, without = net(), net()
    Engine(with_amp, total_steps=1, lr=1e-3, device=torch.device("cpu"), amp=True)
    Engine(without, total_steps=1, lr=1e-3, device=torch.device("cpu"), amp=False)
    assert type(with_amp[0]) is SmallInputFp32Conv3d and type(with_amp[1]) is nn.ConvTranspose3d
    assert type(without[0]) is nn.Conv3d
