"""PEMMA UNETR / Swin UNETR: shapes, CT not forgotten, adapters (trainable set, save/load, merge), channel order.

Table-driven over backbone × {lora, dora} × input modalities, on tiny networks (CPU, a few seconds each).
DDP note (nothing to test here): a CT-only step runs the frozen base, so no PEMMA parameter gets a
gradient; a PET-only step leaves Swin's ct+pet fusion projection unused and a ct+pet step its PET adapter.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch
from monai.networks.nets import UNETR, SwinUNETR

from pemma import MODALITY_ORDER
from pemma.adapters import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    AdapterConfig,
    format_load_report,
    load_adapter,
    load_base_state,
    merge_adapters,
    read_adapter_config,
    save_adapter,
)
from pemma.adapters.config import NEW_PARTS
from pemma.errors import PemmaError
from pemma.io_utils import sha256_file
from pemma.models.accounting import count_parameters, parameter_report
from pemma.models.pemma_swin import PemmaSwinUNETR
from pemma.models.pemma_unetr import PemmaUNETR

UNETR_KW = {"img_size": 32, "feature_size": 8, "hidden_size": 48, "mlp_dim": 96, "num_heads": 4}
SWIN_KW = {"feature_size": 12, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1)}
# backbone -> (MONAI class, kwargs, PEMMA class, (batch, D, H, W)); Swin needs every side divisible by 32
# and more than one voxel at the 1/32 bottleneck (instance norm), hence 64 x 32 x 32.
SPEC = {
    "unetr": (UNETR, UNETR_KW, PemmaUNETR, (2, 32, 32, 32)),
    "swin_unetr": (SwinUNETR, SWIN_KW, PemmaSwinUNETR, (1, 64, 32, 32)),
}
BACKBONES = list(SPEC)
METHODS = ["lora", "dora"]
MODALITY_SETS = [("ct", "pet"), ("ct",), ("pet",)]
# number of adapted Linear layers with the default targets: UNETR 12 blocks x qkv; Swin 4 blocks x (qkv, proj)
N_TARGETS = {"unetr": 12, "swin_unetr": 8}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def bases() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {name: cls(1, 3, **kw).eval() for name, (cls, kw, _, _) in SPEC.items()}


def build(bases, backbone: str, method: str = "lora", **cfg):
    return SPEC[backbone][2](bases[backbone], AdapterConfig(method=method, **cfg)).eval()


def volume(backbone: str, seed: int = 1) -> torch.Tensor:
    batch, *spatial = SPEC[backbone][3]
    return torch.rand(batch, len(MODALITY_ORDER), *spatial, generator=torch.Generator().manual_seed(seed))


def run(model, x: torch.Tensor, modalities) -> torch.Tensor:
    """Model output for the given modalities of a full [CT, PET] volume."""
    with torch.no_grad():
        return model(x[:, [MODALITY_ORDER.index(m) for m in modalities]], modalities)


def perturb(model, seed: int = 7, scale: float = 0.05) -> None:
    """Pretend adaptation happened: random changes to every trainable parameter."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * scale)


def maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("modalities", MODALITY_SETS, ids="+".join)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("backbone", BACKBONES)
def test_output_shape(bases, backbone, method, modalities):
    model, x = build(bases, backbone, method), volume(backbone)
    out = run(model, x, modalities)
    assert out.shape == (x.shape[0], 3, *x.shape[2:])
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("backbone", BACKBONES)
def test_ct_only_equals_base_before_and_after_training(bases, backbone, method):
    base, model, x = bases[backbone], build(bases, backbone, method), volume(backbone)
    with torch.no_grad():
        reference = base(x[:, :1])
    assert maxdiff(run(model, x, ("ct",)), reference) <= 1e-6
    before = run(model, x, ("ct", "pet"))
    if backbone == "swin_unetr":  # fusion starts by passing CT through and the PET skip adds zero
        assert maxdiff(before, reference) <= 1e-5
    perturb(model)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    assert maxdiff(run(model, x, ("ct",)), reference) <= 1e-6
    assert maxdiff(run(model, x, ("ct", "pet")), before) > 1e-4  # the adapters are really in use
    assert flags == {n: p.requires_grad for n, p in model.named_parameters()}  # forward leaves grads alone


