"""Fused attention (``torch.nn.functional.scaled_dot_product_attention``) on the transformer blocks of a PEMMA copy.

MONAI's ``SABlock`` has a ``use_flash_attention`` switch that computes attention with torch's fused kernel
instead of an explicit ``einsum`` / softmax / ``einsum`` chain (no (tokens x tokens) attention matrix is kept for
backward). ``TransformerBlock`` accepts it, but MONAI 1.6.1's ``UNETR`` and ``ViT`` constructors do not pass it on,
so a UNETR is always built without it. The switch is a plain attribute read in ``SABlock.forward``, so it can be
turned on in the PEMMA model's own copy of the base after construction; the parameters and the state dict stay as
they are (saved CT models and adapters are unchanged).

It is turned on only where it computes the same thing: not for blocks that keep their attention matrix
(``save_attn``), use a relative positional embedding (which SDPA does not take) or have attention dropout
(``SABlock`` passes ``dropout_rate`` to SDPA also in eval mode).

Measured on one CPU thread (benchmarks/README.md, ``bench_levers.py``): the paper UNETR's attention block forward +
backward at 432 tokens takes ~0.82x the time, the PEMMA step's peak memory drops by ~350 MiB; outputs equal the
einsum path to float rounding (~3e-7).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from monai.networks.blocks.selfattention import SABlock
from torch import nn

__all__ = ["enable_fused_attention", "fused_attention_off"]


def _fusable(block: SABlock) -> bool:
    return not block.use_flash_attention and not block.save_attn and block.rel_positional_embedding is None \
        and float(block.dropout_rate) == 0.0


def enable_fused_attention(net: nn.Module, transformer_name: str) -> list[str]:
    """Turn on ``use_flash_attention`` on the ``SABlock`` modules of ``net.<transformer_name>`` that are off.

    Args:
        net: the network (edited in place: pass the PEMMA model's own copy, never the caller's base).
        transformer_name: the attribute holding the transformer (``"vit"`` for UNETR).

    Returns:
        the names (relative to ``net``) of the blocks switched on; already-fused and unfusable blocks are left out.
    """
    prefix = transformer_name + "."
    names = []
    for name, module in net.named_modules():
        if name.startswith(prefix) and isinstance(module, SABlock) and _fusable(module):
            module.use_flash_attention = True
            names.append(name)
    return names


@contextmanager
def fused_attention_off(net: nn.Module, names: Sequence[str]) -> Iterator[None]:
    """Within the block, the listed blocks of ``net`` compute attention as the base did (einsum path).

    Used by the exact CT route, which must give the base model's output bit for bit.

    Args:
        net: the network holding the blocks.
        names: what :func:`enable_fused_attention` returned.
    """
    blocks = [net.get_submodule(n) for n in names]
    for block in blocks:
        block.use_flash_attention = False
    try:
        yield
    finally:
        for block in blocks:
            block.use_flash_attention = True
