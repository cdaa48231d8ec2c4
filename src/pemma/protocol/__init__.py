"""The pure parts of ``pemma reproduce``: strategy files and splits, the results table, report and figures.

* :mod:`pemma.protocol.strategy`: :class:`Strategy` (phases, variants, run plan), :func:`split_case_ids`;
  :mod:`pemma.protocol.strategy_file`: :func:`load_strategy`, :func:`parse_strategy`.
* :mod:`pemma.protocol.results`: :func:`write_results`, :func:`read_results`, :func:`forgetting_table`,
  :func:`markdown_report`.
* :mod:`pemma.protocol.figures`: :func:`plot_dsc_across_phases`, :func:`plot_overlays` (Matplotlib is
  imported when a figure is drawn).
"""

from __future__ import annotations

from pemma.protocol.figures import plot_dsc_across_phases, plot_overlays
from pemma.protocol.results import (
    COLUMNS,
    forgetting_table,
    markdown_report,
    mean_forgetting,
    normalise_rows,
    read_results,
    summarise,
    write_results,
)
from pemma.protocol.strategy import (
    EVAL_INPUTS,
    METHODS,
    Phase,
    PlannedPhase,
    SplitSpec,
    Strategy,
    StrategyError,
    split_case_ids,
)
from pemma.protocol.strategy_file import load_strategy, parse_strategy

__all__ = ["COLUMNS", "EVAL_INPUTS", "METHODS", "Phase", "PlannedPhase", "SplitSpec", "Strategy", "StrategyError",
           "forgetting_table", "load_strategy", "markdown_report", "mean_forgetting", "normalise_rows",
           "parse_strategy", "plot_dsc_across_phases", "plot_overlays", "read_results", "split_case_ids",
           "summarise", "write_results"]