def test_base_object_not_modified(bases):
    base = bases["unetr"]
    snapshot = {k: v.clone() for k, v in base.state_dict().items()}
    model = build(bases, "unetr", "dora")
    perturb(model)
    assert not any(type(m).__module__.startswith("peft") for m in base.modules())
    assert all(torch.equal(v, snapshot[k]) for k, v in base.state_dict().items())


def trainable_names(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("backbone", BACKBONES)
def test_trainable_set_matches_config_and_base_stays_frozen(bases, backbone, method):
    model, x = build(bases, backbone, method), volume(backbone)
    cfg, names = model.config, [n for n, _ in model.named_parameters()]
    new_parts = [p for p in cfg.train_parts if p in NEW_PARTS[backbone]]
    base_parts = [p for p in cfg.train_parts if p not in NEW_PARTS[backbone]]
    expected = {n for n in names if n.split(".")[0] in new_parts}
    expected |= {n for n in names for p in base_parts if n.startswith(f"base_model.model.{p}.modules_to_save.ctpet.")}
    lora = {n for n in names if any(f".{k}.ctpet" in n for k in ("lora_A", "lora_B", "lora_magnitude_vector"))}
    expected |= lora
    assert trainable_names(model) == expected
    assert set(model.adapter_state_dict()) == expected
    assert sum(".lora_A.ctpet." in n for n in lora) == N_TARGETS[backbone]
    assert any("lora_magnitude_vector" in n for n in lora) == (method == "dora")
    for n in lora:  # adapters sit only on the configured projections of the transformer
        module = n.split(".lora_")[0]
        assert module.startswith(f"base_model.model.{model.transformer_name}.")
        assert any(module.endswith("." + t) for t in cfg.target_modules)

    perturb(model)  # LoRA B and the PET skip output start at zero, which blocks gradients to A / the block
    frozen = {k: v.clone() for k, v in model.state_dict().items() if k not in model.adapter_state_dict()}
    adapted = {k: v.clone() for k, v in model.adapter_state_dict().items()}
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss = model(x, ("ct", "pet")).square().mean() + model(x[:, 1:], ("pet",)).square().mean()
    loss.backward()
    opt.step()
    assert not model(x[:, :1], ("ct",)).requires_grad  # CT-only steps train nothing
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in frozen.items())
    changed = [k for k, v in adapted.items() if not torch.equal(state[k], v)]
    assert len(changed) == len(adapted), sorted(set(adapted) - set(changed))[:5]
    model.eval()
    with torch.no_grad():
        assert maxdiff(run(model, x, ("ct",)), bases[backbone](x[:, :1])) <= 1e-6


def test_named_adapters(bases):
    model = build(bases, "swin_unetr")
    assert model.adapter_names == ["ctpet"] and model.active_adapters == ["ctpet"]
    model.set_adapter("ctpet")
    assert model.active_adapters == ["ctpet"]
    with pytest.raises(ValueError, match="unknown adapter"):
        model.set_adapter("ct_update")
    with pytest.raises(ValueError, match="adapter_name"):
        PemmaSwinUNETR(bases["swin_unetr"], adapter_name="ct+pet")


def test_custom_targets_and_parts(bases):
    model = build(bases, "unetr", "lora", target_modules=("attn.qkv", "mlp.linear1"), train_parts=("pet_skip",))
    trainable = trainable_names(model)
    assert all(n.startswith("pet_skip.") or ".lora_" in n for n in trainable)
    assert sum(".lora_A." in n for n in trainable) == 24
    assert not any(p.requires_grad for p in model.pet_embedding.parameters())
    with pytest.raises(ValueError, match="matches no Linear"):
        build(bases, "unetr", target_modules=("attn.nope",))
    with pytest.raises(ValueError, match="train_parts"):
        build(bases, "unetr", train_parts=("decoder9",))
    with pytest.raises(ValueError, match="do not exist for backbone"):
        build(bases, "unetr", train_parts=("fusion",))


