"""HIL reports: JUnit XML (one testcase per expectation) and HTML per scenario with inline SVG plots, plus an
index page. Plain Python: no plotting library, no JavaScript, no CDN; the HTML files open from disk.
"""

from __future__ import annotations

import html
import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hil_tests.expectations import Outcome
from hil_tests.runner import RunData


@dataclass
class ScenarioResult:
    data: RunData
    outcomes: list[Outcome]
    seconds: float

    @property
    def status(self) -> str:
        if self.data.errors and not self.outcomes:
            return "error"
        if any(o.status == "fail" for o in self.outcomes) or self.data.errors:
            return "fail"
        if self.outcomes and all(o.status == "skip" for o in self.outcomes):
            return "skip"
        return "pass"

    def counts(self) -> dict[str, int]:
        c = {"pass": 0, "fail": 0, "skip": 0}
        for o in self.outcomes:
            c[o.status] += 1
        return c


# ============================================================================================ JUnit
def write_junit(results: Sequence[ScenarioResult], path: Path) -> None:
    """One testsuite per scenario, one testcase per expectation (plus a "run" testcase when the run itself
    had errors); properties carry the measured values."""
    root = ET.Element("testsuites", name="hil")
    tot = {"tests": 0, "failures": 0, "skipped": 0, "errors": 0}
    for r in results:
        sc = r.data.scenario
        suite = ET.SubElement(root, "testsuite", name=sc.name, file=str(sc.file), time=f"{r.seconds:.3f}")
        props = ET.SubElement(suite, "properties")
        for k, v in (("rig", r.data.rig_name), ("time_scale", f"{r.data.time_scale:g}"),
                     ("capabilities", ",".join(sorted(r.data.capabilities))), ("workdir", str(r.data.workdir))):
            ET.SubElement(props, "property", name=k, value=v)
        n = {"tests": 0, "failures": 0, "skipped": 0, "errors": 0}
        for o in r.outcomes:
            n["tests"] += 1
            tc = ET.SubElement(suite, "testcase", classname=f"hil.{sc.slug}", name=o.expectation.name)
            tp = ET.SubElement(tc, "properties")
            ET.SubElement(tp, "property", name="measured", value=o.message)
            for k, v in o.measured.items():
                ET.SubElement(tp, "property", name=k, value=str(v))
            if o.status == "fail":
                n["failures"] += 1
                f = ET.SubElement(tc, "failure", message=o.message, type="ExpectationFailed")
                f.text = o.message
            elif o.status == "skip":
                n["skipped"] += 1
                ET.SubElement(tc, "skipped", message=o.message)
            else:
                so = ET.SubElement(tc, "system-out")
                so.text = o.message
        for a in r.data.actions:
            if a.status == "skipped":
                ET.SubElement(props, "property", name=f"skipped_action.{a.action.id}", value=a.reason)
        if r.data.errors:
            n["tests"] += 1
            n["errors"] += 1
            tc = ET.SubElement(suite, "testcase", classname=f"hil.{sc.slug}", name="run")
            err = ET.SubElement(tc, "error", message="; ".join(r.data.errors), type="RunError")
            err.text = "\n".join(r.data.errors)
        for key, count in n.items():
            suite.set(key, str(count))
            tot[key] += count
    for key, count in tot.items():
        root.set(key, str(count))
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


# ============================================================================================ SVG
_COLORS = ("#d62728", "#2ca02c", "#1f77b4", "#9467bd", "#ff7f0e")


def _nice_max(v: float) -> float:
    if v <= 0 or not math.isfinite(v):
        return 1.0
    e = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if v <= m * e:
            return m * e
    return 10 * e


