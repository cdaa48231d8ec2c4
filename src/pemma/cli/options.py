"""Argument groups shared by the CLI verbs (every training verb takes the same training flags; the survival stages
all but ``--amp``: they run in fp32).

Flags that set a configuration field are made by :func:`add_field_flag` from the dataclass field in
:mod:`pemma.config`: the help text is the field's ``metadata["help"]`` and the type / number of values come
from the field's annotation, so the CLI and the config cannot drift apart. Such flags default to ``None``
("not given"): the preset and ``--config`` then keep their values (preset < --config < flags).
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from pemma.config import DataConfig, ModelConfig, PreprocessConfig, TrainConfig
from pemma.vocab import REGISTER_MODES

_SCALARS = {"int": int, "float": float, "str": str}


def field_of(klass: type, name: str) -> dataclasses.Field:
    """The dataclass field ``name`` of ``klass`` (``KeyError`` naming both if it does not exist)."""
    fields = {f.name: f for f in dataclasses.fields(klass)}
    if name not in fields:
        raise KeyError(f"{klass.__name__} has no field {name!r}")
    return fields[name]


def add_field_flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup, klass: type, name: str,
                   flag: str | None = None, **kwargs: Any) -> argparse.Action:
    """Add ``--<name>`` (or ``flag``) for the dataclass field ``klass.name``.

    Help is the field's ``metadata["help"]``; a ``bool`` field becomes a switch, ``list[int]`` /
    ``list[float]`` a flag of as many values as the field's default holds (metavar X Y Z for three), a
    scalar a flag of that type. The default is ``None`` (not given). ``kwargs`` go to ``add_argument``
    (e.g. ``required``, ``choices``). The action remembers its field in ``action.config_field``.

    Args:
        parser: parser or argument group.
        klass: a config dataclass (e.g. :class:`~pemma.config.TrainConfig`).
        name: the field name.
        flag: the option string. Default ``--`` + the field name with dashes.
        kwargs: more ``add_argument`` keywords; they win over the derived ones.

    Example:
        >>> action = add_field_flag(parser, TrainConfig, "max_steps")  # --max-steps N
    """
    f = field_of(klass, name)
    text = str(f.metadata["help"])
    annotation = str(f.type).replace(" | None", "").strip()
    spec: dict[str, Any] = {"default": None, "help": text.replace("%", "%%")}
    if annotation == "bool":
        spec["action"] = "store_true"
    elif annotation.startswith("list["):
        count = len(f.default_factory()) if f.default_factory is not dataclasses.MISSING else None
        spec.update(type=_SCALARS[annotation[5:-1]], nargs=count or "+")
        if count == 3:
            spec["metavar"] = ("X", "Y", "Z")
    elif annotation.startswith("tuple[") and annotation.endswith(", ...]"):  # names, given as "a,b"
        spec.update(type=str, metavar="NAME[,NAME...]")
    elif annotation.startswith("tuple["):  # a fixed number of values
        types = [t.strip() for t in annotation[6:-1].split(",")]
        spec.update(type=_SCALARS[types[0]], nargs=len(types))
    else:
        spec["type"] = _SCALARS[annotation]
    spec.update(kwargs)
    action = parser.add_argument(flag or "--" + name.replace("_", "-"), **spec)
    action.config_field = (klass, name)  # type: ignore[attr-defined]
    return action


def add_training_flags(parser: argparse.ArgumentParser, *, amp: bool = True, preset_of: str | None = None) -> None:
    """The flags every training verb shares; ``amp=False`` leaves ``--amp`` out (a verb that trains in fp32 only);
    ``preset_of`` names the flag of the run a verb builds on, whose preset ``--preset`` then defaults to."""
    parser.set_defaults(distributed=True)  # a verb torchrun may launch (DDP); any other is refused under it (main)
    g = parser.add_argument_group("training", "A flag not given keeps the --config file's value, else the --preset's.")
    if preset_of:
        g.add_argument("--preset", default=None, help=f"size preset of the training settings: tiny (CPU, tests) or "
                                                      f"paper (default: the {preset_of} run's)")
    else:
        g.add_argument("--preset", default="tiny", help="size preset: tiny (CPU, tests) or paper (default: tiny)")
    g.add_argument("--config", help="YAML with data/preprocess/model/train sections (overrides the preset)")
    for name in ("seed", "epochs", "max_steps", "batch_size", "lr", "val_every", "checkpoint_every"):
        add_field_flag(g, TrainConfig, name)
    add_field_flag(g, ModelConfig, "roi_size", "--roi")
    add_field_flag(g, PreprocessConfig, "target_spacing", "--spacing")
    add_field_flag(g, PreprocessConfig, "register", choices=REGISTER_MODES)
    add_field_flag(g, DataConfig, "val_fraction")
    add_field_flag(g, DataConfig, "cache_dir")
    add_field_flag(g, DataConfig, "exclude_bad_cases")
    add_field_flag(g, DataConfig, "roi_names")
    g.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    g.add_argument("--force", action="store_true",
                   help="replace a finished run in --out (the new run is swapped in only when it succeeds)")
    add_device_flags(parser, amp=amp)
    add_field_flag(parser, ModelConfig, "gradient_checkpointing")


def add_device_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *, amp: bool = True) -> None:
    """``--device`` and, unless ``amp=False`` (the survival stages run in fp32 only), ``--amp``."""
    add_field_flag(parser, TrainConfig, "device")
    if amp:
        add_field_flag(parser, TrainConfig, "amp")


#: ``--amp`` of ``reproduce`` / ``demo``: the strategy's mixed-precision setting (pemma.runtime.resolve_amp)
AMP_FLAG_VALUES = {"auto": "auto", "on": True, "off": False}


def add_amp_choice(parser: argparse.ArgumentParser) -> None:
    """``--amp auto|on|off`` replacing a strategy's ``amp`` (parsed to ``"auto"`` / ``True`` / ``False``)."""
    parser.add_argument("--amp", choices=list(AMP_FLAG_VALUES), default=None, type=str.lower,
                        help="mixed precision, replacing the strategy's amp: auto (on for CUDA or a CPU with native "
                             "bf16, AMX / AVX512-BF16; off on other CPUs, where bf16 is emulated and slow), on, off")


