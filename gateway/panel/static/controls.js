// Controls page: select → confirm dialog (interlocks, select timeout counting down) → operate or cancel.
// The server enforces roles, interlocks and the selection; this script only drives the dialog and refreshes state.
"use strict";
(() => {
  const STATE_PILL = { closed: "bad", open: "ok", unknown: "muted" };
  let current = null; // {body, deadline (ms, performance.now), operated}
  let timer = null;

  const $ = (id) => document.getElementById(id);

  function selText(sel) {
    if (!sel) return "<span class='muted'>not selected</span>";
    return `<span class='warn'>selected by ${Panel.esc(sel.origin)} for ${Panel.esc(sel.action)} ` +
      `${Panel.esc(Panel.fmtValue(sel.value))}, ${Math.max(0, sel.expires_in_s).toFixed(0)} s left</span>`;
  }

  function showBreaker(state) {
    const el = $("confirm-breaker");
    if (!el) return;
    if (!state) { el.textContent = "—"; return; }
    el.innerHTML = `<span class='pill ${STATE_PILL[state] || "muted"}'>${Panel.esc(state.toUpperCase())}</span>`;
  }

  function showState(data) {
    for (const b of data.bays) {
      if (current && current.body.bay === b.name) showBreaker(b.state);
      const el = document.querySelector(`[data-state="${CSS.escape(b.name)}"]`);
      if (el) {
        el.textContent = b.state.toUpperCase();
        el.className = "pill big-state " + (STATE_PILL[b.state] || "muted");
      }
      for (const c of Object.values(b.controls)) {
        const s = document.querySelector(`[data-sel="${CSS.escape(c.point)}"]`);
        if (s) s.innerHTML = selText(c.selection);
      }
    }
    for (const p of data.points) {
      const s = document.querySelector(`[data-sel="${CSS.escape(p.key)}"]`);
      if (s) s.innerHTML = selText(p.selection);
      const l = document.querySelector(`[data-latest="${CSS.escape(p.key)}"]`);
      if (l) l.textContent = Panel.fmtValue(p.latest_value) + " " + p.unit;
    }
  }

  async function refresh() {
    try { showState(await Panel.getJSON("/api/controls")); } catch (e) { /* next time */ }
  }

  function setResult(text, cls) {
    const r = $("confirm-result");
    r.textContent = text;
    r.className = cls || "";
  }

  function tick() {
    if (!current) return;
    const left = Math.max(0, (current.deadline - performance.now()) / 1000);
    const op = $("confirm-operate");
    if (current.operated) return;
    if (left <= 0) {
      $("confirm-count").textContent = "0 s";
      op.disabled = true;
      setResult("The selection expired: nothing was operated. Close and select again.", "bad");
      $("confirm-sel").innerHTML = "<span class='bad'>expired</span>";
      $("confirm-cancel").textContent = "Close";
      current.expired = true;
      stopTimer();
      return;
    }
    $("confirm-count").textContent = left.toFixed(1) + " s";
  }

  function stopTimer() { if (timer) { clearInterval(timer); timer = null; } }

  function openDialog(body, res) {
    const d = res.data || {};
    current = { body, deadline: 0, operated: false, expired: false, selected: false };
    $("confirm-title").textContent = d.label || "Control";
    $("confirm-what").textContent = d.description || "";
    const op = $("confirm-operate");
    const cancelBtn = $("confirm-cancel");
    const list = $("confirm-ilk-list");
    list.innerHTML = "";
    for (const i of d.interlocks || []) {
      const li = document.createElement("li");
      li.innerHTML = `<span class='${i.ok ? "ok" : "bad"}'>${i.ok ? "✓" : "✗"}</span> ${Panel.esc(i.name)}` +
        (i.reason ? ` — ${Panel.esc(i.reason)}` : "");
      list.appendChild(li);
    }
    const ilk = $("confirm-ilk");
    ilk.textContent = d.interlock_summary || "—";
    ilk.className = (d.interlock_summary || "").startsWith("refused") ? "bad" : "ok";
    setResult("", "");
    showBreaker(d.breaker_state);
    if (res.ok && d.ok) {
      current.selected = true;
      current.deadline = performance.now() + (d.expires_in_s || 0) * 1000;
      $("confirm-sel").innerHTML = "<span class='ok'>selected for you</span> <span class='muted'>(" +
        Panel.esc(d.detail || "") + ")</span>";
      op.hidden = false;
      op.disabled = false;
      cancelBtn.textContent = "Cancel";
      stopTimer();
      timer = setInterval(tick, 100);
      tick();
    } else {
      $("confirm-sel").innerHTML = `<span class='bad'>not selected: ${Panel.esc(d.status || res.status)}</span>`;
      $("confirm-count").textContent = "—";
      op.hidden = true;
      cancelBtn.textContent = "Close";
      setResult(d.error || d.detail || "refused", "bad");
    }
    const dlg = $("confirm");
    if (!dlg.open) dlg.showModal();
  }

  async function select(body) {
    const res = await Panel.post("/api/controls/select", body);
    if (!res.ok) {
      openDialog(body, { ok: false, status: res.status, data: { status: String(res.status), error: res.data.error,
        label: "Control refused", description: JSON.stringify(body) } });
      return;
    }
    openDialog(body, res);
    refresh();
  }

  async function operate() {
    if (!current || current.operated || current.expired) return;
    const op = $("confirm-operate");
    op.disabled = true;
    stopTimer();
    setResult("Operating…", "muted");
    const res = await Panel.post("/api/controls/operate", current.body);
    current.operated = true;
    $("confirm-sel").innerHTML = "<span class='muted'>ended (operate sent)</span>";
    const d = res.data || {};
    if (!res.ok) {
      setResult(`Error ${res.status}: ${d.error || ""}`, "bad");
    } else {
      setResult(`${d.ok ? "Done" : "Refused"}: ${d.status}${d.detail ? " — " + d.detail : ""}`, d.ok ? "ok" : "bad");
      if (d.breaker_state) showBreaker(d.breaker_state);
    }
    $("confirm-count").textContent = "—";
    op.hidden = true;
    $("confirm-cancel").textContent = "Close";
    refresh();
    if (d.ok && d.bay) watchBreaker(d.bay, d.action);
  }

  // After a successful operate: follow the breaker closely until it shows the new state (or ~10 s passed).
  function watchBreaker(bay, action) {
    const want = action === "open" ? "open" : "closed";
    let n = 0;
    const iv = setInterval(async () => {
      n += 1;
      try {
        const data = await Panel.getJSON("/api/controls");
        showState(data);
        const b = data.bays.find((x) => x.name === bay);
        if ((b && b.state === want) || n > 20) clearInterval(iv);
      } catch (e) { if (n > 20) clearInterval(iv); }
    }, 500);
  }

  async function closeDialog() {
    stopTimer();
    const c = current;
    current = null;
    const dlg = $("confirm");
    if (dlg.open) dlg.close();
    if (c && c.selected && !c.operated && !c.expired) {
      await Panel.post("/api/controls/cancel", c.body);
    }
    refresh();
  }

  document.addEventListener("DOMContentLoaded", () => {
    const data = Panel.data() || {};
    if (data.focus) {
      const card = document.querySelector(`[data-bay-card="${CSS.escape(data.focus)}"]`);
      if (card) card.scrollIntoView({ block: "center" });
    }
    document.addEventListener("click", (ev) => {
      const btn = ev.target.closest("button");
      if (!btn) return;
      if (btn.dataset.bay) {
        select({ bay: btn.dataset.bay, action: btn.dataset.action });
      } else if (btn.dataset.device) {
        const key = btn.dataset.device + "." + btn.dataset.point;
        const input = document.querySelector(`[data-value-for="${CSS.escape(key)}"]`);
        const raw = input ? input.value.trim() : "";
        if (raw === "" || Number.isNaN(Number(raw))) { if (input) input.focus(); return; }
        select({ device: btn.dataset.device, point: btn.dataset.point, value: Number(raw) });
      } else if (btn.id === "confirm-operate") {
        operate();
      } else if (btn.id === "confirm-cancel") {
        closeDialog();
      }
    });
    const dlg = $("confirm");
    if (dlg) dlg.addEventListener("cancel", (ev) => { ev.preventDefault(); closeDialog(); });
    setInterval(() => { if (!document.hidden) refresh(); }, 2000);
  });
})();
