// Trends page (/trends: point picker, range buttons, one chart per unit) and energy views (/trends/energy).
// Data: Panel.data() (the page's first JSON); later /api/trends?... and /api/trends/energy?... (same shape).
"use strict";
(() => {
  const data = Panel.data();
  if (!data) return;
  const NS_PER_MS = 1e6;
  const toMs = (ts) => ts.map((t) => t / NS_PER_MS);
  const REFRESH_ENERGY_S = 30;

  function bandSeries(s, name, color) {
    return { name, color, kind: "line", unit: s.unit, x: toMs(s.t), y: s.avg, lo: s.min, hi: s.max };
  }

  // ------------------------------------------------------------------------------------------------ /trends
  function trendsPage() {
    const catalogue = data.points || [];
    let selected = data.selected.slice();
    let range = data.range;
    let timer = null, busy = false;
    const charts = new Map(); // unit -> {card, chart}
    const search = document.getElementById("point-search");
    const results = document.getElementById("point-results");
    const chips = document.getElementById("chips");
    const chartsEl = document.getElementById("charts");
    const liveNote = document.getElementById("live-note");

    function query() {
      const q = new URLSearchParams();
      for (const p of selected) q.append("p", p);
      q.set("range", range);
      return q;
    }
    function colorOf(point) { return MiniChart.PALETTE[Math.max(0, selected.indexOf(point)) % MiniChart.PALETTE.length]; }

    function renderChips() {
      chips.textContent = "";
      if (!selected.length) {
        const s = document.createElement("span");
        s.className = "muted"; s.textContent = `No points selected: search and pick up to ${data.max_points} points.`;
        chips.append(s);
        return;
      }
      for (const p of selected) {
        const chip = document.createElement("span");
        chip.className = "pill muted chip"; chip.dataset.point = p;
        chip.style.marginRight = ".3rem";
        const dot = document.createElement("span");  // the line's colour in the chart
        Object.assign(dot.style, { display: "inline-block", width: ".6rem", height: ".6rem", borderRadius: "50%",
          background: colorOf(p), marginRight: ".35rem", verticalAlign: "middle" });
        chip.append(dot, document.createTextNode(p + " "));
        const x = document.createElement("button");
        x.type = "button"; x.textContent = "×"; x.title = `remove ${p}`; x.setAttribute("aria-label", `remove ${p}`);
        Object.assign(x.style, { border: "none", background: "none", padding: "0 .2rem", cursor: "pointer" });
        x.addEventListener("click", () => { selected = selected.filter((q) => q !== p); changed(); });
        chip.append(x);
        chips.append(chip);
      }
    }

    function matches() {
      const terms = search.value.toLowerCase().split(/\s+/).filter(Boolean);
      if (!terms.length) return [];
      return catalogue.filter((p) => !selected.includes(p.name) &&
        terms.every((t) => p.name.toLowerCase().includes(t) || (p.unit || "").toLowerCase() === t)).slice(0, 50);
    }
    function renderResults() {
      const found = matches();
      results.textContent = "";
      results.hidden = !search.value.trim();
      if (results.hidden) return;
      if (!found.length) {
        const li = document.createElement("li"); li.className = "muted"; li.textContent = "no matching point";
        results.append(li); return;
      }
      for (const p of found) {
        const li = document.createElement("li");
        const b = document.createElement("button");
        b.type = "button"; b.className = "pick"; b.dataset.point = p.name;
        Object.assign(b.style, { border: "none", width: "100%", textAlign: "left", padding: ".2rem .4rem" });
        b.innerHTML = `${Panel.esc(p.name)} <span class="muted">${Panel.esc(p.unit || "")}</span>`;
        b.addEventListener("click", () => add(p.name));
        li.append(b); results.append(li);
      }
    }
    function add(name) {
      if (selected.includes(name)) return;
      if (selected.length >= data.max_points) {
        alert(`At most ${data.max_points} points per trend: remove one first.`);
        return;
      }
      selected.push(name);
      search.value = ""; renderResults(); changed();
    }

    function changed() {
      history.replaceState(null, "", "/trends?" + query().toString());
      for (const a of document.querySelectorAll("#ranges a.range")) {
        const q = query(); q.set("range", a.dataset.range);
        a.href = "/trends?" + q.toString();
        const on = a.dataset.range === range;
        a.classList.toggle("primary", on);
        Object.assign(a.style, { background: on ? "#1f6feb" : "", borderColor: on ? "#1f6feb" : "", color: on ? "#fff" : "" });
      }
      renderChips();
      const suggest = document.getElementById("suggest");
      if (suggest) suggest.hidden = selected.length > 0;
      refresh();
    }

    async function refresh() {
      if (busy) return;
      busy = true;
      try {
        const d = selected.length ? await Panel.getJSON("/api/trends?" + query().toString())
          : { ...data.trend, series: [] };
        render(d);
      } catch (e) {
        liveNote.textContent = "could not load: " + e.message;
      } finally {
        busy = false;
      }
    }

    function render(d) {
      clearInterval(timer); timer = null;
      if (d.live && selected.length) {
        timer = setInterval(() => { if (!document.hidden) refresh(); }, d.refresh_s * 1000);
        liveNote.textContent = `live: refreshed every ${d.refresh_s} s`;
      } else {
        liveNote.textContent = "";
      }
      const groups = new Map();
      for (const s of d.series) {
        if (!groups.has(s.unit)) groups.set(s.unit, []);
        groups.get(s.unit).push(s);
      }
      for (const [unit, entry] of charts) {
        if (!groups.has(unit)) { entry.chart.destroy(); entry.card.remove(); charts.delete(unit); }
      }
      // server-rendered placeholders of the first load
      for (const card of chartsEl.querySelectorAll("section.trend-group")) {
        if (!charts.has(card.dataset.unit) && !groups.has(card.dataset.unit)) card.remove();
      }
      for (const [unit, list] of groups) {
        let entry = charts.get(unit);
        if (!entry) {
          let card = [...chartsEl.querySelectorAll("section.trend-group")].find((c) => c.dataset.unit === unit);
          if (!card) {
            card = document.createElement("section");
            card.className = "card trend-group"; card.dataset.unit = unit;
            card.innerHTML = `<h2>${Panel.esc(unit || "no unit")}</h2>` +
              "<div class='chart' style='position:relative;height:300px'><canvas></canvas></div>";
            chartsEl.append(card);
          }
          entry = { card, chart: MiniChart.create(card.querySelector(".chart"), {}) };
          charts.set(unit, entry);
        }
        entry.chart.set({
          xType: "time", xMin: d.start_ns / NS_PER_MS, xMax: d.end_ns / NS_PER_MS, gapMs: d.bucket_s * 1500,
          yUnit: unit, series: list.map((s) => bandSeries(s, s.point, colorOf(s.point))),
          empty: "no readings in this range",
        });
        entry.card.querySelector("h2").textContent =
          `${unit || "no unit"} — ${(data.ranges || {})[d.range] || d.range} in ${fmtBucket(d.bucket_s)} buckets`;
      }
    }
    function fmtBucket(s) { return s < 60 ? `${s} s` : s < 3600 ? `${s / 60} min` : `${s / 3600} h`; }

    search.addEventListener("input", renderResults);
    search.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter") { ev.preventDefault(); const m = matches(); if (m.length) add(m[0].name); }
      if (ev.key === "Escape") { search.value = ""; renderResults(); }
    });
    for (const a of document.querySelectorAll("#ranges a.range")) {
      a.addEventListener("click", (ev) => { ev.preventDefault(); range = a.dataset.range; changed(); });
    }
    renderChips();
    render(data.trend);
  }

  // ----------------------------------------------------------------------------------------- /trends/energy
  function energyPage() {
    const charts = new Map(); // "meter/kind" -> chart
    function chart(card, cls, key) {
      if (!charts.has(key)) charts.set(key, MiniChart.create(card.querySelector(".chart." + cls), {}));
      return charts.get(key);
    }
    const kwh = (v) => (v === null || v === undefined ? "—" : Number(v.toPrecision(4)).toString());
    function render(d) {
      for (const m of d.meters) {
        const card = [...document.querySelectorAll("section.meter")].find((c) => c.dataset.meter === m.name);
        if (!card) continue;
        const today = card.querySelector(".today");
        if (today) today.textContent = m.today_kwh === null ? "—" :
          `${m.today_kwh.toFixed(3)} kWh` + (m.vs_target !== null ? ` (${Math.round(m.vs_target * 100)} % of target)` : "");
        chart(card, "watts", m.name + "/w").set({
          xType: "time", xMin: d.start_ns / NS_PER_MS, xMax: d.end_ns / NS_PER_MS, gapMs: d.bucket_s * 1500,
          yUnit: m.unit, series: [bandSeries(m.watts, `${m.power_point} (${m.unit})`, "#d9480f")],
          empty: "no power readings in this range",
        });
        const dp = m.dayparts;
        chart(card, "parts", m.name + "/p").set({
          xType: "category", categories: dp.names, fmt: kwh, yUnit: "kWh",
          series: [
            { name: "today", kind: "bar", color: "#1f6feb", y: dp.today, partial: dp.names.map((_, i) => i === dp.open) },
            { name: `mean of last ${d.avg_days} days`, kind: "bar", color: "#94a3b8", y: dp.avg },
          ],
          empty: "no energy recorded yet",
        });
        const dy = m.daily;
        chart(card, "daily", m.name + "/d").set({
          xType: "category", categories: dy.day.map((s) => s.slice(5)), fmt: kwh, yUnit: "kWh",
          series: [{ name: "kWh per day", kind: "bar", color: "#2b8a3e", y: dy.kwh, partial: dy.partial }],
          hlines: m.daily_target_kwh ? [{ y: m.daily_target_kwh, name: "target", color: "#b42318" }] : [],
          empty: "no daily energy yet (a day is recorded when it closes)",
        });
      }
    }
    render(data);
    const q = new URLSearchParams(location.search);
    setInterval(async () => {
      if (document.hidden) return;
      try { render(await Panel.getJSON("/api/trends/energy?" + q.toString())); } catch (e) { /* next time */ }
    }, REFRESH_ENERGY_S * 1000);
  }

  if (data.trend) trendsPage();
  else if (data.meters) energyPage();
})();
