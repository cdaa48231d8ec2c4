"""When ``reproduce`` may reuse the runs an ``--out`` already holds: only under the same split (``split.json``) and
the same training settings and data (``training.json``); another is refused before anything is written, since the
runs would be scored as if trained under the new ones."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pemma.data.case import CaseRecord
from pemma.errors import PemmaError
from pemma.io_utils import sha256_file
from pemma.protocol.strategy import Strategy
from pemma.vocab import KIND_PEMMA_FULL


def check_same_split(out: Path, split: dict[str, dict[str, list[str]]]) -> None:
    """``out`` may hold an earlier call's runs only for the same split: they are reused (not retrained), so under
    another split (another ``--seed``, other excluded cases) they would be scored as if trained on it.

    Raises:
        PemmaError: ``out/split.json`` records another split; nothing has been written.
    """
    file = out / "split.json"
    if not file.is_file():
        return
    try:
        earlier = json.loads(file.read_text())
    except ValueError:
        earlier = None
    if earlier != json.loads(json.dumps(split)):
        raise PemmaError(f"{out}: holds the runs of another split (its split.json: another --seed or other cases); "
                         f"they would be reused as if trained on this one: write to another --out, or delete it")


#: what an out folder's runs were trained under, beyond the split (:func:`check_same_training`)
TRAINING_FILE = "training.json"


def training_settings(strategy: Strategy, cases: Sequence[CaseRecord]) -> dict[str, Any]:
    """The settings that shape every trained run and are not in its run key (phases, centres, modalities and epochs
    are): the preset, the step cap, and the data, as a digest of each case's image names and sizes and its label's
    content (labels are small: a corrected label of the same size counts; the same dataset moved or copied
    elsewhere keeps the digest, another phantom or other images under the same IDs almost surely do not)."""
    entries = sorted([case.case_id, key, Path(path).name,
                      sha256_file(path) if key == "label" else Path(path).stat().st_size]
                     for case in cases for key, path in [*case.images.items(), ("label", case.label)] if path)
    digest = hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:16]
    return {"preset": strategy.preset, "max_steps": strategy.max_steps, "data_digest": digest}


def check_same_training(out: Path, settings: Mapping[str, Any]) -> None:
    """``out`` may hold an earlier call's runs only under the same preset, step cap and data (they are reused, not
    retrained); an earlier call that recorded no ``training.json`` is compared on its ``strategy.json``'s preset
    and step cap.

    Raises:
        PemmaError: naming each setting that differs (earlier -> now); nothing has been written.
    """
    file, strategy_file = out / TRAINING_FILE, out / "strategy.json"
    try:
        if file.is_file():
            earlier = json.loads(file.read_text())
        elif strategy_file.is_file():
            earlier = {k: v for k, v in json.loads(strategy_file.read_text()).items() if k in ("preset", "max_steps")}
        else:
            return
    except ValueError:
        raise PemmaError(f"{file if file.is_file() else strategy_file}: unreadable; it says how the runs of {out} "
                         "were trained, so they are not reused without it: write to another --out, or delete it") \
            from None
    flags = {"preset": "--preset", "max_steps": "--max-steps", "data_digest": "--data (other files)"}
    changed = [f"{flags[k]} {earlier[k]} -> {settings[k]}" if k != "data_digest" else flags[k]
               for k in flags if k in earlier and earlier[k] != settings[k]]
    if changed:
        raise PemmaError(f"{out}: holds runs trained under other settings ({'; '.join(changed)}); they would be "
                         "reused as if trained under these: write to another --out, or delete it")


def _earlier_construction(meta: Mapping[str, Any], backbone: str) -> str | None:
    """What makes a run of ``backbone`` (its ``model.json``) one of an earlier pemma that ``reproduce`` must not reuse
    as today's, or None: a full fine-tuning run on the ``exact`` CT route (:mod:`pemma.methods.full_finetune`: CT
    alone ran separate copies that PET-only updates never reach), or an ``authors``-recipe UNETR adaptation recorded
    before ``pet_alone_skip`` (PET alone read its first skip from ``encoder1`` plus its PET copy, so a PET-only
    update re-fit the ``encoder1`` CT alone runs through; the recipe now has PET alone read the copy only)."""
    config = meta.get("adapter_config") or {}
    if meta.get("kind") == KIND_PEMMA_FULL:
        if config.get("ct_route") == "exact":
            return ("full fine-tuning run of an earlier pemma (CT alone ran separate copies of the modules PET-only "
                    "updates train)")
        return None
    if backbone == "unetr" and config.get("recipe") == "authors" and config.get("pet_alone_skip") is None:
        return ("authors'-recipe run of an earlier pemma (PET alone read encoder1 besides its PET copy, which the "
                "recipe no longer does)")
    return None


def check_earlier_constructions(out: Path, backbones: Sequence[str] | None = None, *, full_finetune: bool = True,
                                authors: bool = True) -> None:
    """``out`` may not hold runs an earlier pemma built another way than today's (:func:`_earlier_construction`):
    reused, they would be scored as today's method. Only the runs a call would reuse are looked at: those of
    ``backbones`` (None: every backbone), of full fine-tuning when ``full_finetune`` and of the ``authors`` recipe
    when ``authors`` (the caller passes what its strategy runs). With ``authors``, a prognosis stage started from the
    adapters of such a run (its ``survival.json`` records the run's adapter config) is refused too: its experiment
    folder is reused as it is once the segmentation run is trained again.

    Raises:
        PemmaError: naming the first such run; nothing has been written.
    """
    found, stages = [], []
    for backbone in backbones or ["*"]:
        if full_finetune:
            found += out.glob(f"runs/{backbone}/full_finetune*/*/model.json")
        if authors:
            found += out.glob(f"runs/{backbone}/pemma_*_authors/*/model.json")
            stages += out.glob(f"runs/{backbone}/prognosis_*/*/survival.json")
    for meta_file in sorted(set(found)) + sorted(set(stages)):
        try:
            meta = json.loads(meta_file.read_text())
        except ValueError:
            continue  # an unreadable run folder is reported where it is read
        why = _earlier_construction(meta, meta_file.parent.parent.parent.name)  # runs/<backbone>/<folder>/<run>
        if why is None:
            continue
        if meta_file in stages:
            raise PemmaError(f"{meta_file.parent}: prognosis stage started from the adapters of an {why}; it would be "
                             "reused as today's: write to another --out, or delete that prognosis folder "
                             f"({meta_file.parent.parent}: its stages and lesion-feature chains read that run)")
        raise PemmaError(f"{meta_file.parent}: {why}; it would be reused as today's: write to another --out, or "
                         "delete that run's folder")
