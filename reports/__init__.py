"""Scoring and reporting for bavit-bench runs.

Reads only ``RUN_DIR/results.jsonl`` written by the harness and produces
``report.csv``, ``decision.csv``, a self-contained ``report.html`` and a markdown
summary that opens with the decision (which cell to deploy under the given limits).
Entry point: ``python -m reports.build RUN_DIR [--baseline OTHER_RUN] [--max-map-drop PTS]``.

Only the table and decision helpers are re-exported here; ``reports.build`` is not imported
eagerly so that ``python -m reports.build`` does not find its own module
already imported (runpy warns about that) and importing ``reports`` stays
free of matplotlib.
"""

from reports.decide import decision_markdown
from reports.table import add_derived, load_results, pareto_front, summary_markdown

# ``decide`` the function is not re-exported: it would shadow the ``reports.decide`` module.
__all__ = ["add_derived", "decision_markdown", "load_results", "pareto_front", "summary_markdown"]
