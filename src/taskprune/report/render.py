"""The findings as a report: blocks of headings, paragraphs and tables, rendered as Markdown or HTML.

What lives here: :func:`report_blocks` (the findings dict of :mod:`taskprune.report.claims` as blocks),
:func:`recipe_blocks` (the recovery recipes' part, :mod:`taskprune.report.recovery_claims`), the number
formats of their tables, and the two renderers :func:`render_markdown` and :func:`render_html` (the
summary table of :mod:`taskprune.report.tables` uses the latter too). Used by the findings stage and the
tables.
"""

from __future__ import annotations

import html
from typing import Any

from taskprune.report.claims import RULE_TEXT, fmt_number, is_finite
from taskprune.report.recovery_claims import BASELINE_RECIPE, CHALLENGER_RECIPE
from taskprune.report.recovery_claims import RULES as RECIPE_RULES


def _fmt_est(e: dict[str, Any] | None) -> str:
    if not e or e.get("value") is None:
        return "n/a"
    lo, hi = e.get("ci95") or [None, None]
    s = f"{100 * e['value']:.1f}"
    if lo is not None and hi is not None:
        s += f" [{100 * lo:.1f}, {100 * hi:.1f}]"
    if e.get("seed_range"):
        a, b = e["seed_range"]
        s += f" (seeds {100 * a:.1f}-{100 * b:.1f})"
    return s


def _fmt_cmp(c: dict[str, Any] | None) -> str:
    if not c:
        return "n/a"
    lo, hi = c["ci95"]
    return f"{100 * c['diff']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] {c['verdict']}"


def _levelwise_table(entry: dict[str, Any]) -> tuple[list[str], list[list[str]]] | None:
    if not entry.get("per_level"):
        return None
    a, b = entry["a"], entry["b"]
    head = ["level %", f"{a} % [95% CI]", f"{b} % [95% CI]", f"{b} - base (pp, paired)",
            f"{a} - {b} (pp, paired) [95% CI]", "counted"]  # fmt: skip
    rows = [[x["level"], _fmt_est(x[a]), _fmt_est(x[b]), _fmt_cmp(x[f"{b}_vs_base"]), _fmt_cmp(x["comparison"]),
             "yes" if x["informative"] else f"no: ceiling ({b} lost nothing)"] for x in entry["per_level"]]  # fmt: skip
    return head, rows


def _claim_tables(claim: dict[str, Any], model: str, entry: dict[str, Any]) -> list[tuple[list[str], list[list[str]]]]:
    cid = claim["id"]
    if cid in ("selective_beats_random", "selectivity_beyond_magnitude"):
        t = _levelwise_table(entry)
        return [t] if t else []
    if cid == "reverse_collapse":
        rows = []
        for method, e in {"reverse": entry, **claim.get("other_reverse_methods", {}).get(model, {})}.items():
            for x in e.get("per_level", []):
                rows.append([method, x["level"], _fmt_est(x.get(method)), f"{100 * x['threshold']:.1f}",
                             _fmt_est(x.get("random_same_level")), _fmt_cmp(x.get(f"{method}_minus_half_base")),
                             _fmt_cmp(x.get(f"{method}_vs_random")),
                             ("yes" if x["collapsed"] else "no") + (" (decides)" if x["level"] == e["level"] else "")])  # fmt: skip
        head = ["method", "level %", "acc. % [95% CI]", "half base %", "random same level %",
                "minus half base (pp)", "minus random (pp)", "collapsed"]  # fmt: skip
        return [(head, rows)] if rows else []
    if cid == "recovery":
        head = ["method", "recipe", "level %", "seed", "pruned %", "pruned - base (pp)", "recovered %",
                "recovered - pruned (pp)", "gap closed", "counted / recovers"]  # fmt: skip
        rows = [[x["method"], x["recovery"], x["level"], str(x["seed"]), _fmt_est(x["pruned"]),
                 _fmt_cmp(x["pruned_vs_base"]), _fmt_est(x["recovered"]), _fmt_cmp(x["recovered_vs_pruned"]),
                 "n/a" if x["gap_closed"] is None else f"{x['gap_closed']:.0%}",
                 ("yes / " + ("recovers" if x["recovers"] else "worse" if x["worse"] else "tie"))
                 if x["lost_accuracy"] else "no: lost nothing"] for x in entry.get("variants", [])]  # fmt: skip
        return [(head, rows)] if rows else []
    if cid == "efficiency":
        rows = []
        for x in entry.get("params", {}).get("per_level", []):
            rows.append(["parameters", f"{x['level_pct']:g}", f"{entry['params']['base']:,.0f}",
                         f"{x['params_total']:,.0f}", f"{x['fraction_of_base']:.3f}x", entry["checks"]["params"]])  # fmt: skip
        if "memory" in entry:
            m = entry["memory"]
            rows.append(["peak memory (MiB, batch 1)", f"{m['highest_level_pct']:g}", f"{m['base_bytes'] / 2**20:.1f}",
                         f"{m['highest_level_bytes'] / 2**20:.1f}", f"{-m['reduction']:+.1%}", entry["checks"]["memory"]])  # fmt: skip
        t = entry.get("throughput", {})
        for b in t.get("per_batch", []):
            ideal = "" if not is_finite(b.get("ideal_speedup")) else f", ideal x{b['ideal_speedup']:.2f}"
            rows.append([f"{t['phase']} speedup ({t['engine']}), batch {b['batch_size']}", f"{t['highest_level_pct']:g}",
                         "1", f"x{fmt_number(b['measured_speedup'], '.2f')}",
                         f"[{fmt_number(b['ci95'][0], '.2f')}, {fmt_number(b['ci95'][1], '.2f')}]{ideal}"
                         + (" noisy" if b["noisy"] else ""), b["verdict"]])  # fmt: skip
        head = ["quantity", "level %", "base", "pruned", "ratio / 95% CI", "check"]
        return [(head, rows)] if rows else []
    return []