def test_swin_parts_that_leave_pet_no_way_in_are_refused(bases):
    # Swin's PET enters through the fusion (it starts by passing CT through) or the PET skip block (zero at the
    # start): at the start PET changes nothing, so parts training neither would leave a model that ignores PET
    x = volume("swin_unetr")
    model = build(bases, "swin_unetr")
    no_pet = x.clone()
    no_pet[:, 1] = 0
    assert torch.equal(run(model, x, ("ct", "pet")), run(model, no_pet, ("ct", "pet")))
    bad = AdapterConfig(train_parts=("pet_embedding", "encoder2", "decoder2", "out"))
    with pytest.raises(ValueError, match=r"train none of \['fusion', 'pet_skip'\].*CT\+PET predictions could never"):
        bad.check_added_modality_reaches("swin_unetr")
    # a run adapted so before the check still loads (the check guards new adaptations: methods.pemma.pemma_task)
    assert trainable_names(build(bases, "swin_unetr", train_parts=bad.train_parts))
    for parts in (("fusion",), ("pet_skip",)):
        AdapterConfig(train_parts=parts).check_added_modality_reaches("swin_unetr")
    AdapterConfig(train_parts=("encoder2",)).check_added_modality_reaches("unetr")
    # UNETR's PET tokens join the attention from the start: any parts will do
    unetr, y = build(bases, "unetr", train_parts=("encoder2",)), volume("unetr")
    no_pet = y.clone()
    no_pet[:, 1] = 0
    assert not torch.equal(run(unetr, y, ("ct", "pet")), run(unetr, no_pet, ("ct", "pet")))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("backbone", BACKBONES)
def test_save_load_roundtrip(bases, backbone, method, tmp_path):
    torch.save(bases[backbone].state_dict(), tmp_path / "base.pt")
    sha, x = sha256_file(tmp_path / "base.pt"), volume(backbone)
    model = build(bases, backbone, method)
    perturb(model)
    info = save_adapter(model, tmp_path / "adapter", sha, extra_config={"backbone_kwargs": {"feature_size": 8}})
    weights = tmp_path / "adapter" / WEIGHTS_NAME
    assert info["adapter_bytes"] == weights.stat().st_size
    assert info["parameters"] == count_parameters(model)[0]
    meta = read_adapter_config(tmp_path / "adapter")
    assert meta["base_sha256"] == sha and meta["adapter_config"]["method"] == method
    assert meta["base"] == {"backbone_kwargs": {"feature_size": 8}}

    fresh = build(bases, backbone, method)
    load_adapter(fresh, tmp_path / "adapter", sha)
    for mods in MODALITY_SETS:
        assert torch.equal(run(fresh, x, mods), run(model, x, mods))


def test_adapter_refuses_foreign_base_and_bad_files(bases, tmp_path):
    model, out = build(bases, "unetr"), tmp_path / "adapter"
    sha_a, sha_b = "a" * 64, "b" * 64
    save_adapter(model, out, sha_a)
    with pytest.raises(PemmaError, match=f"adapter was trained on base {'a' * 12} but this base is {'b' * 12}"):
        load_adapter(build(bases, "unetr"), out, sha_b)
    with pytest.raises(PemmaError, match="differs from the model's in"):
        load_adapter(build(bases, "unetr", rank=8), out, sha_a)
    with pytest.raises(PemmaError, match="backbone"):
        load_adapter(build(bases, "swin_unetr"), out, sha_a)

    weights = out / WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(PemmaError, match=f"{weights}: checksum does not match"):
        load_adapter(model, out, sha_a)
    weights.unlink()
    with pytest.raises(PemmaError, match=f"{weights}: adapter weights file not found"):
        load_adapter(model, out, sha_a)
    (out / CONFIG_NAME).write_text("{not json")
    with pytest.raises(PemmaError, match="cannot parse adapter config") as err:
        load_adapter(model, out, sha_a)
    assert "\n" not in str(err.value)
    with pytest.raises(PemmaError, match="adapter config file not found"):
        load_adapter(model, tmp_path / "nowhere", sha_a)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("backbone", BACKBONES)
