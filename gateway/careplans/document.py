"""The care plan as a printable page, for every party (Theme 3 rec. 2).

``GET /fhir/CarePlan/{id}/$document`` (api/operations/careplan_document.py) answers
a complete HTML document: the plan's narrative, regenerated from the current data
(so contact details changed since the last plan version are the current ones),
with a header saying which plan version it is and when it was produced, and print
CSS (A4, no navigation chrome, tables that do not split rows across pages).
Print it, or "Save as PDF" from any browser.  No PDF is produced server-side: see
docs/referrals-and-care-plans.md for why.
"""

from __future__ import annotations

from datetime import datetime, timezone
from html import escape
from typing import Any

from gateway.careplans.narrative import render_narrative
from gateway.store.unit_of_work import Stored, UnitOfWork

PRINT_CSS = """
@page { size: A4; margin: 18mm 15mm; }
body { font-family: Arial, Helvetica, sans-serif; font-size: 11pt; color: #000; max-width: 190mm; margin: 0 auto; }
h1 { font-size: 16pt; margin: 0 0 4pt; }
h2 { font-size: 14pt; margin: 8pt 0 4pt; }
h3 { font-size: 12pt; margin: 12pt 0 4pt; border-bottom: 1px solid #444; page-break-after: avoid; }
table { border-collapse: collapse; width: 100%; margin: 4pt 0; }
th, td { border: 1px solid #666; padding: 3pt 5pt; text-align: left; vertical-align: top; }
th { background: #eee; }
tr { page-break-inside: avoid; }
.meta { font-size: 9pt; color: #333; }
.footer { margin-top: 16pt; font-size: 9pt; color: #333; border-top: 1px solid #999; padding-top: 4pt; }
@media print { .no-print { display: none; } a { color: #000; text-decoration: none; } }
"""


def render_document(uow: UnitOfWork, stored: Stored, *, now: datetime | None = None) -> str:
    plan: dict[str, Any] = stored.resource
    produced = (now or datetime.now(timezone.utc)).strftime("%Y-%m-%d %H:%M UTC")
    title = escape(str(plan.get("title") or "Integrated care plan"))
    body = render_narrative(uow, plan).replace(' xmlns="http://www.w3.org/1999/xhtml"', "", 1)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{title} - CarePlan/{escape(stored.res_id)} version {stored.version_id}</title>"
        f"<style>{PRINT_CSS}</style></head><body>"
        f"<h1>{title}</h1>"
        f"<p class=\"meta\">CarePlan/{escape(stored.res_id)}, version {stored.version_id} "
        f"(last changed {escape(stored.last_updated)}). Produced {produced}. "
        "Every party named below holds this plan; changes are sent to each of them.</p>"
        f"{body}"
        "<p class=\"footer\">Confidential: contains personal information about a child. Share only with the "
        "parties named in this plan.</p>"
        "<p class=\"no-print\"><a href=\"javascript:window.print()\">Print</a></p>"
        "</body></html>\n"
    )
