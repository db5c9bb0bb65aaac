// Overview page: tiles follow the live 'values' events (breaker state, measurements, quality), the summary strip
// follows 'summary' events. The server rendered the first state; this only patches text and classes.
"use strict";
(() => {
  const data = Panel.data() || {};
  const ids = data.point_ids || [];
  Panel.want.values = ids.length > 0;  // an empty list would mean "every point" to the stream
  Panel.want.points = ids;
  const GATEWAY_TIME = 1 << 14;
  const qtext = new Map();

  const VALIDITY = { 0: "good", 1: "invalid", 2: "reserved", 3: "questionable" };
  // red = closed (energised), green = open, as on the Controls page; not-good quality: muted (maybe stale)
  const BREAKER_CLASS = { CLOSED: "bad", OPEN: "ok", INTERMEDIATE: "warn", unknown: "muted" };
  const PROT_CLASS = { "armed": "ok", "picked up": "warn", "TRIPPED": "bad" };

  function validity(q, ts) { return ts ? VALIDITY[q & 3] : "none"; }
  function qualityText(q, ts) {  // same wording as gateway.model.describe_quality
    if (!ts) return "no data";
    let t = qtext.get(q);
    if (t === undefined) {
      const details = (data.quality_bits || []).filter(([b]) => (q & b) && b !== GATEWAY_TIME).map(([, n]) => n);
      t = details.length ? VALIDITY[q & 3] + ": " + details.join(", ") : VALIDITY[q & 3];
      qtext.set(q, t);
    }
    return t;
  }
  function vclass(v) { return v === "good" ? "ok" : v === "invalid" ? "bad" : "warn"; }
  function breakerState(v, valid, closed) {
    if (v === null || valid === "invalid" || valid === "none" || valid === "reserved") return "unknown";
    if (v === closed) return "CLOSED";
    if (closed === 2) return v === 1 ? "OPEN" : v === 0 ? "INTERMEDIATE" : "unknown";
    return "OPEN";
  }

  function onValues(ev) {
    const d = ev.detail;
    const idx = new Map();
    for (let i = 0; i < d.ids.length; i++) idx.set(d.ids[i], i);
    for (const el of document.querySelectorAll("#tiles [data-pid]")) {
      const i = idx.get(Number(el.dataset.pid));
      if (i === undefined || el.dataset.pid === "") continue;
      const v = d.v[i], q = d.q[i], ts = d.ts_us[i];
      const valid = validity(q, ts);
      if (el.classList.contains("breaker")) {
        const st = breakerState(v, valid, Number(el.dataset.closed));
        const pill = el.querySelector("[data-f=breaker]");
        pill.textContent = st;
        const stale = !(valid === "good" || valid === "none");
        pill.className = "pill state " + (stale ? "muted" : (BREAKER_CLASS[st] || "muted"));
        const bq = el.querySelector("[data-f=bq]");
        bq.textContent = (valid === "good" || valid === "none") ? "" : " (" + qualityText(q, ts) + ")";
        bq.className = "muted";
      } else {
        const val = el.querySelector("[data-f=value]");
        if (val) val.textContent = Panel.fmtValue(v);
        const qc = el.querySelector("[data-f=q]");
        if (qc) {
          qc.className = vclass(valid);
          qc.innerHTML = valid === "good" ? "✓" : "<span class='pill " + vclass(valid) + "'>" +
            Panel.esc(qualityText(q, ts)) + "</span>";
        }
        el.title = el.title.split(" · ")[0] + (ts ? " · " + Panel.fmtTs(BigInt(ts) * 1000n) : "");
      }
    }
  }

  function age(s) { return s === null || s === undefined ? "never" : Panel.fmtAge(s); }
  function bytes(n) {
    const u = ["B", "KiB", "MiB", "GiB"];
    let x = n, k = 0;
    while (x >= 1024 && k < u.length - 1) { x /= 1024; k++; }
    return k === 0 ? x.toFixed(0) + " B" : x.toFixed(1) + " " + u[k];
  }

  function onSummary(ev) {
    const s = ev.detail;
    const set = (id, html, cls) => {
      const el = document.getElementById(id);
      if (!el) return;
      el.innerHTML = html;
      if (cls !== undefined) el.className = cls;
    };
    set("s-alarms", Panel.esc(s.alarms_unacked) + " unacked",
      "big " + (s.alarms_unacked ? "bad" : s.alarms_active ? "warn" : "ok"));
    set("s-alarms-active", Panel.esc(s.alarms_active) + " active");
    set("s-comm", Panel.esc(s.devices_ok) + " / " + Panel.esc(s.devices_total) + " ok",
      "big " + (s.devices_ok === s.devices_total ? "ok" : "bad"));
    set("s-comm-bad", (s.devices_not_ok || []).map((d) => Panel.esc(d.device + " (" + d.state + ")")).join(", "));
    const sinks = (s.sinks || []).map((x) => "<li><strong>" + Panel.esc(x.name) + "</strong> <span class='pill " +
      (x.state === "ok" || x.state === "idle" ? "ok" : "bad") + "'>" + Panel.esc(x.state) + "</span> backlog " +
      Panel.esc(x.backlog) + " rows · oldest unsent " + (x.backlog ? age(x.oldest_age_s) : "—") + " · last ack " +
      age(x.last_ack_age_s) + (x.last_error ? " · <span class='bad'>" + Panel.esc(x.last_error) + "</span>" : "") +
      "</li>").join("");
    set("s-sinks", sinks || "<li class='muted'>no sinks configured</li>");
    if (s.store) {
      set("s-store", bytes(s.store.used_bytes) + " of " + bytes(s.store.budget_bytes) +
        (s.store.disk_full ? " · <span class='bad'>DISK FULL</span>" :
          s.store.over_budget ? " · <span class='warn'>over budget</span>" : ""));
    }
    if (s.protection === null || s.protection === undefined) {
      set("s-prot", "<span class='muted'>not configured</span>");
    } else {
      const lt = s.last_trip;
      set("s-prot", "<span class='pill " + (PROT_CLASS[s.protection] || "bad") + "'>" + Panel.esc(s.protection) +
        "</span>" + (lt ? " · last trip " + Panel.esc(lt.element || "") : " · no trip"));
      for (const el of document.querySelectorAll("#tiles [data-f=prot]")) {
        el.textContent = s.protection;
        el.className = "pill " + (PROT_CLASS[s.protection] || "muted");
      }
    }
  }

  document.addEventListener("panel:values", onValues);
  document.addEventListener("panel:summary", onSummary);
})();
