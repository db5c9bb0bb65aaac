// Protection page: live refresh of the process, cycle, element states, trips and records (polls /api/protection);
// engineers: settings-group switch and one edit form per element (the server validates; problems are listed).
"use strict";
(() => {
  const esc = Panel.esc;
  let data = Panel.data() || {};
  const baseVersion = data.settings ? data.settings.version : "";
  const PROC = { running: "ok", starting: "warn", restarting: "warn", "start failed": "bad", stopped: "muted" };
  const STATE = { armed: "ok", tripped: "bad", "picked up": "warn", blocked: "warn", "not armed": "bad",
    standby: "muted", disabled: "muted", unknown: "muted" };

  // UTC epoch ns → "YYYY-MM-DD HH:MM:SS.ffffff UTC" (same as the server renders).
  function utc(ns) {
    if (!ns) return "—";
    const big = BigInt(ns);
    const d = new Date(Number(big / 1000000n));
    const us = Number((big / 1000n) % 1000000n);
    const p = (n, w) => String(n).padStart(w || 2, "0");
    return `${d.getUTCFullYear()}-${p(d.getUTCMonth() + 1)}-${p(d.getUTCDate())} ${p(d.getUTCHours())}:` +
      `${p(d.getUTCMinutes())}:${p(d.getUTCSeconds())}.${p(us, 6)} UTC`;
  }
  const us = (v) => (v === null || v === undefined ? "—" : `${Number(v).toFixed(1)} µs`);
  function kv(rows) {
    return "<dl class='kv'>" + rows.map(([k, v]) => `<dt>${esc(k)}</dt><dd>${v}</dd>`).join("") + "</dl>";
  }
  function processRows(d) {
    const p = d.process;
    const rows = [["state", `<span class='pill ${PROC[p.state] || "muted"}'>${esc(p.state)}</span>`]];
    if (!d.configured) return rows.concat([["note", esc(d.note)]]);
    return rows.concat([
      ["last error", p.last_error ? `<span class='bad'>${esc(p.last_error)}</span>` : "—"],
      ["starts", esc(p.starts)], ["restarts (failures)", esc(p.restarts)],
      ["restarts (settings)", esc(p.reloads)], ["events stored", esc(p.events_stored)],
    ]);
  }
  function cycleRows(c) {
    if (!c) return [["cycle", "<span class='muted'>no process running</span>"]];
    const inval = c.invalid_quantities || [];
    return [
      ["period", `${esc(c.period_ms)} ms`], ["cycles", esc(c.cycles)],
      ["overruns", `<span class='${c.overruns ? "warn" : "ok"}'>${esc(c.overruns)}</span> ` +
        `<span class='muted'>(${esc(c.skipped_slots)} slots skipped)</span>`],
      ["lateness p50 / p99 / p99.9", `${us(c.lateness_p50_us)} / ${us(c.lateness_p99_us)} / ${us(c.lateness_p999_us)}`],
      ["max lateness", us(c.max_lateness_us)],
      ["execution mean / max", `${us(c.mean_exec_us)} / ${us(c.max_exec_us)}`],
      ["SCHED_FIFO", c.sched_fifo ? "<span class='ok'>yes</span>" : "<span class='warn'>no (default scheduler)</span>"],
      ["CPU", c.cpu >= 0 ? esc(c.cpu) : "<span class='muted'>not pinned</span>"],
      ["pid", esc(c.pid)],
      ["measurements", inval.length ? `<span class='bad'>invalid: ${esc(inval.join(", "))}</span>`
        : "<span class='ok'>all valid</span>"],
      ["event ring overflow", esc(c.events_overflow)],
    ];
  }
  function num(v) { return v === null || v === undefined ? "—" : Panel.fmtValue(v); }
  function atTrip(a) {
    if (!a) return "<span class='muted'>—</span>";
    return ["ia", "ib", "ic", "in"].map((k) => `${k.toUpperCase()} ${esc(num(a[k]))} A`).join(" ");
  }
  function tripsBody(d) {
    if (!d.last_trips.length) return "<tr><td colspan='7' class='muted'>no trips since the gateway started</td></tr>";
    return d.last_trips.map((t) => `<tr><td class='mono'>${esc(utc(t.utc_ns))}</td><td>${esc(t.element)}</td>` +
      `<td>${esc(t.type)}</td><td>${esc(t.group)}</td><td>${esc(t.phases || "—")}</td><td>${atTrip(t.at_trip)}</td>` +
      `<td>${esc(t.record || "")}</td></tr>`).join("");
  }
  function recordsBody(d) {
    if (!d.records.length) return "<tr><td colspan='5' class='muted'>no fault records</td></tr>";
    return d.records.map((r) => `<tr><td class='mono'>${esc(r.name)}</td>` +
      `<td>${esc((r.elements || []).join(", ") || "—")}</td><td class='mono'>${esc(utc(r.trigger_utc_ns))}</td>` +
      `<td class='num'>${esc(r.bytes)}</td><td><a class='button' href='${esc(r.download)}' download>` +
      "COMTRADE (.zip)</a></td></tr>").join("");
  }
  function outputsBody(d) {
    if (!d.outputs.length) return "<tr><td colspan='4' class='muted'>no trip outputs configured</td></tr>";
    return d.outputs.map((o) => `<tr><td>${esc(o.name)}</td><td><span class='pill ${o.link === "up" ? "ok" : "warn"}'>` +
      `${esc(o.link)}</span></td><td>${esc(o.last || "—")}</td><td>${esc(utc(o.last_utc_ns))}</td></tr>`).join("");
  }
  function setHTML(sel, html) { const el = document.querySelector(sel); if (el && el.innerHTML !== html) el.innerHTML = html; }
  function message(html, cls) {
    setHTML("#settings-msg", html ? `<section class='card'><p class='${cls || ""}'>${html}</p></section>` : "");
  }

  function paint(d) {
    setHTML("#process-kv", kv(processRows(d)));
    setHTML("#cycle-kv", kv(cycleRows(d.cycle)));
    setHTML("#trips tbody", tripsBody(d));
    setHTML("#records tbody", recordsBody(d));
    setHTML("#outputs tbody", outputsBody(d));
    const ag = document.getElementById("active-group");
    if (ag) ag.textContent = String(d.active_group);
    for (const el of d.elements) {
      const pill = document.querySelector(`[data-state="${CSS.escape(el.group + ":" + el.name)}"]`);
      if (pill) { pill.textContent = el.state; pill.className = "pill " + (STATE[el.state] || "muted"); }
    }
    document.querySelectorAll("[data-switch-group]").forEach((b) => {
      const g = Number(b.dataset.switchGroup);
      b.disabled = g === d.active_group || d.process.state !== "running";
      b.className = g === d.active_group ? "" : "primary";
    });
    if (d.settings && d.settings.version !== baseVersion) {
      message("The settings were changed since this page was loaded (version " + esc(d.settings.version) +
        "). <a href='/protection'>Reload</a> before editing.", "warn");
    }
  }

  async function refresh() {
    try {
      data = await Panel.getJSON("/api/protection");
      paint(data);
    } catch (e) { /* the live dot shows a lost connection; try again at the next tick */ }
  }

  // -- group switch ------------------------------------------------------------------------------------------
  document.querySelectorAll("[data-switch-group]").forEach((b) => b.addEventListener("click", async () => {
    const g = Number(b.dataset.switchGroup);
    if (!window.confirm(`Put settings group ${g} in service now?`)) return;
    const r = await Panel.post("/api/protection/group", { group: g });
    const msg = document.getElementById("group-msg");
    if (msg) {
      msg.className = r.ok ? "ok" : "bad";
      msg.textContent = r.ok ? `group ${g} in service (was ${r.data.previous})` : r.data.error;
    }
    refresh();
  }));

  // -- element edit forms ------------------------------------------------------------------------------------
  function elementFromForm(form) {
    const el = { type: form.dataset.type };
    for (const inp of form.querySelectorAll("[name]")) {
      const kind = inp.dataset.kind;
      if (kind === "bool") el[inp.name] = inp.checked;
      else if (kind === "number") {
        if (inp.value.trim() === "") {
          if (inp.dataset.optional) continue;  // tms/td: not used by this curve
          el[inp.name] = null;  // the server says "expected a number"
        } else el[inp.name] = Number(inp.value);
      } else el[inp.name] = inp.value;
    }
    return el;
  }
  document.querySelectorAll("[data-edit]").forEach((b) => b.addEventListener("click", () => {
    const dlg = document.querySelector(`dialog[data-for="${CSS.escape(b.dataset.edit)}"]`);
    if (dlg) { dlg.querySelector(".problems").innerHTML = ""; dlg.showModal(); }
  }));
  document.querySelectorAll("dialog.edit-element [data-cancel]").forEach((b) =>
    b.addEventListener("click", () => b.closest("dialog").close()));
  document.querySelectorAll("dialog.edit-element form").forEach((form) => form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const group = Number(form.dataset.group);
    const name = form.dataset.element;
    const edited = elementFromForm(form);
    const initial = Panel.data();
    const elements = initial.settings.groups[String(group)].map((e) => (e.name === name ? edited : e));
    const problems = form.querySelector(".problems");
    problems.innerHTML = "";
    const r = await Panel.post("/api/protection/settings", { group, version: baseVersion, elements });
    if (r.ok) {
      form.closest("dialog").close();
      message(esc(r.data.message || "saved") + " — <a href='/protection'>reload</a> to see the new settings.", "ok");
      setTimeout(() => location.reload(), 1500);
      return;
    }
    const list = (r.data.problems || []).map((p) => `<li><span class='mono'>${esc(p.key)}</span>: ${esc(p.message)}</li>`);
    if (!list.length) list.push(`<li>${esc(r.data.error || ("error " + r.status))}</li>`);
    else list.unshift(`<li>${esc(r.data.error)}</li>`);
    problems.innerHTML = list.join("");
  }));

  setInterval(refresh, 2000);
})();
