"""``results.json`` and a self-contained ``index.html`` (inline CSS, no scripts, no external
assets): green = pass, red = unexpected failure, amber = expected failure (reason shown on hover
and listed below), blue = listed as expected to fail but passed, grey = not applicable."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from testbed.matrix import CREDENTIALS, MODES, PEERS, SIZES

COLORS = {"pass": "#2e7d32", "fail": "#c62828", "xfail": "#ef8f00", "xpass": "#1565c0"}
LABEL = {"pass": "pass", "fail": "FAIL", "xfail": "expected fail", "xpass": "unexpected pass"}
CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}
th,td{border:1px solid #ccc;padding:3px 6px;font-size:13px;text-align:center}
th{background:#f2f2f2} td.l{text-align:left}
.c{color:#fff;font-weight:600;white-space:nowrap}
.na{background:#eee;color:#999}
.sum span{display:inline-block;margin-right:1em;padding:2px 8px;border-radius:3px;color:#fff}
small{font-weight:400}
"""


def write(out: Path, results: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "index.html").write_text(render(results))


def counts(items: list[dict[str, Any]]) -> dict[str, int]:
    c = dict.fromkeys(COLORS, 0)
    for it in items:
        c[it["outcome"]] += 1
    return c


def _badge(outcome: str, text: str, tip: str = "") -> str:
    t = f' title="{html.escape(tip)}"' if tip else ""
    return f'<td class="c" style="background:{COLORS[outcome]}"{t}>{text}</td>'


def _cell_text(it: dict[str, Any]) -> str:
    if it["ok"]:
        tp = it["throughput"] or 0.0
        rate = f"{tp:.0f} MB/s" if tp >= 10 else f"{tp * 1000:.0f} kB/s"
        return f"{it['duration']:.2f}s<br><small>{rate}</small>"
    return f"{LABEL[it['outcome']]}<br><small>{it['duration']:.1f}s</small>"


def _cell_tip(it: dict[str, Any]) -> str:
    parts = [it["id"]]
    if it["error"]:
        parts.append(it["error"])
    if it["reason"]:
        parts.append("expected: " + it["reason"])
    return "\n".join(parts)


def render(r: dict[str, Any]) -> str:
    h: list[str] = ["<!doctype html><html><head><meta charset='utf-8'>"]
    h.append(f"<title>segate testbed {html.escape(r['started'])}</title><style>{CSS}</style>")
    h.append("</head><body><h1>segate interoperability testbed</h1>")
    verdict = {0: "PASSED", 1: "FAILED (unexpected failures)", 130: "INTERRUPTED"}.get(
        r["exit_status"], "ERROR (the grid could not be built or the run broke off)"
    )
    h.append(
        f"<p><b>{verdict}</b> &mdash; {'quick' if r['quick'] else 'full'} run, started "
        f"{html.escape(r['started'])}, {r['duration']:.0f} s. Hover a cell for the client error "
        "or the reason it is expected to fail.</p>"
    )
    for title, key in (("Copy matrix", "matrix"), ("Conformance", "conformance")):
        c = counts(r[key])
        spans = "".join(
            f'<span style="background:{COLORS[k]}">{LABEL[k]}: {n}</span>' for k, n in c.items()
        )
        h.append(f"<p class='sum'><b>{title}:</b> {spans}</p>")
    h.append("<h2>Peers</h2><table><tr><th>name</th><th>kind</th><th>URL</th><th>pid</th></tr>")
    for p in r["peers"]:
        h.append(
            f"<tr><td>{p['name']}</td><td>{p['kind']}</td><td class='l'>{html.escape(p['url'])}"
            f"</td><td>{p['pid']}</td></tr>"
        )
    h.append("</table>")
    if r["events"]:
        h.append("<p>Events: " + "; ".join(html.escape(e) for e in r["events"]) + "</p>")
    h.extend(_summary(r["matrix"]))
    h.extend(_matrix(r["matrix"]))
    h.extend(_conformance(r["conformance"], r["conformance_peers"]))
    h.extend(_expected(r))
    h.append("</body></html>")
    return "\n".join(h)


def _summary(items: list[dict[str, Any]]) -> list[str]:
    """Passed / run per peer pair and mode, coloured by the worst outcome in it."""
    rank = {"pass": 0, "xpass": 1, "xfail": 2, "fail": 3}
    h = ["<h2>Summary</h2><table><tr><th>source &rarr; destination</th>"]
    h.extend(f"<th>{m}</th>" for m in MODES)
    h.append("</tr>")
    for src in PEERS:
        for dst in PEERS:
            pair = [it for it in items if it["src"] == src and it["dst"] == dst]
            if not pair:
                continue
            h.append(f"<tr><td class='l'>{src} &rarr; {dst}</td>")
            for m in MODES:
                cells = [it for it in pair if it["mode"] == m]
                if not cells:
                    h.append("<td class='na'>&ndash;</td>")
                    continue
                worst = max((it["outcome"] for it in cells), key=rank.__getitem__)
                ok = sum(it["ok"] for it in cells)
                h.append(_badge(worst, f"{ok}/{len(cells)} passed"))
            h.append("</tr>")
    h.append("</table>")
    return h