def test_merged_equals_unmerged(bases, backbone, method):
    model, x = build(bases, backbone, method), volume(backbone)
    perturb(model)
    merged = merge_adapters(model)
    assert not any("lora_" in n or "modules_to_save" in n for n, _ in merged.named_parameters())
    for mods in [("ct", "pet"), ("pet",)]:
        assert maxdiff(run(merged, x, mods), run(model, x, mods)) <= 1e-5
    with pytest.raises(ValueError, match="no unadapted CT path"):
        run(merged, x, ("ct",))
    with torch.no_grad():  # the unmerged model keeps its CT guarantee
        assert maxdiff(run(model, x, ("ct",)), bases[backbone](x[:, :1])) <= 1e-6


@pytest.mark.parametrize("backbone", BACKBONES)
def test_channel_order(bases, backbone):
    """Channel 0 is CT and channel 1 is PET, and PET is read only through the PET modules."""
    model, x = build(bases, backbone), volume(backbone)
    perturb(model)
    both = run(model, x, ("ct", "pet"))
    assert maxdiff(run(model, x.flip(1), ("ct", "pet")), both) > 1e-4

    # PET-only uses the PET patch embedding, not the CT one
    pet_only = run(model, x, ("pet",))
    ct_embed = model.net.vit.patch_embedding.patch_embeddings if backbone == "unetr" \
        else model.net.swinViT.patch_embed.proj
    with torch.no_grad():
        ct_embed.weight.mul_(3.0)
    assert torch.equal(run(model, x, ("pet",)), pet_only)
    assert maxdiff(run(model, x, ("ct", "pet")), both) > 1e-4
    with torch.no_grad():
        next(model.pet_embedding.parameters()).mul_(3.0)
    assert maxdiff(run(model, x, ("pet",)), pet_only) > 1e-4

    # silence the PET modules: then channel 1 of a ct+pet input no longer matters, channel 0 does
    with torch.no_grad():
        for p in [*model.pet_embedding.parameters(), *model.pet_skip.proj.parameters()]:
            p.zero_()
    y = x.clone()
    y[:, 1] = torch.rand_like(y[:, 1])
    assert maxdiff(run(model, y, ("ct", "pet")), run(model, x, ("ct", "pet"))) <= 1e-6
    y = x.clone()
    y[:, 0] = torch.rand_like(y[:, 0])
    assert maxdiff(run(model, y, ("ct", "pet")), run(model, x, ("ct", "pet"))) > 1e-4


@pytest.mark.parametrize("bad", [("pet", "ct"), (), ("mri",), ("ct", "ct"), "ct"])
def test_forward_rejects_bad_modalities(bases, bad):
    model = build(bases, "unetr")
    with pytest.raises(ValueError, match="modalities"):
        model(torch.rand(1, 2, 32, 32, 32), bad)


def test_forward_rejects_channel_mismatch_and_bad_base(bases):
    model = build(bases, "unetr")
    with pytest.raises(ValueError, match="has 2 channels but modalities"):
        model(torch.rand(1, 2, 32, 32, 32), ("ct",))
    with pytest.raises(ValueError, match="in_channels=1"):
        PemmaUNETR(UNETR(2, 3, **UNETR_KW))
    with pytest.raises(ValueError, match="monai UNETR"):
        PemmaUNETR(bases["swin_unetr"])
    with pytest.raises(ValueError, match="UNETR input must be"):
        model(torch.rand(1, 2, 48, 48, 48), ("ct", "pet"))