def report_blocks(findings: dict[str, Any]) -> list[tuple[str, Any]]:
    """The findings as a list of blocks ('h1'|'h2'|'h3'|'p'|'table', content), rendered to Markdown or HTML."""
    c = findings["rules"]["constants"]
    metrics = "; ".join(f"{m}: {', '.join(v)}" for m, v in findings.get("target_metrics", {}).items())
    blocks: list[tuple[str, Any]] = [("h1", "Findings: did the paper's claims reproduce?")]
    blocks.append(("p", "Each claim is decided by the rule stated under it, fixed before the run, with one of four "
                   "outcomes: reproduced, not reproduced (the signal is there, the claim's direction does not reach "
                   "its rule), contradicted (the opposite holds by the same rule), inconclusive (too few informative "
                   f"comparisons). Target scores in percent ({metrics}); pp = percentage points. Every comparison is "
                   f"paired over the items both sides answered: {c['confidence']:.0%} bootstrap intervals from "
                   f"{c['bootstrap_resamples']} resamples (seed {c['bootstrap_seed']}), random seeds resampled "
                   f"jointly with items. {RULE_TEXT['informative_level'][0].upper() + RULE_TEXT['informative_level'][1:]}. Overall: "
                   f"{RULE_TEXT['overall']}."))  # fmt: skip
    head = ["claim", "source", "outcome", "specialists"]
    rows = [[cl["claim"], cl["source"], cl["status"].upper(), "; ".join(
        f"{m}: {v['status']}" for m, v in cl["per_model"].items()) or "none"] for cl in findings["claims"]]
    blocks.append(("table", (head, rows)))
    for cl in findings["claims"]:
        blocks.append(("h2", f"{cl['claim']} — {cl['status'].upper()}"))
        blocks.append(("p", f"Rule: {cl['rule']}."))
        for model, entry in cl["per_model"].items():
            blocks.append(("h3", f"{model}: {entry['status']}"))
            blocks.append(("p", entry["summary"] + "."))
            if cl["id"] == "recovery" and len(entry.get("by_recipe", {})) > 1:
                blocks.append(("p", "By recipe: " + "; ".join(f"{r}: {v['status']} ({v['summary']})"
                                                            for r, v in entry["by_recipe"].items()) + "."))  # fmt: skip
            for table in _claim_tables(cl, model, entry):
                blocks.append(("table", table))
    rk = findings["ranking"]
    blocks.append(("h2", "Which score prunes best? (beyond the paper)"))
    blocks.append(("p", f"Rule: {rk['rule']}."))
    for model, entry in rk["per_model"].items():
        blocks.append(("h3", model))
        blocks.append(("p", entry["summary"] + "."))
        if entry.get("ranking"):
            head = ["rank", "method", "Copeland (level wins - losses)", "mean acc. over levels %", "levels",
                    "wins at a level against", "loses at a level against"]  # fmt: skip
            body = [[str(r["rank"]), r["method"], f"{r['copeland']:+d} ({r['level_wins']} - {r['level_losses']})",
                     fmt_number(100 * r["mean_accuracy_over_levels"] if is_finite(r["mean_accuracy_over_levels"]) else None, ".1f"),
                     str(r["levels"]), ", ".join(r["beats"]) or "-", ", ".join(r["beaten_by"]) or "-"]
                    for r in entry["ranking"]]  # fmt: skip
            blocks.append(("table", (head, body)))
    if findings.get("recovery_recipes"):
        blocks += recipe_blocks(findings["recovery_recipes"])
    tr = findings["trends"]
    blocks.append(("h2", "How distractor retention and trap rate move with the level (descriptive)"))
    blocks.append(("p", f"Rule: {tr['rule']}."))
    for model, per_method in tr["per_model"].items():
        blocks.append(("h3", model))
        head = ["method", "quantity", "levels", "means %", "Spearman rho [95% CI]", "reading"]
        body = []
        for method, quantities in per_method.items():
            for name, e in quantities.items():
                rho = (f"{e['spearman']:+.2f} [{fmt_number(e['ci95'][0], '+.2f')}, {fmt_number(e['ci95'][1], '+.2f')}]"
                       if "ci95" in e and is_finite(e.get("spearman")) else "n/a")  # fmt: skip
                body.append([method, name.replace("_", " "), ", ".join(f"{x:g}" for x in e.get("levels", [])),
                             ", ".join(f"{100 * x:.1f}" for x in e.get("means", [])), rho, e["reading"]])  # fmt: skip
        blocks.append(("table", (head, body)))
    return blocks


