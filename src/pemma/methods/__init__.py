"""Methods of adding PET to a CT model, registered once each (peft-style), and the stages built on them.

* :mod:`pemma.methods.registry`: :class:`Method` / :class:`RunKind`, :func:`get_method`, :func:`get_kind`.
* one module per method: :mod:`~pemma.methods.pemma` (LoRA / DoRA), :mod:`~pemma.methods.early_fusion`,
  :mod:`~pemma.methods.full_finetune`, :mod:`~pemma.methods.late_fusion`; :mod:`~pemma.methods.backbone`
  registers plain ``pemma train`` runs; :mod:`~pemma.methods.stacking` a modality stacked on an adapted run.
* stages: :func:`load_model`, :func:`adapt`, :func:`update`, :func:`parameter_summary`, :func:`configuration_budget`,
  :func:`export_merged`, :func:`export_model` (TorchScript / ONNX / MONAI bundle).

Importing this package registers every method.
"""

from __future__ import annotations

from pemma.methods import backbone, early_fusion, full_finetune, late_fusion, pemma, stacking  # noqa: F401
from pemma.methods.adaptation import AdaptationSetup, adapt, prepare_adaptation
from pemma.methods.exporting import export_model
from pemma.methods.loading import load_model
from pemma.methods.registry import Method, RunKind, get_kind, get_method, registered_kinds, registered_methods
from pemma.methods.reporting import configuration_budget, export_merged, parameter_summary
from pemma.methods.update import update

__all__ = ["AdaptationSetup", "Method", "RunKind", "adapt", "configuration_budget", "export_merged", "export_model",
           "get_kind", "get_method", "load_model", "parameter_summary", "prepare_adaptation", "registered_kinds",
           "registered_methods", "update"]
