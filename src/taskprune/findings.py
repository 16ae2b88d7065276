"""``taskprune findings``: decide from the per-item data whether each claim of the paper reproduced.

Reads ``results/items.parquet`` (and ``results/bench/efficiency.parquet``), writes ``results/findings.json``
and, optionally, the same findings as Markdown and as a standalone HTML page. The rules and the claims are
in :mod:`taskprune.report.estimates` and :mod:`taskprune.report.claims`, the rendering in
:mod:`taskprune.report.render`.
"""

from __future__ import annotations

import argparse
import logging

from taskprune.io import write_json, write_text
from taskprune.report.claims import compute_findings
from taskprune.report.render import render_html, render_markdown, report_blocks
from taskprune.report.results import load_efficiency_for_findings, load_items

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--items", required=True, help="results/items.parquet (the per-item table)")
    parser.add_argument("--efficiency", help="results/bench/efficiency.parquet (without it, the efficiency "
                        "claim is inconclusive)")  # fmt: skip
    parser.add_argument("--out", required=True, help="findings JSON to write (results/findings.json)")
    parser.add_argument("--markdown", help="also write the findings as Markdown (results/findings.md)")
    parser.add_argument("--html", help="also write the findings as a standalone HTML page for the report")


def run(args: argparse.Namespace) -> int:
    items = load_items(args.items)
    efficiency = load_efficiency_for_findings(args.efficiency) if args.efficiency else None
    findings = compute_findings(items, efficiency)
    findings["inputs"] = {"items": str(args.items), "efficiency": args.efficiency}
    blocks = report_blocks(findings)
    markdown = render_markdown(blocks) if args.markdown else None
    page = render_html(blocks) if args.html else None
    write_json(findings, args.out)
    if markdown is not None:
        write_text(markdown, args.markdown)
    if page is not None:
        write_text(page, args.html)
    for c in findings["claims"]:
        log.info("%s: %s (%s)", c["id"], c["status"], c["summary"])
    return 0