def _md_cell(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: list[tuple[str, Any]]) -> str:
    out = []
    for kind, content in blocks:
        if kind in ("h1", "h2", "h3"):
            out.append("#" * int(kind[1]) + " " + content)
        elif kind == "p":
            out.append(content)
        elif kind == "table":
            head, rows = content
            out.append("| " + " | ".join(_md_cell(h) for h in head) + " |")
            out.append("|" + "|".join("---" for _ in head) + "|")
            out += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]
        out.append("")
    return "\n".join(out)


def render_html(blocks: list[tuple[str, Any]], title: str = "taskprune findings") -> str:
    esc = html.escape
    body = []
    for kind, content in blocks:
        if kind in ("h1", "h2", "h3"):
            body.append(f"<{kind}>{esc(content)}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{esc(content)}</p>")
        elif kind == "table":
            head, rows = content
            body.append("<table><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr></thead><tbody>")
            body += ["<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in r) + "</tr>" for r in rows]
            body.append("</tbody></table>")
    style = ("body{font-family:sans-serif;max-width:70em;margin:1em auto;line-height:1.4}"
             "table{border-collapse:collapse;margin:.5em 0 1em}td,th{border:1px solid #bbb;padding:.2em .5em;"
             "font-size:90%;text-align:left}th{background:#eee}")  # fmt: skip
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{esc(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")  # fmt: skip


# ------------------------------------------------------------------------- recovery recipes


def _share_pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def recipe_blocks(result: dict[str, Any]) -> list[tuple[str, Any]]:
    """The recipe findings as the findings report's blocks ('h2'|'h3'|'p'|'table', content)."""
    blocks: list[tuple[str, Any]] = [("h2", "Recovery recipes at a matched budget (beyond the paper)")]
    blocks.append(("p", f"{BASELINE_RECIPE}: LoRA on the task's labels (the paper's); {CHALLENGER_RECIPE}: the same "
                   "adapters, examples, order and steps, distilled from the unpruned model. "
                   f"Share recovered: {RECIPE_RULES['share_recovered']}."))  # fmt: skip
    for cl in result["claims"]:
        blocks.append(("h3", f"{cl['claim']} — {cl['status'].upper()}"))
        blocks.append(("p", f"Rule: {cl['rule']}. Overall: {cl['overall_rule']}."))
        for key, entry in cl["per_model"].items():
            blocks.append(("p", f"{key}: {entry['status']}, {entry['summary']}."))
            if not entry.get("per_level"):
                continue
            head = ["level %", "pruned % [95% CI]", "pruned - base (pp, paired)", f"{BASELINE_RECIPE} %",
                    f"{CHALLENGER_RECIPE} %", f"{CHALLENGER_RECIPE} - {BASELINE_RECIPE} (pp, paired) [95% CI]",
                    f"share recovered ({BASELINE_RECIPE} / {CHALLENGER_RECIPE})", "counted"]  # fmt: skip
            rows = [[x["level"], _fmt_est(x["pruned"]), _fmt_cmp(x["pruned_vs_base"]), _fmt_est(x[BASELINE_RECIPE]),
                     _fmt_est(x[CHALLENGER_RECIPE]), _fmt_cmp(x["comparison"]),
                     " / ".join(_share_pct(x["share_recovered"][r]) for r in (BASELINE_RECIPE, CHALLENGER_RECIPE)),
                     "yes" if x["informative"] else "no: pruning lost nothing"] for x in entry["per_level"]]  # fmt: skip
            blocks.append(("table", (head, rows)))
    return blocks
