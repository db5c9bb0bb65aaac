// Users & audit page (admin): user actions post JSON to /api/admin/users/...; the server validates and audits.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  let pwUser = null;

  function say(text, ok) {
    const m = $("admin-msg");
    m.textContent = text;
    m.className = ok ? "ok" : "bad";
  }

  async function act(name, op, body) {
    const url = `/api/admin/users/${encodeURIComponent(name)}/${op}`;
    const res = await Panel.post(url, body || {});
    if (!res.ok) { say(`${op} ${name}: ${res.data.error || res.status}`, false); return null; }
    return res.data;
  }

  function reloadSoon(text) {
    say(text, true);
    setTimeout(() => location.reload(), 700);
  }

  document.addEventListener("DOMContentLoaded", () => {
    document.addEventListener("click", async (ev) => {
      const btn = ev.target.closest("button[data-op]");
      if (!btn) return;
      const row = btn.closest("tr[data-user]");
      const name = row.dataset.user;
      const op = btn.dataset.op;
      if (op === "role") {
        const role = row.querySelector("[data-role-select]").value;
        if (await act(name, "role", { role })) reloadSoon(`${name} is now ${role}`);
      } else if (op === "password") {
        pwUser = name;
        $("pw-user").textContent = name;
        $("pw-error").textContent = "";
        $("pw-form").reset();
        $("pw-dialog").showModal();
      } else if (op === "disable" || op === "enable") {
        if (await act(name, op)) reloadSoon(`${name} ${op}d`);
      } else if (op === "remove") {
        if (!confirm(`Remove user ${name}? Their sessions end and their API tokens stop working.`)) return;
        if (await act(name, "remove")) reloadSoon(`${name} removed`);
      } else if (op === "token") {
        const d = await act(name, "token");
        if (d) {
          $("token-user").textContent = name;
          $("token-value").value = d.token;
          $("token-dialog").showModal();
          $("token-value").select();
        }
      } else if (op === "revoke-tokens") {
        if (!confirm(`Revoke every API token of ${name}?`)) return;
        const d = await act(name, "revoke-tokens");
        if (d) reloadSoon(`${d.revoked} token(s) of ${name} revoked`);
      }
    });

    $("add-user").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const f = ev.target;
      const body = { name: f.name.value.trim(), role: f.role.value, password: f.password.value };
      const res = await Panel.post("/api/admin/users", body);
      if (!res.ok) { say(res.data.error || String(res.status), false); return; }
      f.reset();
      reloadSoon(`added ${body.name} (${body.role})`);
    });

    $("pw-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const pw = ev.target.password.value;
      const res = await Panel.post(`/api/admin/users/${encodeURIComponent(pwUser)}/password`, { password: pw });
      if (!res.ok) { $("pw-error").textContent = res.data.error || String(res.status); return; }
      $("pw-dialog").close();
      reloadSoon(`password of ${pwUser} reset; ${res.data.sessions_ended} session(s) ended`);
    });
    $("pw-cancel").addEventListener("click", () => $("pw-dialog").close());

    $("token-copy").addEventListener("click", async () => {
      const v = $("token-value");
      v.select();
      try { await navigator.clipboard.writeText(v.value); say("token copied", true); } catch (e) { /* select is enough */ }
    });
    $("token-close").addEventListener("click", () => {
      $("token-value").value = "";
      $("token-dialog").close();
      location.reload();
    });
  });
})();
