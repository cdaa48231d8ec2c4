"""The crop-box way of putting probabilities back on the CT grid gives the labels of the full-volume way."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from pemma.config import build_config
from pemma.data.layout import discover_cases
from pemma.data.transforms import preprocessing
from pemma.inference.resample_back import labels_on_reference, probs_on_box, reference_box
from pemma.inference.sliding import sliding_window_probs

REAL_CT = Path(__file__).resolve().parent / "data" / "lung1_ct.nii.gz"


def _oblique(spacing, degrees: float, origin) -> np.ndarray:
    t = np.deg2rad(degrees)
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag(spacing)
    aff[:3, 3] = origin
    return aff


def _smooth_probs(shape, seed: int) -> torch.Tensor:
    """Softmax of smooth random logits: three classes with large regions and class boundaries (near ties)."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn((1, 3, *[max(2, s // 6) for s in shape]), generator=gen) * 4
    logits = torch.nn.functional.interpolate(coarse, size=list(shape), mode="trilinear", align_corners=False)
    return torch.softmax(logits[0], dim=0)


@pytest.mark.parametrize("src_spacing, degrees", [((3.0, 3.0, 3.0), 0.0), ((2.0, 2.5, 3.0), 20.0)])
def test_crop_box_equals_full_volume(src_spacing, degrees) -> None:
    ref_affine = _oblique((0.9, 0.9, 1.5), 0.0, (-100.0, -80.0, 30.0))
    ref_shape = (160, 150, 70)
    # a source grid well inside the reference, as the head-and-neck crop is: the box is a fraction of the CT
    src_affine = _oblique(src_spacing, degrees, (-50.0, -40.0, 60.0))
    probs = MetaTensor(_smooth_probs((20, 18, 16), seed=3), affine=torch.as_tensor(src_affine))
    full = labels_on_reference(probs, ref_affine, ref_shape, crop_box=False)
    crop = labels_on_reference(probs, ref_affine, ref_shape)
    assert crop.dtype == np.uint8 and crop.shape == ref_shape
    assert len(np.unique(full)) == 3  # all classes present, so boundaries (near ties) are compared too
    np.testing.assert_array_equal(crop, full)
    start, end = reference_box(src_affine, (20, 18, 16), ref_affine, ref_shape)
    box_voxels = np.prod(np.subtract(end, start))
    assert box_voxels < 0.5 * np.prod(ref_shape)  # the point of it: far less than the whole CT is resampled
    outside = np.ones(ref_shape, dtype=bool)
    outside[start[0]:end[0], start[1]:end[1], start[2]:end[2]] = False
    assert not full[outside].any()  # nothing non-background outside the box in the full-volume result either


@pytest.mark.parametrize("degrees", [0.0, 35.0])
def test_foreground_up_to_the_edge_of_the_crop(degrees) -> None:
    """Foreground on the crop's border: the box must hold every CT voxel the bilinear resampling reaches."""
    probs = torch.zeros((3, 12, 10, 9))
    probs[0], probs[2] = 0.1, 0.9
    probs = MetaTensor(probs, affine=torch.as_tensor(_oblique((2.7, 3.1, 2.2), degrees, (5.3, 7.1, 4.9))))
    ref_affine = _oblique((1.1, 0.9, 1.3), 0.0, (-10.0, -12.0, -8.0))
    full = labels_on_reference(probs, ref_affine, (80, 90, 60), crop_box=False)
    crop = labels_on_reference(probs, ref_affine, (80, 90, 60))
    assert full.any()
    np.testing.assert_array_equal(crop, full)


def test_source_outside_reference_gives_background() -> None:
    probs = MetaTensor(_smooth_probs((8, 8, 8), seed=1), affine=torch.as_tensor(_oblique((3, 3, 3), 0, (900, 0, 0))))
    label = labels_on_reference(probs, np.eye(4), (20, 20, 20))
    assert label.shape == (20, 20, 20) and not label.any()
    assert reference_box(np.asarray(probs.affine), (8, 8, 8), np.eye(4), (20, 20, 20)) is None


def test_crop_box_equals_full_volume_on_real_ct_pipeline() -> None:
    """The real chest CT (LPS flips, 5 mm slices) through the predict preprocessing, a network-free 'segmenter'."""
    cfg = build_config("tiny", overrides={"preprocess": {"ct_window": [-300.0, 500.0], "target_spacing": [2, 2, 2],
                                                         "crop_mm": [60, 60, 60]}})
    (case,) = discover_cases(REAL_CT)
    image = preprocessing(["ct"], cfg.preprocess, [32, 32, 32], with_label=False)(
        {"case_id": case.case_id, "ct": case.images["ct"]})["image"]

    def threshold_net(x: torch.Tensor) -> torch.Tensor:
        fg = 20.0 * (x[:, :1] - 0.5)
        return torch.cat([torch.zeros_like(fg), fg, 0.5 * fg + 2.0], dim=1)

    probs = sliding_window_probs(threshold_net, image.as_tensor(), [32, 32, 32], overlap=0.25)
    probs = MetaTensor(probs, affine=image.affine)
    ref = nib.load(str(REAL_CT))
    full = labels_on_reference(probs, ref.affine, ref.shape[:3], crop_box=False)
    crop = labels_on_reference(probs, ref.affine, ref.shape[:3])
    assert full.any() and len(np.unique(full)) >= 2
    np.testing.assert_array_equal(crop, full)


@pytest.mark.parametrize("degrees", [0.0, 25.0])
def test_box_values_bit_identical_to_monai_whole_grid(degrees) -> None:
    """Not just the labels: the resampled probabilities in the box are MONAI's whole-grid values bit for bit (a box
    resampled as a grid of its own rounds differently and flipped near-tie voxels on clinical-size CTs)."""
    from monai.transforms import SpatialResample

    ref_affine, ref_shape = _oblique((0.98, 0.98, 1.0), 0.0, (-120.0, -110.0, -20.0)), (240, 230, 40)
    src_affine = _oblique((3.0, 3.0, 3.0), degrees, (-60.0, -50.0, -15.0))
    probs = MetaTensor(_smooth_probs((30, 28, 16), seed=7), affine=torch.as_tensor(src_affine))
    full = SpatialResample(mode="bilinear", padding_mode="zeros", dtype=torch.float32)(
        probs, dst_affine=torch.as_tensor(ref_affine), spatial_size=ref_shape).as_tensor()
    start, end = reference_box(src_affine, probs.shape[1:], ref_affine, ref_shape)
    box = probs_on_box(probs, ref_affine, ref_shape, start, end)
    assert torch.equal(box, full[:, start[0]:end[0], start[1]:end[1], start[2]:end[2]])
    full[:, start[0]:end[0], start[1]:end[1], start[2]:end[2]] = 0
    assert not full.any()  # nothing outside the box


@pytest.mark.parametrize("classes", [1, 2, 3, 5])
def test_labels_of_equals_argmax_with_ties(classes: int) -> None:
    from pemma.inference.sliding import labels_of

    generator = torch.Generator().manual_seed(classes)
    scores = torch.randint(0, 4, (classes, 9, 8, 7), generator=generator).float() / 4  # many ties
    labels = labels_of(scores)
    assert labels.dtype == torch.uint8 and labels.shape == scores.shape[1:]
    assert torch.equal(labels, scores.argmax(0).to(torch.uint8))  # a tie goes to the first class, as argmax
    probs = torch.softmax(torch.randn(classes, 20, 20, 20, generator=generator), 0)
    assert torch.equal(labels_of(probs), probs.argmax(0).to(torch.uint8))