def amp_choice(args: argparse.Namespace) -> bool | str | None:
    return None if args.amp is None else AMP_FLAG_VALUES[args.amp]


def workers_value(text: str) -> int | str:
    """``--workers``: ``auto`` or an integer >= 1."""
    from pemma.runtime import valid_workers  # here: the parser is built without importing torch
    value: int | str = text.lower()
    if value != "auto":
        value = int(text) if text.strip().lstrip("-").isdigit() else text
    if not valid_workers(value):
        raise argparse.ArgumentTypeError(f"must be an integer >= 1 or auto, got {text!r}")
    return value


def add_workers_choice(parser: argparse.ArgumentParser) -> None:
    """``--workers N|auto`` of ``reproduce`` / ``demo``, replacing a strategy's ``workers``."""
    parser.add_argument("--workers", type=workers_value, default=None,
                        help="processes that train and evaluate the method chains side by side once the CT base is "
                             "trained, replacing the strategy's workers: an integer or auto (2 on a CPU with 2 or "
                             "more cores, 1 on CUDA); results are those of one process")


def add_window_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("sliding window (--roi, --overlap, --sw-batch-size default: as the run was "
                                  "trained; --device auto, --amp off)")
    add_field_flag(g, ModelConfig, "roi_size", "--roi")
    add_field_flag(g, TrainConfig, "overlap")
    add_field_flag(g, TrainConfig, "sw_batch_size")
    add_device_flags(g)


def training_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of :func:`add_training_flags` for a training function of :mod:`pemma.api` (``amp``
    only where the verb has the flag)."""
    names = ("preset", "config", "seed", "epochs", "max_steps", "batch_size", "lr", "val_every", "checkpoint_every",
             "roi", "spacing", "register", "val_fraction", "cache_dir", "exclude_bad_cases", "roi_names", "resume",
             "force", "device", "amp", "gradient_checkpointing")
    return {name: getattr(args, name) for name in names if name != "amp" or hasattr(args, name)}


def window_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of :func:`add_window_flags` for :func:`pemma.predict` / :func:`pemma.evaluate`."""
    return {name: getattr(args, name) for name in ("roi", "overlap", "sw_batch_size", "device", "amp")}


def counted(number: int, noun: str, plural: str | None = None) -> str:
    """``"1 step"``, ``"120 steps"``, ``"1 label map"``: a count in a CLI summary (``plural`` default noun + s)."""
    return f"{number} {noun if number == 1 else plural or noun + 's'}"
