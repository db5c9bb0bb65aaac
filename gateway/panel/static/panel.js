// Shared panel script (loaded first on every page, no inline scripts: CSP script-src 'self').
// Page scripts read their data with Panel.data(), post with Panel.post() (adds the CSRF token), and listen for
// live updates as DOM events on `document`: 'panel:summary', 'panel:values', 'panel:events' (detail = payload).
// A page that shows point values sets `Panel.want.values = true` (and optionally Panel.want.points = [ids])
// before DOMContentLoaded; the stream is opened once, after the page scripts ran.
"use strict";
const Panel = (() => {
  const want = { values: false, points: null };
  let pageData;
  function data() {
    if (pageData === undefined) {
      const el = document.getElementById("page-data");
      pageData = el ? JSON.parse(el.textContent) : null;
    }
    return pageData;
  }
  function csrf() {
    const m = document.querySelector('meta[name="csrf-token"]');
    return m ? m.content : "";
  }
  function role() {
    const m = document.querySelector('meta[name="user-role"]');
    return m ? m.content : "viewer";
  }
  // POST a JSON body; resolves to {ok, status, data} (data = parsed JSON or {error: text}). Never throws.
  async function post(url, body) {
    try {
      const r = await fetch(url, {
        method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json", "Accept": "application/json", "X-CSRF-Token": csrf() },
        body: JSON.stringify(body || {}),
      });
      let d;
      try { d = await r.json(); } catch (e) { d = { error: r.statusText }; }
      return { ok: r.ok, status: r.status, data: d };
    } catch (e) {
      return { ok: false, status: 0, data: { error: "the gateway did not answer: " + e } };
    }
  }
  async function getJSON(url) {
    const r = await fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } });
    if (r.status === 401) { location.href = "/login?next=" + encodeURIComponent(location.pathname); }
    if (!r.ok) throw new Error(url + ": " + r.status);
    return r.json();
  }
  const escMap = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
  function esc(s) { return String(s == null ? "" : s).replace(/[&<>"']/g, (c) => escMap[c]); }
  function fmtValue(v) {
    if (v === null || v === undefined || Number.isNaN(v)) return "—";
    const a = Math.abs(v);
    if (a !== 0 && (a >= 1e6 || a < 1e-3)) return v.toExponential(3);
    return Number(v.toPrecision(6)).toString();
  }
  function fmtAge(seconds) {
    if (seconds === null || seconds === undefined) return "never";
    if (seconds < 60) return seconds.toFixed(1) + " s";
    if (seconds < 3600) return (seconds / 60).toFixed(1) + " min";
    if (seconds < 86400) return (seconds / 3600).toFixed(1) + " h";
    return (seconds / 86400).toFixed(1) + " d";
  }
  // UTC epoch ns → local "YYYY-MM-DD HH:MM:SS.uuuuuu" (µs kept: SOE order matters).
  function fmtTs(ns) {
    if (!ns) return "—";
    const big = BigInt(ns);
    const ms = Number(big / 1000000n);
    const us = Number((big / 1000n) % 1000000n);
    const d = new Date(ms);
    const p = (n, w) => String(n).padStart(w || 2, "0");
    return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:` +
      `${p(d.getSeconds())}.${p(us, 6)}`;
  }
  let source = null;
  function connect() {
    const q = new URLSearchParams();
    if (want.values) q.set("values", "1");
    if (want.points && want.points.length) q.set("points", want.points.join(","));
    else if (want.points) q.delete("values");  // an empty selection: no values at all (not "every point")
    source = new EventSource("/api/stream?" + q.toString());
    const dot = document.getElementById("live-dot");
    source.onopen = () => { if (dot) { dot.className = "live on"; dot.title = "live updates: connected"; } };
    source.onerror = () => { if (dot) { dot.className = "live off"; dot.title = "live updates: reconnecting"; } };
    for (const name of ["summary", "values", "events"]) {
      source.addEventListener(name, (ev) => {
        const detail = JSON.parse(ev.data);
        if (name === "summary") badge(detail);
        document.dispatchEvent(new CustomEvent("panel:" + name, { detail }));
      });
    }
  }
  function badge(summary) {
    const b = document.getElementById("alarm-badge");
    if (!b) return;
    const n = summary.alarms_unacked || 0;
    b.textContent = String(n);
    b.hidden = n === 0;
  }
  document.addEventListener("DOMContentLoaded", () => { if (document.getElementById("live-dot")) connect(); });
  return { want, data, csrf, role, post, getJSON, esc, fmtValue, fmtAge, fmtTs,
    reconnect() { if (source) source.close(); connect(); } };
})();
