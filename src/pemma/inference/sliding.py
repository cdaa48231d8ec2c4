"""Sliding-window inference (MONAI) with optional mixed precision."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from monai.inferers import sliding_window_inference


def autocast(device: torch.device, enabled: bool) -> torch.autocast:
    """fp16 autocast on CUDA, bf16 on CPU; a no-op context when disabled."""
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=enabled)


@torch.no_grad()
def sliding_window_probs(predictor: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor,
                         roi_size: Sequence[int], sw_batch_size: int = 2, overlap: float = 0.25,
                         device: torch.device | None = None, amp: bool = False) -> torch.Tensor:
    """Softmax probabilities of a whole volume.

    Args:
        predictor: maps a (B, C, *roi_size) window to (B, K, *roi_size) logits.
        image: (C, D, H, W) or (1, C, D, H, W) tensor (a MetaTensor keeps its affine).
        roi_size: window size. sw_batch_size: windows per forward pass. Default 2.
        overlap: window overlap in [0, 1). Default 0.25.
        device: where the network runs (windows are stitched on the image's device).
        amp: mixed precision. Default False.

    Returns:
        (K, D, H, W) float32 probabilities on the CPU.
    """
    batch = image if image.ndim == 5 else image[None]
    device = device or batch.device
    with autocast(device, amp):
        logits = sliding_window_inference(batch, list(roi_size), sw_batch_size, predictor, overlap=overlap,
                                          mode="gaussian", sw_device=device, device=torch.device("cpu"))
    return torch.softmax(logits.float(), dim=1)[0]
