// Alarms & SOE page: renders the alarm book / SOE rows from the page data (the JSON of GET /alarms), applies the
// filters without a page load (the URL keeps them, so reload, bookmarks and the CSV link use the same), re-fetches
// when alarm/SOE events arrive on the live stream, and acknowledges (operator and up; the server checks again).
"use strict";
(() => {
  const ALARM_KINDS = new Set(["alarm", "comm", "gap", "fault_record"]);
  const SOE_KINDS = new Set(["soe", "control", "protection", "fault_record"]);
  let d = Panel.data();
  const form = document.getElementById("alarm-filters");
  const table = document.getElementById("alarm-table");
  if (!d || !form || !table) return;
  const selected = new Set();

  // "2026-11-25T00:40:01.123456Z" → local "YYYY-MM-DD HH:MM:SS.uuuuuu" (µs kept exactly: taken from the text).
  const pad = (n, w) => String(n).padStart(w || 2, "0");
  function fmtUtc(utc) {
    if (!utc) return "";
    const m = /^(.*T\d\d:\d\d:\d\d)(?:\.(\d+))?Z$/.exec(utc);
    if (!m) return utc;
    const t = new Date(m[1] + "Z");
    const us = (m[2] || "").padEnd(6, "0").slice(0, 6);
    return `${t.getFullYear()}-${pad(t.getMonth() + 1)}-${pad(t.getDate())} ${pad(t.getHours())}:` +
      `${pad(t.getMinutes())}:${pad(t.getSeconds())}.${us}`;
  }
  // UTC ISO → value for <input type=datetime-local> (local time, seconds).
  function toLocalInput(utc) {
    if (!utc) return "";
    const t = new Date(utc.replace(/\.\d+Z$/, "Z"));
    if (Number.isNaN(t.getTime())) return "";
    return `${t.getFullYear()}-${pad(t.getMonth() + 1)}-${pad(t.getDate())}T${pad(t.getHours())}:` +
      `${pad(t.getMinutes())}:${pad(t.getSeconds())}`;
  }
  // The form's filters as query parameters (local from/to converted to UTC ISO; empty ones left out).
  function query() {
    const q = new URLSearchParams();
    for (const [k, v] of new FormData(form).entries()) {
      let val = String(v).trim();
      if (!val) continue;
      if ((k === "from" || k === "to")) {
        const t = new Date(val);
        if (Number.isNaN(t.getTime())) continue;
        val = t.toISOString();
      }
      if (k === "state" && val === "all") continue;
      q.set(k, val);
    }
    return q;
  }
  function fillForm() {
    const f = d.filters;
    for (const name of ["q", "device", "kind", "limit", "state"]) {
      const el = form.elements.namedItem(name);
      if (el && f[name] !== undefined && f[name] !== null) el.value = String(f[name]);
    }
    const prio = form.elements.namedItem("priority");
    if (prio) prio.value = f.priority === null || f.priority === undefined ? "" : String(f.priority);
    form.elements.namedItem("from").value = toLocalInput(f.from);
    form.elements.namedItem("to").value = toLocalInput(f.to);
  }
  function links() {
    const q = query();
    const csv = document.getElementById("alarm-csv");
    if (csv) csv.href = "/alarms.csv?" + q.toString();
    for (const a of document.querySelectorAll("a.tab[data-view]")) {
      const t = new URLSearchParams(q);
      t.set("view", a.dataset.view);
      t.delete("kind");  // the two views have different kinds
      t.delete("state");
      t.delete("device");
      a.href = "/alarms?" + t.toString();
    }
  }

  function pill(cls, text, title) {
    return `<span class="pill ${cls}"${title ? ` title="${Panel.esc(title)}"` : ""}>${Panel.esc(text)}</span>`;
  }
  function timeCell(r) {
    return `<td class="mono" style="white-space:nowrap" title="${Panel.esc(r.utc)} (UTC)">${Panel.esc(fmtUtc(r.utc))}</td>`;
  }
  function where(r) {
    return Panel.esc(r.device || "—") + (r.point ? `<br><span class="muted">${Panel.esc(r.point)}</span>` : "");
  }
  function prioCell(p) {
    return `<td class="num">${p === 0 ? pill("bad", "0") : p === 1 ? pill("warn", "1") : pill("muted", String(p))}</td>`;
  }
  function alarmRow(r) {
    let state;
    if (r.state === "standing") state = pill("bad", "standing");
    else if (r.state === "cleared") {
      state = pill("ok", "cleared", r.clear_message) +
        `<br><span class="muted mono" style="white-space:nowrap" title="${Panel.esc(r.cleared_utc)} (UTC)">${Panel.esc(fmtUtc(r.cleared_utc))}</span>`;
    } else state = pill("muted", "event", "one-shot: no clear condition; active until acknowledged");
    const ack = r.acked
      ? `${Panel.esc(r.acked_by)}<br><span class="muted mono" style="white-space:nowrap" title="${Panel.esc(r.acked_utc)} (UTC)">` +
        `${Panel.esc(fmtUtc(r.acked_utc))}</span>`
      : pill("warn", "unacknowledged");
    const box = d.can_ack
      ? `<td>${r.acked ? "" : `<input type="checkbox" class="ack-box" value="${r.seq}" aria-label="select alarm ${r.seq}"` +
        `${selected.has(r.seq) ? " checked" : ""}>`}</td>`
      : "";
    return `<tr data-seq="${r.seq}" class="${r.active ? "active" : "historic"}">${box}${timeCell(r)}${prioCell(r.priority)}` +
      `<td>${Panel.esc(r.kind)}</td><td>${where(r)}</td><td${r.acked ? "" : ' style="font-weight:600"'}>${Panel.esc(r.message)}</td>` +
      `<td>${state}</td><td>${ack}</td></tr>`;
  }
  function soeRow(r) {
    return `<tr data-seq="${r.seq}">${timeCell(r)}<td>${Panel.esc(r.kind)}</td><td>${where(r)}</td>` +
      `<td>${Panel.esc(r.message)}</td>${prioCell(r.priority)}<td class="num muted">${r.seq}</td></tr>`;
  }
  function render() {
    const head = table.tHead;
    const body = table.tBodies[0];
    const alarms = d.view === "alarms";
    if (alarms) {
      const all = d.can_ack ? `<th><input type="checkbox" id="ack-toggle" aria-label="select all shown"></th>` : "";
      head.innerHTML = `<tr>${all}<th>Time (local)</th><th class="num">Pri</th><th>Kind</th><th>Device / point</th>` +
        `<th>Message</th><th>State</th><th>Acknowledged</th></tr>`;
      const cols = d.can_ack ? 8 : 7;
      const active = d.rows.filter((r) => r.active);
      const hist = d.rows.filter((r) => !r.active);
      let html = `<tr><th colspan="${cols}">Active (${active.length})</th></tr>` +
        (active.length ? active.map(alarmRow).join("") : `<tr><td colspan="${cols}" class="muted">no active alarms</td></tr>`);
      if (d.filters.state !== "active") {
        html += `<tr><th colspan="${cols}">Historic (${hist.length})</th></tr>` +
          (hist.length ? hist.map(alarmRow).join("") : `<tr><td colspan="${cols}" class="muted">none</td></tr>`);
      }
      body.innerHTML = html;
    } else {
      head.innerHTML = `<tr><th>Time (local)</th><th>Kind</th><th>Device / point</th><th>Message</th>` +
        `<th class="num">Pri</th><th class="num">Seq</th></tr>`;
      body.innerHTML = d.rows.length ? d.rows.map(soeRow).join("")
        : `<tr><td colspan="6" class="muted">no events match</td></tr>`;
    }
    const c = d.counts;
    document.getElementById("alarm-counts").textContent =
      `${c.unacked} unacknowledged · ${c.active} active · ${c.standing} standing`;
    document.getElementById("alarm-summary").textContent =
      `Showing ${d.shown} of ${d.total} ${alarms ? "alarms" : "events"}` + (d.shown < d.total ? " (raise the limit or narrow the filters to see more)" : "") +
      ". Times are local; hover for UTC. The CSV export has UTC times.";
    syncAckButtons();
  }
  function syncAckButtons() {
    const sel = document.getElementById("ack-selected");
    if (sel) sel.disabled = selected.size === 0;
    const all = document.getElementById("ack-all");
    if (all) all.disabled = !d.rows.some((r) => !r.acked);
  }

  let loading = null;
  let again = false;
  async function reload() {
    if (loading) { again = true; return loading; }
    const q = query();
    loading = (async () => {
      try {
        const next = await Panel.getJSON("/api/alarms?" + q.toString());
        d = next;
        const valid = new Set(d.rows.filter((r) => !r.acked).map((r) => r.seq));
        for (const s of [...selected]) if (!valid.has(s)) selected.delete(s);
        render();
      } catch (e) {
        document.getElementById("alarm-summary").textContent = "Could not refresh: " + e.message;
      }
    })();
    await loading;
    loading = null;
    if (again) { again = false; return reload(); }
  }

  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const q = query();
    history.replaceState(null, "", "/alarms?" + q.toString());
    links();
    selected.clear();
    reload();
  });
  form.addEventListener("change", links);
  form.addEventListener("input", links);

  table.addEventListener("change", (ev) => {
    const t = ev.target;
    if (t.id === "ack-toggle") {
      for (const box of table.querySelectorAll(".ack-box")) {
        box.checked = t.checked;
        const s = Number(box.value);
        if (t.checked) selected.add(s); else selected.delete(s);
      }
    } else if (t.classList && t.classList.contains("ack-box")) {
      const s = Number(t.value);
      if (t.checked) selected.add(s); else selected.delete(s);
    }
    syncAckButtons();
  });

  const msg = (text, cls) => {
    const el = document.getElementById("ack-msg");
    if (el) { el.className = cls || ""; el.textContent = text; }
  };
  async function acknowledge(body) {
    const r = await Panel.post("/api/alarms/ack", body);
    if (r.ok) { msg(r.data.message, "ok"); selected.clear(); } else msg(r.data.error || "refused", "bad");
    await reload();
  }
  const ackSel = document.getElementById("ack-selected");
  if (ackSel) ackSel.addEventListener("click", () => acknowledge({ seqs: [...selected] }));
  const ackAll = document.getElementById("ack-all");
  if (ackAll) {
    ackAll.addEventListener("click", () => {
      const n = d.rows.filter((r) => !r.acked).length;
      if (!window.confirm(`Acknowledge all ${n} unacknowledged alarms the current filters show?`)) return;
      const body = { all: true };
      for (const [k, v] of query().entries()) if (k !== "view") body[k] = v;
      acknowledge(body);
    });
  }

  // live: re-fetch when an alarm, SOE or acknowledgement event lands, or when the unacked count moved
  let timer = null;
  const soon = () => { if (!timer) timer = setTimeout(() => { timer = null; reload(); }, 400); };
  document.addEventListener("panel:events", (ev) => {
    const det = ev.detail;
    const list = Array.isArray(det) ? det : (det && Array.isArray(det.events) ? det.events : null);
    if (!list) { soon(); return; }
    const kinds = d.view === "alarms" ? ALARM_KINDS : SOE_KINDS;
    if (list.some((e) => kinds.has(e.kind) || (e.kind === "audit" && e.point === "alarm.ack"))) soon();
  });
  document.addEventListener("panel:summary", (ev) => {
    const n = ev.detail && ev.detail.alarms_unacked;
    if (d.view === "alarms" && typeof n === "number" && n !== d.counts.unacked) soon();
  });

  fillForm();
  links();
  render();
})();