def _column(it: dict[str, Any]) -> str:
    return it["cred"] if it.get("client", "gfal") == "gfal" else f"{it['cred']} ({it['client']})"


def _matrix(items: list[dict[str, Any]]) -> list[str]:
    by = {(it["src"], it["dst"], it["mode"], _column(it), it["size"]): it for it in items}
    labels: list[str] = []
    for it in items:
        if _column(it) not in labels:
            labels.append(_column(it))
    order = {c: i for i, c in enumerate(CREDENTIALS)}
    labels.sort(key=lambda c: (order.get(c.split()[0], 99), c))
    cols = [(c, s) for s in SIZES for c in labels if any(k[3:] == (c, s) for k in by)]
    h = [
        "<h2>Copy matrix</h2><p>Rows: source &rarr; destination. Columns: credential (client, "
        "when not gfal-copy) and file size. Cells: duration and throughput.</p>"
    ]
    for mode in MODES:
        if not any(it["mode"] == mode for it in items):
            continue
        h.append(f"<h3>{mode}</h3><table><tr><th>source &rarr; destination</th>")
        h.extend(f"<th>{html.escape(c)}<br><small>{s}</small></th>" for c, s in cols)
        h.append("</tr>")
        for src in PEERS:
            for dst in PEERS:
                row = [by.get((src, dst, mode, c, s)) for c, s in cols]
                if src == dst or not any(row):
                    continue
                h.append(f"<tr><td class='l'>{src} &rarr; {dst}</td>")
                for cell in row:
                    if cell is None:
                        h.append("<td class='na'>&ndash;</td>")
                    else:
                        h.append(_badge(cell["outcome"], _cell_text(cell), _cell_tip(cell)))
                h.append("</tr>")
        h.append("</table>")
    return h


def _conformance(items: list[dict[str, Any]], peers: list[str]) -> list[str]:
    h = [
        "<h2>Conformance</h2><p>The token and path-scope cases of the project's tests, against "
        "every SE. <i>want</i> is the WLCG-profile answer as segate gives it; cells show the "
        "HTTP status each peer gave.</p><table><tr><th>case</th><th>request</th><th>want</th>"
    ]
    h.extend(f"<th>{html.escape(p)}</th>" for p in peers)
    h.append("</tr>")
    order: list[str] = []
    for it in items:
        if it["case"] not in order:
            order.append(it["case"])
    by = {(it["case"], it["peer"]): it for it in items}
    for case in order:
        first = next(it for it in items if it["case"] == case)
        h.append(
            f"<tr><td class='l'><b>{case}</b><br><small>{html.escape(first['title'])}</small>"
            f"</td><td class='l'><small>{first['method']} {html.escape(first['path'])}</small>"
            f"</td><td>{first['want']}</td>"
        )
        for p in peers:
            res = by.get((case, p))
            if res is None:
                h.append("<td class='na'>&ndash;</td>")
                continue
            tip = f"{res['detail']}\n{'expected: ' + res['reason'] if res['reason'] else ''}"
            h.append(_badge(res["outcome"], str(res["status"] or "error"), tip.strip()))
        h.append("</tr>")
    h.append("</table>")
    return h


def _expected(r: dict[str, Any]) -> list[str]:
    rows = [(it, it["id"], it["error"]) for it in r["matrix"]]
    rows += [
        (it, f"{it['case']} @ {it['peer']}", f"{it['status']} {it['detail']}")
        for it in r["conformance"]
    ]
    h = ["<h2>Unexpected results</h2>"]
    odd = [(it, name, err) for it, name, err in rows if it["outcome"] in ("fail", "xpass")]
    if not odd:
        h.append("<p>None: everything that should pass passed.</p>")
    else:
        h.append("<table><tr><th>outcome</th><th>item</th><th>client error / answer</th></tr>")
        for it, name, err in odd:
            h.append(
                f"<tr>{_badge(it['outcome'], LABEL[it['outcome']])}<td class='l'>"
                f"{html.escape(name)}</td><td class='l'><small>{html.escape(err)}</small></td></tr>"
            )
        h.append("</table>")
    groups: dict[str, list[tuple[str, str]]] = {}
    for it, name, err in rows:
        if it["outcome"] == "xfail":
            groups.setdefault(it["reason"], []).append((name, err))
    h.append("<h2>Expected failures (testbed/expected.toml)</h2><table><tr><th>reason</th>")
    h.append("<th>n</th><th>items (hover for the client error)</th></tr>")
    for reason, items in groups.items():
        names = ", ".join(
            f'<span title="{html.escape(err)}">{html.escape(n)}</span>' for n, err in items
        )
        h.append(
            f"<tr><td class='l' style='max-width:40em'>{html.escape(reason)}</td>"
            f"<td>{len(items)}</td><td class='l'><small>{names}</small></td></tr>"
        )
    h.append("</table>")
    return h
