/*! chart.js — MiniChart, the gateway panel's own small canvas charting library.
 * Written for this project (not a copy of any other library); MIT-style licence: use, copy, modify and
 * distribute freely, provided this notice is kept. No dependencies, no network: it ships with the package.
 *
 * MiniChart.create(container, opts) → chart with .set(opts) and .destroy(). The container (give it a height)
 * gets a legend and a <canvas> (an existing <canvas> child is reused); the chart follows the container's size
 * (ResizeObserver) and the screen's devicePixelRatio. opts:
 *   xType: "time" (x in epoch ms, shown in local time) | "category" (categories: [labels])
 *   series: [{name, color?, kind: "line"|"bar", x: [..] (time only), y: [..], lo?: [..], hi?: [..] (band),
 *             partial?: [bool] (bars drawn lighter), unit?}]   null / undefined values leave a gap
 *   hlines: [{y, name, color?}]   dashed horizontal reference lines (a target)
 *   gapMs: consecutive time points further apart than this (or 3 × the series' median spacing, if more)
 *          are not joined
 *   xMin, xMax: time axis domain (default: the data's)
 *   yUnit: shown in the readout;  fmt: value → text;  empty: text when there is nothing to draw
 * Hovering shows a crosshair and a readout (time or category, then each series' value [min–max]).
 */
