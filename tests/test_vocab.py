"""One vocabulary and one method registry: spellings, aliases, and every method / run kind registered once."""

from __future__ import annotations

import pytest

from pemma import vocab
from pemma.errors import PemmaError
from pemma.methods import get_kind, get_method, registered_kinds, registered_methods
from pemma.methods.registry import Method, register_method


@pytest.mark.parametrize(("alias", "canonical"), [
    ("lora", "pemma_lora"), ("dora", "pemma_dora"), ("early-fusion", "early_fusion"), ("full", "full_finetune"),
    ("late-fusion", "late_fusion"), ("PEMMA_LORA", "pemma_lora"), ("full_finetune", "full_finetune"),
])
def test_method_aliases(alias: str, canonical: str) -> None:
    assert vocab.canonical_method(alias) == canonical
    assert get_method(alias).name == canonical


def test_unknown_method_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown method 'lorra'; known: pemma_lora, pemma_dora"):
        vocab.canonical_method("lorra")
    with pytest.raises(PemmaError, match="unknown method 'lorra'"):
        get_method("lorra")


def test_adapter_methods_take_the_method_spellings_too(tmp_path) -> None:
    """Prognosis stages take the adapter type; the README's method names (pemma_lora...) mean the same."""
    from conftest import main_result

    from pemma.survival.config import survival_settings

    assert [vocab.adapter_type(n) for n in ("lora", "pemma_lora", "DORA", "pemma-dora")] == ["lora"] * 2 + ["dora"] * 2
    with pytest.raises(ValueError, match="unknown method 'ia3' for an adapter; choose lora, dora"):
        vocab.adapter_type("ia3")
    with pytest.raises(ValueError, match="unknown method 'early_fusion' for an adapter"):
        vocab.adapter_type("early_fusion")  # a method, but not one with adapters
    assert survival_settings(method="pemma_dora").method == "dora"
    assert all(vocab.adapter_type(name) in ("lora", "dora") for name in vocab.adapter_choices())
    assert {"pemma-dora", "pemma_lora", "lora"} <= set(vocab.adapter_choices())
    result = main_result("survival", "adapt", "--model", str(tmp_path / "none"), "--add-modality", "pet",
                         "--method", "pemma_lora", "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "invalid choice" not in result.stderr and "none" in result.stderr


@pytest.mark.parametrize(("text", "parsed"), [
    ("ct", ["ct"]), ("PET,ct", ["ct", "pet"]), ("pt", ["pet"]), ("ct+pet", ["ct", "pet"]),
    (["pet", "CT"], ["ct", "pet"]),
])
def test_parse_modalities(text: str | list[str], parsed: list[str]) -> None:
    assert vocab.parse_modalities(text) == parsed
    assert vocab.input_set_of(vocab.input_set_name(parsed)) == tuple(parsed)


@pytest.mark.parametrize("bad", ["", "mr", "ct,mr", []])
def test_parse_modalities_rejects(bad: str | list[str]) -> None:
    with pytest.raises(ValueError, match="modalities must be a non-empty subset"):
        vocab.parse_modalities(bad)


def test_every_method_and_kind_is_registered_once() -> None:
    assert registered_methods() == vocab.METHODS
    assert set(registered_kinds()) == set(vocab.RUN_KINDS) - {vocab.KIND_SURVIVAL}
    for name in registered_methods():
        method = get_method(name)
        assert method.kind in registered_kinds(), f"{name} writes an unregistered run kind {method.kind}"
        assert method.description
    with pytest.raises(ValueError, match="registered twice"):
        register_method(get_method("pemma_lora"))
    with pytest.raises(ValueError, match="canonical name"):
        register_method(Method(name="lora", kind="pemma", description="", build=lambda setup, cfg: None))


def test_unknown_run_kind_names_the_folder() -> None:
    with pytest.raises(PemmaError, match="runs/x: unsupported model kind 'mystery'"):
        get_kind("mystery", "runs/x")


def test_eval_inputs_and_labels_are_consistent() -> None:
    assert vocab.EVAL_INPUTS == ("ct", "pet", "ct+pet")
    assert set(vocab.DROPOUT_INPUT_SETS) == set(vocab.EVAL_INPUT_SETS)
    assert vocab.LABEL_VALUES == (0, 1, 2) and vocab.TUMOUR_CLASSES == ("GTVp", "GTVn")
    assert set(vocab.PEMMA_METHODS) | set(vocab.BASELINE_METHODS) == set(vocab.METHODS)


def test_every_backbone_is_registered_once_with_its_pemma_model() -> None:
    from monai.networks.nets import UNETR

    from pemma.adapters.config import NEW_PARTS
    from pemma.models.pemma_base import PEMMA_MODELS
    from pemma.models.registry import BackboneSpec, check_roi, get_backbone, register_backbone

    assert set(PEMMA_MODELS) == set(NEW_PARTS) == set(vocab.BACKBONES)
    for name in vocab.BACKBONES:
        assert get_backbone(name).name == PEMMA_MODELS[name].backbone_name == name
    with pytest.raises(ValueError, match="not in pemma.vocab.BACKBONES"):
        register_backbone(BackboneSpec(name="vnet", net_class=UNETR, roi_multiple=16))
    with pytest.raises(ValueError, match="registered twice"):
        register_backbone(get_backbone("unetr"))
    with pytest.raises(ValueError, match="swin_unetr needs roi_size divisible by 32"):
        check_roi("swin_unetr", [48, 48, 48])
    check_roi("unetr", [48, 48, 48])
