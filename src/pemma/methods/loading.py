"""Rebuild a trained model from its run folder, whatever method wrote it (looked up in the method registry)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import yaml

from pemma.config import RunConfig
from pemma.errors import PemmaError
from pemma.methods.registry import get_kind
from pemma.models.loaded import LoadedModel
from pemma.runs import CONFIG_FILE, MODEL_META, check_base, interrupted_text, read_meta
from pemma.vocab import KIND_BACKBONE


def load_model(run_dir: str | Path, device: torch.device | str = "cpu",
               base_run: str | Path | None = None) -> LoadedModel:
    """Load a run folder written by ``pemma train``, ``adapt`` or ``update`` (config, metadata, checked weights).

    Args:
        run_dir: the run folder.
        device: where the network goes. Default CPU.
        base_run: for a run built on a CT base run, that base if it has moved since (its SHA-256 must still
            match). Default: the path recorded in the run.

    Raises:
        PemmaError: the run's records do not describe a model pemma can build (a missing key, an invalid value,
            unparsable JSON / YAML, weights of another shape): one line naming the run, the original error chained.
            Any other error is a bug and is raised as it is.

    Example:
        >>> model = load_model("runs/pemma_unetr")
        >>> model.input_sets
        [['ct', 'pet'], ['ct'], ['pet']]
    """
    run_dir = Path(run_dir)
    meta = read_meta(run_dir)
    stopped = interrupted_text(meta)  # the metadata just read, not the file again
    if stopped is not None:
        warnings.warn(f"{run_dir}: its training stopped before its end ({stopped}); rerun the training command with "
                      f"--resume to finish it", UserWarning, stacklevel=2)
    config = RunConfig.load(run_dir / CONFIG_FILE)
    kind = get_kind(str(meta.get("kind", KIND_BACKBONE)), str(run_dir))
    try:
        net = kind.load(run_dir, meta, config, None if base_run is None else Path(base_run))
        input_sets = kind.input_sets(meta)
    except (KeyError, ValueError, yaml.YAMLError, RuntimeError) as exc:
        if isinstance(exc, RuntimeError) and not damaged_weights(exc):
            raise  # not a sign of an edited run: a bug, shown as one
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PemmaError(f"{run_dir}: cannot rebuild the {kind.name} model from {CONFIG_FILE} and {MODEL_META} "
                         f"({reason}); were they edited by hand?") from exc
    net.to(device).eval()
    return LoadedModel(net=net, config=config, meta=meta, input_sets=input_sets, run_dir=run_dir)


#: what torch's ``load_state_dict`` says when stored weights do not fit the network built from the run's records
_STATE_DICT_MISMATCH = ("Error(s) in loading state_dict", "size mismatch", "Missing key(s)", "Unexpected key(s)")


def damaged_weights(exc: BaseException) -> bool:
    """True when ``exc`` is torch's report of weights that do not fit the network (a shape or key mismatch)."""
    return isinstance(exc, RuntimeError) and any(text in str(exc) for text in _STATE_DICT_MISMATCH)


def load_base(run_dir: Path, meta: dict, base_run: Path | None) -> LoadedModel:
    """The CT base run a run was built on, checked to hold the weights the run was trained on."""
    base_dir = check_base(run_dir, meta, base_run)
    base = load_model(base_dir)
    if base.kind != KIND_BACKBONE:
        raise PemmaError(f"{base_dir}: the base of {run_dir} must be a plain CT run")
    return base