"use strict";
const MiniChart = (() => {
  const PALETTE = ["#1f6feb", "#d9480f", "#2b8a3e", "#9c36b5", "#0b7285", "#c2255c", "#5c940d", "#7048e8"];
  const AXIS = "#5f6b7a", GRID = "#e6eaef", INK = "#17212b";
  const FONT = "11px system-ui,-apple-system,'Segoe UI',Roboto,sans-serif";
  const MIN_MS = 60000, HOUR_MS = 3600000, DAY_MS = 86400000;
  const TIME_STEPS = [1000, 2000, 5000, 10000, 15000, 30000, MIN_MS, 2 * MIN_MS, 5 * MIN_MS, 10 * MIN_MS,
    15 * MIN_MS, 30 * MIN_MS, HOUR_MS, 2 * HOUR_MS, 3 * HOUR_MS, 6 * HOUR_MS, 12 * HOUR_MS, DAY_MS, 2 * DAY_MS,
    7 * DAY_MS, 14 * DAY_MS, 28 * DAY_MS];

  const ok = (v) => v !== null && v !== undefined && Number.isFinite(v);
  const pad2 = (n) => String(n).padStart(2, "0");

  function defaultFmt(v) {
    if (!ok(v)) return "—";
    const a = Math.abs(v);
    if (a !== 0 && (a >= 1e6 || a < 1e-3)) return v.toExponential(3);
    return Number(v.toPrecision(5)).toString();
  }

  // "nice" step (1, 2, 2.5, 5 × 10^k) for about n intervals over range
  function niceStep(range, n) {
    const raw = range / Math.max(1, n);
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const f = raw / mag;
    return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 2.5 ? 2.5 : f <= 5 ? 5 : 10) * mag;
  }
  function valueTicks(lo, hi, n) {
    const step = niceStep(hi - lo, n);
    const dec = Math.max(0, -Math.floor(Math.log10(step) + 1e-9) + (String(step / Math.pow(10,
      Math.floor(Math.log10(step)))).includes(".") ? 1 : 0));
    const first = Math.ceil(lo / step - 1e-9) * step;
    const ticks = [];
    for (let v = first; v <= hi + step * 1e-9; v += step) ticks.push(Math.abs(v) < step * 1e-9 ? 0 : v);
    return { ticks, step, label: (v) => (Math.abs(v) >= 1e6 ? v.toExponential(1) : v.toFixed(Math.min(dec, 6))) };
  }
  function tzOffsetMs(t) { return -new Date(t).getTimezoneOffset() * MIN_MS; }
  function timeTicks(lo, hi, n) {
    let step = TIME_STEPS[TIME_STEPS.length - 1];
    for (const s of TIME_STEPS) { if ((hi - lo) / s <= n) { step = s; break; } }
    const off = tzOffsetMs(lo);
    const first = Math.ceil((lo + off) / step) * step - off;
    const ticks = [];
    for (let t = first; t <= hi; t += step) ticks.push(t);
    return { ticks, step };
  }
  function timeLabel(t, step) {
    const d = new Date(t);
    const md = `${pad2(d.getMonth() + 1)}-${pad2(d.getDate())}`;
    if (step >= DAY_MS || (d.getHours() === 0 && d.getMinutes() === 0 && d.getSeconds() === 0)) return md;
    const hm = `${pad2(d.getHours())}:${pad2(d.getMinutes())}`;
    return step < MIN_MS ? `${hm}:${pad2(d.getSeconds())}` : hm;
  }
  function fullTime(t) {
    const d = new Date(t);
    return `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ` +
      `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
  }
  function rgba(hex, a) {
    const n = parseInt(hex.slice(1), 16);
    return `rgba(${(n >> 16) & 255},${(n >> 8) & 255},${n & 255},${a})`;
  }
  // index of the x nearest to t in sorted xs (−1 when empty)
  function nearest(xs, t) {
    if (!xs || !xs.length) return -1;
    let lo = 0, hi = xs.length - 1;
    while (lo < hi) { const mid = (lo + hi) >> 1; if (xs[mid] < t) lo = mid + 1; else hi = mid; }
    if (lo > 0 && Math.abs(xs[lo - 1] - t) <= Math.abs(xs[lo] - t)) lo -= 1;
    return lo;
  }

  function create(container, opts) {
    container.classList.add("minichart");
    if (getComputedStyle(container).position === "static") container.style.position = "relative";
    Object.assign(container.style, { display: "flex", flexDirection: "column" });
    const legend = document.createElement("div");
    legend.className = "minichart-legend";
    Object.assign(legend.style, { display: "flex", flexWrap: "wrap", gap: ".2rem 1rem", fontSize: ".85rem",
      minHeight: "1.3rem" });
    const wrap = document.createElement("div");
    Object.assign(wrap.style, { position: "relative", flex: "1 1 auto", minHeight: "0" });
    const canvas = container.querySelector("canvas") || document.createElement("canvas");
    Object.assign(canvas.style, { position: "absolute", inset: "0", width: "100%", height: "100%" });
    canvas.setAttribute("role", "img");
    const tip = document.createElement("div");
    Object.assign(tip.style, { position: "absolute", pointerEvents: "none", background: "rgba(20,32,44,.92)",
      color: "#fff", font: FONT, padding: ".3rem .5rem", borderRadius: "4px", whiteSpace: "nowrap", zIndex: "2",
      lineHeight: "1.4" });
    tip.hidden = true;
    container.textContent = "";
    wrap.append(canvas, tip);
    container.append(legend, wrap);
    const ctx = canvas.getContext("2d");
    let o = {}, w = 0, h = 0, geo = null, hoverX = null;

    function set(next) {
      o = Object.assign({ xType: "time", series: [], hlines: [], categories: [], fmt: defaultFmt }, next);
      o.series = o.series.map((s, i) => Object.assign({ kind: "line", color: PALETTE[i % PALETTE.length] }, s));
      for (const s of o.series) s.gap = gapOf(s);
      legend.innerHTML = "";
      for (const s of o.series) legend.append(legendItem(s.color, s.name, s.kind === "bar" ? "bar" : "line"));
      for (const l of o.hlines) legend.append(legendItem(l.color || INK, l.name, "dash"));
      canvas.setAttribute("aria-label", o.series.map((s) => s.name).join(", ") || "chart");
      draw();
    }
    function legendItem(color, name, style) {
      const el = document.createElement("span");
      const sw = document.createElement("span");
      Object.assign(sw.style, { display: "inline-block", width: "1.2rem", marginRight: ".35rem",
        verticalAlign: "middle" });
      if (style === "bar") Object.assign(sw.style, { height: ".7rem", background: color });
      else Object.assign(sw.style, { height: "0", borderTop: `${style === "dash" ? "2px dashed" : "3px solid"} ${color}` });
      el.append(sw, document.createTextNode(name || ""));
      return el;
    }

    // a series' line breaks where x jumps by more than max(gapMs, 3 × its median spacing): sparse data (slower
    // than one reading per bucket) stays a line, a real outage still shows as a gap
    function gapOf(s) {
      if (!o.gapMs || !s.x || s.x.length < 3) return o.gapMs || 0;
      const d = [];
      for (let i = 1; i < s.x.length; i++) d.push(s.x[i] - s.x[i - 1]);
      d.sort((a, b) => a - b);
      return Math.max(o.gapMs, 3 * d[d.length >> 1]);
    }

    function resize() {
      const r = wrap.getBoundingClientRect();
      const dpr = window.devicePixelRatio || 1;
      w = Math.max(50, r.width); h = Math.max(50, r.height);
      canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr);
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      draw();
    }

    function yDomain() {
      let lo = Infinity, hi = -Infinity;
      const take = (v) => { if (ok(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); } };
      for (const s of o.series) {
        for (const arr of [s.y, s.lo, s.hi]) if (arr) arr.forEach(take);
        if (s.kind === "bar") take(0);
      }
      for (const l of o.hlines) take(l.y);
      if (o.yZero) take(0);
      if (lo === Infinity) return null;
      if (lo === hi) { const d = Math.abs(lo) * 0.1 || 1; lo -= d; hi += d; } else {
        const m = (hi - lo) * 0.05;
        hi += m; lo = (lo >= 0 && lo - m < 0) ? 0 : lo - m;
      }
      return [lo, hi];
    }
    function xDomain() {
      if (o.xType === "category") return [0, Math.max(1, o.categories.length)];
      let lo = ok(o.xMin) ? o.xMin : Infinity, hi = ok(o.xMax) ? o.xMax : -Infinity;
      if (!ok(o.xMin) || !ok(o.xMax)) {
        for (const s of o.series) if (s.x && s.x.length) { lo = Math.min(lo, s.x[0]); hi = Math.max(hi, s.x[s.x.length - 1]); }
      }
      if (lo === Infinity) return null;
      if (lo === hi) { lo -= MIN_MS; hi += MIN_MS; }
      return [lo, hi];
    }

    function draw() {
      if (!w) return;
      ctx.clearRect(0, 0, w, h);
      ctx.font = FONT;
      const yd = yDomain(), xd = xDomain();
      if (!yd || !xd) {
        geo = null;
        ctx.fillStyle = AXIS; ctx.textAlign = "center"; ctx.textBaseline = "middle";
        ctx.fillText(o.empty || "no data in this range", w / 2, h / 2);
        return;
      }
      const yt = valueTicks(yd[0], yd[1], Math.max(2, Math.floor(h / 45)));
      const yLo = Math.min(yd[0], yt.ticks[0] ?? yd[0]), yHi = Math.max(yd[1], yt.ticks[yt.ticks.length - 1] ?? yd[1]);
      const labW = Math.max(...yt.ticks.map((v) => ctx.measureText(yt.label(v)).width), 10);
      const L = Math.ceil(labW) + 10, R = 12, T = 8, B = 22;
      const pw = Math.max(10, w - L - R), ph = Math.max(10, h - T - B);
      const X = (v) => L + ((v - xd[0]) / (xd[1] - xd[0])) * pw;
      const Y = (v) => T + ph - ((v - yLo) / (yHi - yLo)) * ph;
      geo = { L, T, pw, ph, X, xd, Y };
      // grid + y axis
      ctx.lineWidth = 1; ctx.textAlign = "right"; ctx.textBaseline = "middle";
      for (const v of yt.ticks) {
        const y = Math.round(Y(v)) + 0.5;
        ctx.strokeStyle = GRID; ctx.beginPath(); ctx.moveTo(L, y); ctx.lineTo(L + pw, y); ctx.stroke();
        ctx.fillStyle = AXIS; ctx.fillText(yt.label(v), L - 6, y);
      }
      // x axis
      ctx.textAlign = "center"; ctx.textBaseline = "top"; ctx.fillStyle = AXIS;
      if (o.xType === "time") {
        const tt = timeTicks(xd[0], xd[1], Math.max(2, Math.floor(pw / 90)));
        for (const t of tt.ticks) {
          const x = Math.round(X(t)) + 0.5;
          ctx.strokeStyle = GRID; ctx.beginPath(); ctx.moveTo(x, T); ctx.lineTo(x, T + ph); ctx.stroke();
          ctx.fillText(timeLabel(t, tt.step), x, T + ph + 5);
        }
      } else {
        const n = o.categories.length, every = Math.max(1, Math.ceil(n / Math.max(1, Math.floor(pw / 56))));
        o.categories.forEach((c, i) => { if (i % every === 0) ctx.fillText(String(c), X(i + 0.5), T + ph + 5); });
      }
      ctx.strokeStyle = AXIS; ctx.beginPath(); ctx.moveTo(L, T + ph + 0.5); ctx.lineTo(L + pw, T + ph + 0.5); ctx.stroke();
      ctx.save(); ctx.beginPath(); ctx.rect(L, T, pw, ph); ctx.clip();
      const bars = o.series.filter((s) => s.kind === "bar");
      bars.forEach((s, k) => drawBars(s, k, bars.length, X, Y, yLo));
      for (const s of o.series) if (s.kind !== "bar") drawLine(s, X, Y);
      for (const l of o.hlines) {
        if (!ok(l.y)) continue;
        const y = Math.round(Y(l.y)) + 0.5;
        ctx.strokeStyle = l.color || INK; ctx.lineWidth = 1.5; ctx.setLineDash([6, 4]);
        ctx.beginPath(); ctx.moveTo(L, y); ctx.lineTo(L + pw, y); ctx.stroke(); ctx.setLineDash([]);
        ctx.fillStyle = l.color || INK; ctx.textAlign = "right"; ctx.textBaseline = "bottom";
        ctx.fillText(`${l.name || ""} ${o.fmt(l.y)}`, L + pw - 4, y - 2);
      }
      if (hoverX !== null) {
        ctx.strokeStyle = "rgba(23,33,43,.55)"; ctx.lineWidth = 1;
        ctx.beginPath(); ctx.moveTo(hoverX + 0.5, T); ctx.lineTo(hoverX + 0.5, T + ph); ctx.stroke();
      }
      ctx.restore();
    }

    // runs of consecutive drawable indices (value present, no time gap)
    function runs(s, has) {
      const out = []; let cur = null;
      for (let i = 0; i < s.y.length; i++) {
        const gap = cur && s.gap && s.x && s.x[i] - s.x[i - 1] > s.gap;
        if (!has(i) || gap) { if (cur) out.push(cur); cur = null; }
        if (has(i)) { if (!cur) cur = []; cur.push(i); }
      }
      if (cur) out.push(cur);
      return out;
    }
    function drawLine(s, X, Y) {
      const xs = s.x || s.y.map((_, i) => i + 0.5);
      if (s.lo && s.hi) {
        ctx.fillStyle = rgba(s.color, 0.18);
        for (const r of runs(s, (i) => ok(s.lo[i]) && ok(s.hi[i]))) {
          ctx.beginPath();
          r.forEach((i, k) => (k ? ctx.lineTo(X(xs[i]), Y(s.hi[i])) : ctx.moveTo(X(xs[i]), Y(s.hi[i]))));
          for (let k = r.length - 1; k >= 0; k--) ctx.lineTo(X(xs[r[k]]), Y(s.lo[r[k]]));
          ctx.closePath(); ctx.fill();
          if (r.length === 1) { ctx.fillRect(X(xs[r[0]]) - 1.5, Y(s.hi[r[0]]), 3, Y(s.lo[r[0]]) - Y(s.hi[r[0]]) + 0.5); }
        }
      }
      ctx.strokeStyle = s.color; ctx.fillStyle = s.color; ctx.lineWidth = 1.6; ctx.lineJoin = "round";
      for (const r of runs(s, (i) => ok(s.y[i]))) {
        if (r.length === 1) { ctx.beginPath(); ctx.arc(X(xs[r[0]]), Y(s.y[r[0]]), 2, 0, 2 * Math.PI); ctx.fill(); continue; }
        ctx.beginPath();
        r.forEach((i, k) => (k ? ctx.lineTo(X(xs[i]), Y(s.y[i])) : ctx.moveTo(X(xs[i]), Y(s.y[i]))));
        ctx.stroke();
      }
    }
    function drawBars(s, k, n, X, Y, yLo) {
      const slot = X(1) - X(0), group = slot * 0.78, bw = group / n;
      const base = Y(Math.max(0, yLo));
      s.y.forEach((v, i) => {
        if (!ok(v)) return;
        const x = X(i) + (slot - group) / 2 + k * bw, y = Y(v);
        const partial = s.partial && s.partial[i];
        ctx.fillStyle = partial ? rgba(s.color, 0.4) : s.color;
        ctx.fillRect(x + 0.5, Math.min(y, base), Math.max(1, bw - 1), Math.abs(base - y));
        if (partial) { ctx.strokeStyle = s.color; ctx.setLineDash([3, 2]); ctx.strokeRect(x + 1, Math.min(y, base) + 0.5, Math.max(1, bw - 2), Math.abs(base - y)); ctx.setLineDash([]); }
      });
    }

    function onMove(ev) {
      if (!geo) return;
      const r = canvas.getBoundingClientRect();
      const px = ev.clientX - r.left, py = ev.clientY - r.top;
      if (px < geo.L || px > geo.L + geo.pw) { onLeave(); return; }
      const xv = geo.xd[0] + ((px - geo.L) / geo.pw) * (geo.xd[1] - geo.xd[0]);
      const lines = [];
      if (o.xType === "category") {
        const i = Math.min(o.categories.length - 1, Math.max(0, Math.floor(xv)));
        hoverX = geo.X(i + 0.5);
        lines.push(`<b>${esc(o.categories[i])}</b>`);
        for (const s of o.series) lines.push(row(s, s.y[i], null, null, s.partial && s.partial[i] ? " (so far)" : ""));
      } else {
        let best = null;
        const rows = [];
        for (const s of o.series) {
          const i = nearest(s.x, xv);
          const near = i >= 0 && (!s.gap || Math.abs(s.x[i] - xv) <= s.gap);
          if (near && (best === null || Math.abs(s.x[i] - xv) < Math.abs(best - xv))) best = s.x[i];
          rows.push(near ? row(s, s.y[i], s.lo && s.lo[i], s.hi && s.hi[i], "") : row(s, null, null, null, ""));
        }
        hoverX = geo.X(best !== null ? best : xv);
        lines.push(`<b>${esc(fullTime(best !== null ? best : xv))}</b>`, ...rows);
      }
      tip.innerHTML = lines.join("<br>");
      tip.hidden = false;
      const tw = tip.offsetWidth, th = tip.offsetHeight;
      tip.style.left = `${hoverX + 12 + tw > w ? Math.max(0, hoverX - 12 - tw) : hoverX + 12}px`;
      tip.style.top = `${Math.max(0, Math.min(h - th, py - th / 2))}px`;
      draw();
    }
    function row(s, v, lo, hi, note) {
      const sw = `<span style="display:inline-block;width:.6rem;height:.6rem;background:${s.color};margin-right:.3rem"></span>`;
      const unit = s.unit || o.yUnit || "";
      const band = ok(lo) && ok(hi) ? ` <span style="opacity:.75">[${o.fmt(lo)} – ${o.fmt(hi)}]</span>` : "";
      return `${sw}${esc(s.name)}: ${o.fmt(v)}${ok(v) && unit ? " " + esc(unit) : ""}${band}${note}`;
    }
    function onLeave() { tip.hidden = true; if (hoverX !== null) { hoverX = null; draw(); } }
    function esc(t) {
      return String(t == null ? "" : t).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;",
        '"': "&quot;", "'": "&#39;" })[c]);
    }

    canvas.addEventListener("mousemove", onMove);
    canvas.addEventListener("mouseleave", onLeave);
    const ro = typeof ResizeObserver !== "undefined" ? new ResizeObserver(resize) : null;
    if (ro) ro.observe(wrap); else window.addEventListener("resize", resize);
    set(opts || {});
    resize();
    return {
      set,
      destroy() { if (ro) ro.disconnect(); else window.removeEventListener("resize", resize); container.textContent = ""; },
    };
  }

  return { create, niceStep, valueTicks, timeTicks, PALETTE };
})();