def test_checkpoint_wrapper_on_base_is_not_followed(bases):
    """A forward patched onto the base's blocks (e.g. gradient checkpointing) would run the original block."""
    base = UNETR(1, 3, **UNETR_KW).eval()
    base.load_state_dict(bases["unetr"].state_dict())
    for block in base.vit.blocks:
        block.forward = block.forward  # instance attribute bound to the original block
    x = volume("unetr")
    model = PemmaUNETR(base, gradient_checkpointing=True).eval()
    assert len(model.stripped_forward_overrides) == 12
    perturb(model)
    plain = PemmaUNETR(bases["unetr"]).eval()
    plain.load_state_dict(model.state_dict())
    assert maxdiff(run(model, x, ("ct", "pet")), run(plain, x, ("ct", "pet"))) <= 1e-6
    model.train()
    model(x, ("ct", "pet")).mean().backward()  # checkpointed blocks still give adapter gradients
    assert all(p.grad is not None for n, p in model.named_parameters() if ".lora_B." in n)


def test_load_base_state_report(bases):
    state = {f"module.{k}": v for k, v in bases["unetr"].state_dict().items()}
    state["module.extra.weight"] = torch.zeros(1)
    state["module.out.conv.conv.weight"] = torch.zeros(5, 8, 1, 1, 1)
    net = UNETR(1, 3, **UNETR_KW)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    monai_log = logging.getLogger("monai.networks.utils")  # copy_model_state's; its handler prints to stdout
    monai_log.addHandler(handler)
    try:
        report = load_base_state(net, state)
    finally:
        monai_log.removeHandler(handler)
    assert not records  # CLI stdout (e.g. --json) stays clean
    assert report["new"] == ["out.conv.conv.weight"]
    assert len(report["skipped"]) == 2 and len(report["loaded"]) == len(state) - 2
    assert torch.equal(net.vit.blocks[0].attn.qkv.weight, bases["unetr"].vit.blocks[0].attn.qkv.weight)
    assert format_load_report(report).startswith(f"loaded {len(state) - 2} tensors, new 1")
    assert report["skipped"] == ["out.conv.conv.weight (shape (5, 8, 1, 1, 1) != (3, 8, 1, 1, 1))",
                                 "extra.weight (not in model)"]  # in checkpoint order
    with pytest.raises(ValueError, match="before building"):
        load_base_state(build(bases, "unetr"), state)


def test_adapter_config_roundtrip_and_validation():
    cfg = AdapterConfig(method="dora", rank=8, alpha=16, target_modules=["attn.qkv"])
    again = AdapterConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.target_modules == ("attn.qkv",)
    assert cfg.resolve("swin_unetr").train_parts == ("pet_embedding", "pet_skip", "fusion")
    choices = AdapterConfig().modality_choices(trainable_only=True)
    assert [m for m, _ in choices] == [("ct", "pet"), ("pet",)]
    assert [p for _, p in choices] == pytest.approx([0.75, 0.25])
    for bad in [{"method": "ia3"}, {"rank": 0}, {"alpha": -1}, {"dropout": 1.0}, {"target_modules": "qkv"},
                {"modality_dropout": (0.5, 0.2, 0.2)}, {"train_parts": ("a", "a")}]:
        with pytest.raises(ValueError):
            AdapterConfig(**bad)
    with pytest.raises(ValueError, match="unknown adapter config keys"):
        AdapterConfig.from_dict({"rnak": 4})
    assert set(AdapterConfig.help()) == set(cfg.to_dict())


def test_paper_preset_parameter_budget():
    """Paper sizes (no forward): UNETR trains <= 8% and Swin UNETR <= 1% of the early-fusion model."""
    unetr_kw = {"img_size": 96, "feature_size": 16, "hidden_size": 768, "mlp_dim": 3072, "num_heads": 12}
    swin_kw = {"feature_size": 48, "depths": (2, 2, 2, 2), "num_heads": (3, 6, 12, 24)}
    torch.manual_seed(0)
    unetr = parameter_report(PemmaUNETR(UNETR(1, 3, **unetr_kw), AdapterConfig(method="dora")), unetr_kw)
    swin = parameter_report(PemmaSwinUNETR(SwinUNETR(1, 3, **swin_kw), AdapterConfig(method="dora")), swin_kw)
    assert unetr["percent_of_early_fusion"] <= 8.0, unetr
    assert swin["percent_of_early_fusion"] <= 1.0, swin
