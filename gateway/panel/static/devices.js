// Devices page and a device's page: the comm figures are refreshed every 2 s from /api/devices (the runners'
// counters are not in the live stream); on a device's page only its own row is kept.
"use strict";
(() => {
  const pd = Panel.data() || {};
  const tbody = document.querySelector("#devices tbody");
  if (!tbody) return;
  const STATE_CLASS = { ok: "ok", starting: "warn", backoff: "bad", disconnected: "bad" };
  const age = (s) => (s === null || s === undefined ? "never" : Panel.fmtAge(s));
  const ms = (x) => (x === null || x === undefined ? "—" : x.toFixed(1) + " ms");

  function row(d) {
    const name = Panel.esc(d.device);
    const cell = pd.detail ? name : "<a href='/devices/" + encodeURIComponent(d.device) + "'>" + name + "</a>";
    return "<tr data-device='" + name + "'><td>" + cell + "</td><td>" + Panel.esc(d.link) + "</td><td>" +
      Panel.esc(d.protocol_label) + "</td><td><span class='pill " + (STATE_CLASS[d.state] || "warn") + "'>" +
      Panel.esc(d.state) + "</span></td><td class='num'>" + age(d.last_good_age_s) + "</td><td class='num'>" +
      ms(d.last_latency_ms) + "</td><td class='num'>" + d.polls + "</td><td class='num'>" + d.errors +
      "</td><td class='num'>" + d.timeouts + "</td><td class='num'>" + d.reconnects + "</td><td class='num'>" +
      (d.backoff_s ? d.backoff_s.toFixed(1) + " s" : "—") + "</td><td class='num'>" + d.points + "</td></tr>";
  }

  let busy = false;
  async function refresh() {
    if (busy || document.hidden) return;
    busy = true;
    try {
      const data = await Panel.getJSON(pd.source || "/api/devices");
      let rows = data.devices;
      if (pd.detail) rows = rows.filter((d) => d.device === pd.device);
      tbody.innerHTML = rows.map(row).join("") || "<tr><td colspan='12' class='muted'>no devices</td></tr>";
      const sum = document.getElementById("dev-summary");
      if (sum) {
        const ok = data.devices.filter((d) => d.state === "ok").length;
        sum.textContent = ok + " of " + data.devices.length + " devices communicating";
      }
    } catch (e) {
      // keep the last table; the live dot shows the connection state
    } finally {
      busy = false;
    }
  }
  setInterval(refresh, 2000);
})();
