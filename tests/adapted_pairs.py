"""Two PEMMA models with the same weights (one with a memory lever on, one without), and one training step of each:
the helpers of the tests that compare a recomputation with the plain forward bit for bit."""

from __future__ import annotations

import torch


def same_adapted_weights(models: list[torch.nn.Module], ct_update: bool = False) -> None:
    """Put ``models`` in training mode (after adding a CT-update adapter with ``ct_update``), perturb the first one's
    adapters and trainable parts as if adaptation had happened (LoRA B and the PET skip output start at zero), and
    copy its weights into the others."""
    for model in models:
        if ct_update:
            model.add_ct_adapter()
        model.train()
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in models[0].named_parameters():
            if ".lora_" in name or p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    for model in models[1:]:
        model.load_state_dict(models[0].state_dict())


def training_step(net: torch.nn.Module, x: torch.Tensor, *args) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Output and every parameter gradient of one forward + backward of ``net(x, *args)``."""
    net.zero_grad()
    out = net(x, *args)
    (out.square().mean() + out[:, 1].mean()).backward()
    return out.detach(), {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


def assert_same_step(a, b, atol: float = 1e-6) -> None:
    """Two :func:`training_step` results agree to ``atol`` (0: bit for bit), with the same gradients present."""
    (out_a, grads_a), (out_b, grads_b) = a, b
    assert torch.allclose(out_a, out_b, atol=atol, rtol=0)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], atol=atol, rtol=0), name
