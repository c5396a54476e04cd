"""Scoring and reporting for bavit-bench runs.

Reads only ``RUN_DIR/results.jsonl`` written by the harness and produces
``report.csv``, a self-contained ``report.html`` and a markdown summary.
Entry point: ``python -m reports.build RUN_DIR [--baseline OTHER_RUN]``.

Only the table helpers are re-exported here; ``reports.build`` is not imported
eagerly so that ``python -m reports.build`` does not find its own module
already imported (runpy warns about that) and importing ``reports`` stays
free of matplotlib.
"""

from reports.table import add_derived, load_results, pareto_front, summary_markdown

__all__ = ["add_derived", "load_results", "pareto_front", "summary_markdown"]