def svg_plot(
    series: list[tuple[str, list[float], list[float]]],
    *,
    title: str,
    y_label: str,
    x_label: str = "s after the gateway was up",
    marks: Sequence[tuple[float, str, str]] = (),
    bands: Sequence[tuple[float, float, str, str]] = (),
    width: int = 900,
    height: int = 280,
    step: bool = False,
) -> str:
    """A line chart as an SVG string: series (label, xs, ys), vertical marks (x, label, colour), shaded x bands
    (x0, x1, label, colour)."""
    ml, mr, mt, mb = 60, 20, 28, 40
    pw, ph = width - ml - mr, height - mt - mb
    xs_all = [x for _, xs, _ in series for x in xs] + [m[0] for m in marks] + [b[0] for b in bands] + \
        [b[1] for b in bands]
    ys_all = [y for _, _, ys in series for y in ys if math.isfinite(y)]
    if not xs_all:
        return f'<p class="muted">{html.escape(title)}: no data</p>'
    x0, x1 = min(xs_all), max(xs_all)
    if x1 <= x0:
        x1 = x0 + 1.0
    ymax = _nice_max(max(ys_all, default=1.0) * 1.05)
    ymin = min(0.0, min(ys_all, default=0.0))

    def px(x: float) -> float:
        return ml + (x - x0) / (x1 - x0) * pw

    def py(y: float) -> float:
        return mt + ph - (y - ymin) / (ymax - ymin) * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title)}">',
           '<style>text{font:11px sans-serif;fill:#333}.t{font-weight:bold;font-size:12px}</style>',
           f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="#fff" stroke="#999"/>',
           f'<text class="t" x="{ml}" y="16">{html.escape(title)}</text>']
    for b0, b1, label, color in bands:
        out.append(f'<rect x="{px(b0):.1f}" y="{mt}" width="{max(1.0, px(b1) - px(b0)):.1f}" height="{ph}" '
                   f'fill="{color}" fill-opacity="0.25"><title>{html.escape(label)}</title></rect>')
    for i in range(6):  # y grid
        y = ymin + (ymax - ymin) * i / 5
        out.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{py(y):.1f}" y2="{py(y):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{ml - 4}" y="{py(y) + 4:.1f}" text-anchor="end">{y:g}</text>')
    for i in range(9):  # x ticks
        x = x0 + (x1 - x0) * i / 8
        out.append(f'<text x="{px(x):.1f}" y="{mt + ph + 14}" text-anchor="middle">{x:.2f}</text>')
    out.append(f'<text x="{ml + pw / 2}" y="{height - 6}" text-anchor="middle">{html.escape(x_label)}</text>')
    out.append(f'<text x="12" y="{mt + ph / 2}" transform="rotate(-90 12 {mt + ph / 2})" '
               f'text-anchor="middle">{html.escape(y_label)}</text>')
    for k, (label, xs, ys) in enumerate(series):
        color = _COLORS[k % len(_COLORS)]
        pts: list[str] = []
        prev_y: float | None = None
        for x, y in zip(xs, ys, strict=False):
            if not math.isfinite(y):
                continue
            if step and prev_y is not None:
                pts.append(f"{px(x):.1f},{py(prev_y):.1f}")
            pts.append(f"{px(x):.1f},{py(y):.1f}")
            prev_y = y
        if pts:
            out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.4" points="{" ".join(pts)}"/>')
        out.append(f'<rect x="{ml + 8 + 110 * k}" y="{mt + 6}" width="10" height="3" fill="{color}"/>'
                   f'<text x="{ml + 22 + 110 * k}" y="{mt + 11}">{html.escape(label)}</text>')
    for j, (x, label, color) in enumerate(marks):
        out.append(f'<line x1="{px(x):.1f}" x2="{px(x):.1f}" y1="{mt}" y2="{mt + ph}" stroke="{color}" '
                   f'stroke-width="1.5" stroke-dasharray="4 3"/>')
        out.append(f'<text x="{px(x) + 3:.1f}" y="{mt + 24 + 12 * (j % 4)}" fill="{color}" '
                   f'style="fill:{color}">{html.escape(label)}</text>')
    out.append("</svg>")
    return "".join(out)


def _rel(d: RunData, mono_ns: int) -> float:
    return (mono_ns - d.t0_mono_ns) / 1e9


def current_plot(r: ScenarioResult) -> str:
    d = r.data
    feeder = str(d.scenario.rig.get("protected_feeder", "feeder1"))
    t = d.samples.get("t_mono_ns", [])
    if not t:
        return '<p class="muted">No current samples from the rig.</p>'
    xs = [_rel(d, int(v)) for v in t]
    series = [(f"{feeder}.{ph}", xs, [float(v) for v in d.samples[f"{feeder}.{ph}"]])
              for ph in ("Ia", "Ib", "Ic") if f"{feeder}.{ph}" in d.samples]
    marks: list[tuple[float, str, str]] = []
    bands: list[tuple[float, float, str, str]] = []
    for a in d.actions:
        if a.action.type == "fault" and a.mono_ns:
            marks.append((_rel(d, a.mono_ns), f"inception {a.action.id}", "#000"))
    trips = [b for b in d.breaker_log if b.get("event") == "trip_cmd"]
    for b in trips:
        marks.append((_rel(d, int(b["mono_ns"])), "trip cmd", "#d62728"))
    br = d.samples.get(f"{feeder}.breaker", [])
    for i in range(1, len(br)):
        if br[i - 1] >= 0.5 > br[i]:
            marks.append((xs[i], "breaker open", "#8c564b"))
    for o in r.outcomes:
        if o.window is not None and o.expectation.type == "trip":
            rec = d.record(str(o.expectation.params.get("after")))
            if rec is not None and rec.mono_ns:
                s = _rel(d, rec.mono_ns)
                bands.append((s + o.window[0] / 1000, s + o.window[1] / 1000,
                              f"expected {o.expectation.params['element']} window", "#ffbf00"))
    full = svg_plot(series, title=f"{feeder} phase currents (rig samples)", y_label="A", marks=marks,
                    bands=bands)
    zoom = ""
    faults = [a for a in d.actions if a.action.type == "fault" and a.mono_ns]
    if faults:  # a zoom on the first fault: inception, window, trip
        s0 = _rel(d, faults[0].mono_ns)
        hi = max([m[0] for m in marks if m[0] >= s0] + [b[1] for b in bands] + [s0 + 0.2])
        lo_x, hi_x = s0 - 0.1, min(hi + 0.2, s0 + 30)
        idx = [i for i, x in enumerate(xs) if lo_x <= x <= hi_x]
        zs = [(lab, [xs[i] for i in idx], [ys[i] for i in idx]) for lab, _, ys in series]
        zoom = svg_plot(zs, title=f"{feeder}: zoom on {faults[0].action.id}", y_label="A",
                        marks=[m for m in marks if lo_x <= m[0] <= hi_x],
                        bands=[(max(b0, lo_x), min(b1, hi_x), lab, c) for b0, b1, lab, c in bands])
    return full + zoom


def backlog_plot(d: RunData) -> str:
    pts = [(s.mono_ns, s.backlog) for s in d.status if s.ok and s.backlog is not None]
    if not pts:
        return '<p class="muted">No backlog samples.</p>'
    xs = [_rel(d, t) for t, _ in pts]
    ys = [float(b or 0) for _, b in pts]
    marks: list[tuple[float, str, str]] = []
    bands: list[tuple[float, float, str, str]] = []
    for a in d.actions:
        if not a.mono_ns or a.status != "done":
            continue
        if a.action.type in ("network", "power_cut"):
            end = a.end_mono_ns or d.end_mono_ns
            bands.append((_rel(d, a.mono_ns), _rel(d, end), a.action.id, "#1f77b4"))
        marks.append((_rel(d, a.mono_ns), a.action.id, "#555"))
    down = [s.mono_ns for s in d.status if not s.ok]
    if down:
        marks.append((_rel(d, down[0]), "panel not answering", "#d62728"))
    return svg_plot([("sink backlog (rows)", xs, ys)], title="Sink backlog (/api/status every 0.5 s)",
                    y_label="rows", marks=marks, bands=bands, step=True)


# ============================================================================================ HTML
_CSS = """body{font-family:sans-serif;margin:24px;color:#222;max-width:1000px}
table{border-collapse:collapse;margin:8px 0 16px}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;
vertical-align:top;font-size:13px}th{background:#f4f4f4}.pass{color:#2a7a2a;font-weight:bold}
.fail,.error{color:#b00;font-weight:bold}.skip{color:#8a6d00;font-weight:bold}.muted{color:#777}
code{background:#f4f4f4;padding:1px 3px}"""


def _badge(status: str) -> str:
    return f'<span class="{status}">{status.upper()}</span>'


def scenario_html(r: ScenarioResult) -> str:
    d, sc = r.data, r.data.scenario
    e = html.escape
    rows = "".join(
        f"<tr><td>{_badge(o.status)}</td><td><code>{e(o.expectation.type)}</code></td>"
        f"<td>{e(', '.join(f'{k}={v}' for k, v in o.expectation.params.items()))}</td><td>{e(o.message)}</td></tr>"
        for o in r.outcomes
    )
    tl = []
    for a in d.actions:
        at = f"{_rel(d, a.mono_ns):.3f}" if a.mono_ns else "-"
        end = f"{_rel(d, a.end_mono_ns):.3f}" if a.end_mono_ns else ""
        badge = _badge(a.status if a.status != "done" else "pass")
        tl.append(f"<tr><td>{a.planned_s:.2f}</td><td>{at}</td><td>{end}</td><td>{e(a.action.id)}</td>"
                  f"<td><code>{e(a.action.describe())}</code></td><td>{badge}</td><td>{e(a.reason or a.detail)}</td>"
                  "</tr>")
    skipped = [a for a in d.actions if a.status == "skipped"]
    skipped_html = ("<ul>" + "".join(f"<li><b>{e(a.action.id)}</b> ({e(a.action.type)}): {e(a.reason)}</li>"
                                     for a in skipped) + "</ul>") if skipped else '<p class="muted">none</p>'
    errors = ("<h2>Run errors</h2><ul>" + "".join(f"<li class=error>{e(x)}</li>" for x in d.errors) + "</ul>"
              if d.errors else "")
    rec = d.reconciliation
    recon = ""
    if rec:
        recon = "<h2>Readings: store vs receiver</h2><table>" + "".join(
            f"<tr><th>{e(str(k))}</th><td>{e(str(v))}</td></tr>" for k, v in rec.items()) + "</table>"
    ev_rows = "".join(
        f"<tr><td>{(ev['mono_ns'] - d.t0_mono_ns) / 1e9:.3f}</td><td>{ev['priority']}</td><td>{e(ev['kind'])}</td>"
        f"<td>{e(ev['device'])}</td><td>{e(ev['message'][:160])}</td></tr>"
        for ev in d.events if ev["kind"] in ("soe", "alarm", "comm", "gap", "fault_record", "protection")
    )[:200_000]
    prot = ""
    ps = d.protection_status
    if ps:
        flat: dict[str, Any] = {}
        for k, v in ps.items():
            if isinstance(v, dict):
                flat.update({f"{k}.{k2}": v2 for k2, v2 in v.items() if not isinstance(v2, dict | list)})
            elif not isinstance(v, list):
                flat[k] = v
        prot = "<h2>Protection process (last /api/status)</h2><table>" + "".join(
            f"<tr><th>{e(str(k))}</th><td>{e(str(v))}</td></tr>" for k, v in list(flat.items())[:40]) + "</table>"
    c = r.counts()
    removed = " (removed: the run passed)" if d.workdir_removed else ""
    physics = sc.protection is not None or any(a.type in ("fault", "voltage", "frequency") for a in sc.actions)
    currents = f"<h2>Currents</h2>{current_plot(r)}" if physics else ""
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{e(sc.name)} — HIL</title>
<style>{_CSS}</style></head><body>
<p><a href="index.html">← all scenarios</a></p>
<h1>{_badge(r.status)} {e(sc.name)}</h1>
<p>{e(sc.description)}</p>
<p class="muted">file <code>{e(str(sc.file))}</code> · rig <b>{e(d.rig_name)}</b>
(can: {e(', '.join(sorted(d.capabilities)))}) · time scale {d.time_scale:g} · {r.seconds:.1f} s
· gateway runs {d.gateway_runs} · work dir <code>{e(str(d.workdir))}</code>{removed}</p>
<h2>Expectations: {c['pass']} passed, {c['fail']} failed, {c['skip']} skipped</h2>
<table><tr><th></th><th>type</th><th>parameters</th><th>measured</th></tr>{rows}</table>
{errors}
{currents}
<h2>Sink backlog</h2>{backlog_plot(d)}
<h2>Timeline</h2>
<table><tr><th>planned s</th><th>done at s</th><th>ended at s</th><th>id</th><th>action</th><th></th><th>note</th></tr>
{''.join(tl)}</table>
<h2>Skipped actions</h2>{skipped_html}
{recon}
{prot}
<h2>Events (SOE, alarms, comm, gaps)</h2>
<table><tr><th>s</th><th>prio</th><th>kind</th><th>device</th><th>message</th></tr>{ev_rows}</table>
</body></html>"""


def index_html(results: Sequence[ScenarioResult]) -> str:
    e = html.escape
    rows = []
    for r in results:
        c = r.counts()
        fails = "; ".join(o.message for o in r.outcomes if o.status == "fail")[:300]
        rows.append(f"<tr><td>{_badge(r.status)}</td><td><a href=\"{e(r.data.scenario.slug)}.html\">"
                    f"{e(r.data.scenario.name)}</a></td><td>{c['pass']}/{c['fail']}/{c['skip']}</td>"
                    f"<td>{r.seconds:.1f}</td><td>{e(fails or '; '.join(r.data.errors))}</td></tr>")
    total = {"pass": sum(r.status == "pass" for r in results), "fail": sum(r.status in ("fail", "error")
                                                                          for r in results)}
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>HIL report</title>
<style>{_CSS}</style></head><body><h1>HIL report</h1>
<p>{len(results)} scenarios: {total['pass']} passed, {total['fail']} failed.</p>
<table><tr><th></th><th>scenario</th><th>pass/fail/skip</th><th>s</th><th>failures</th></tr>{''.join(rows)}</table>
</body></html>"""


def write_html(results: Sequence[ScenarioResult], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for r in results:
        p = out_dir / f"{r.data.scenario.slug}.html"
        p.write_text(scenario_html(r), encoding="utf-8")
        paths.append(p)
    idx = out_dir / "index.html"
    idx.write_text(index_html(results), encoding="utf-8")
    return [idx, *paths]


def summary_line(r: ScenarioResult) -> str:
    c = r.counts()
    return f"{r.status.upper():5} {r.data.scenario.name} ({c['pass']} passed, {c['fail']} failed, " \
           f"{c['skip']} skipped, {r.seconds:.1f} s)"


def result_dict(r: ScenarioResult) -> dict[str, Any]:
    return {"scenario": r.data.scenario.name, "status": r.status,
            "expectations": [{"name": o.expectation.name, "status": o.status, "message": o.message}
                             for o in r.outcomes], "errors": r.data.errors}
