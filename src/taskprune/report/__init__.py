"""The report: what the findings, figures and tables of a run are made of, from its finished result tables.

What lives here:

- ``estimates``: the outcome words, the rules' constants (``RULES``), the one Wilson interval and ``Z95``,
  the paired bootstrap over items and seeds, the beats-over-levels and overall rules, per-row estimates;
- ``results``: readers of the per-item, metrics and efficiency tables, and the figures' inputs (``Results``);
- ``claims``: the paper's claims and the comparisons beyond it, decided by the rules (``compute_findings``);
- ``recovery_claims``: the recovery recipes compared at a matched budget (lora-kd vs lora);
- ``render``: the findings as blocks, rendered as Markdown or HTML;
- ``style``: method colours and line styles, drawing helpers, saving;
- ``figures``: the figures, registered in ``FIGURES`` by the ``@figure(name, caption=...)`` decorator;
- ``tables``: the summary tables.

Who may import it: the stage modules (``taskprune.findings``, ``taskprune.figures``; ``taskprune.evaluate``
and ``taskprune.harness`` take the Wilson interval and ``Z95`` from ``estimates``), the Snakefile (which
imports ``report.figures.FIGURES`` at parse time) and the tests. Nothing here imports a stage module, a
model or torch; module import stays light (this package's ``__init__`` imports nothing, and
``report.figures`` and ``report.style`` import their heavy libraries inside functions).
"""
