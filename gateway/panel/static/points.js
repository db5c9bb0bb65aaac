// Points table (Points page and a device's page): fetches the whole table once as columnar JSON, keeps it in
// arrays and renders a VIRTUALISED list: only the rows in view (plus a few) are in the DOM, at a fixed row
// height, over a spacer as tall as all rows. Filtering (search text, quality) builds an index array; live
// 'values' events patch the arrays and re-render the visible rows only. Smooth with 10,000+ points.
"use strict";
(() => {
  const card = document.getElementById("points-card");
  if (!card) return;
  const pd = Panel.data() || {};
  // a device's page streams only its points (an empty list would mean "every point" to the stream)
  Panel.want.values = !Array.isArray(pd.point_ids) || pd.point_ids.length > 0;
  if (Array.isArray(pd.point_ids)) Panel.want.points = pd.point_ids;

  const ROW_H = 28;    // px, must match .vt-row height in the page's CSS
  const OVERSCAN = 8;  // rows rendered above and below the visible ones
  const GATEWAY_TIME = 1 << 14;
  const VALIDITY = { 0: "good", 1: "invalid", 2: "reserved", 3: "questionable" };

  const scroller = document.getElementById("pt-scroll");
  const spacer = document.getElementById("pt-spacer");
  const rowsEl = document.getElementById("pt-rows");
  const head = card.querySelector(".vt-head");
  const countEl = document.getElementById("pt-count");
  const search = document.getElementById("pt-search");
  const qualSel = document.getElementById("pt-quality");

  let T = null;            // the columns from the server
  let n = 0;
  let hay = [];            // lower-case "name device unit" per row, for the search box
  let rowOf = new Map();   // point id -> row
  let view = new Int32Array(0);  // rows shown, in order
  let offsetUs = 0;        // server clock - this browser's clock, µs (ages are computed here)
  let qtext = new Map();   // quality code -> text (server's describe_quality, decoded here for new codes)
  let bits = [];
  let sortKey = "";         // "" = configuration order
  let sortDir = 1;
  const LIVE_SORT = new Set(["value", "quality", "age", "ts"]);
  let renderQueued = false;
  let filterQueued = false;

  function validity(q, ts) { return ts ? VALIDITY[q & 3] : "none"; }
  function vclass(v) { return v === "good" ? "ok" : v === "invalid" ? "bad" : v === "none" ? "muted" : "warn"; }
  function qualityText(q, ts) {
    if (!ts) return "no data";
    let t = qtext.get(q);
    if (t === undefined) {  // same wording as gateway.model.describe_quality
      const details = bits.filter(([b]) => (q & b) && b !== GATEWAY_TIME).map(([, name]) => name);
      const v = VALIDITY[q & 3];
      t = details.length ? v + ": " + details.join(", ") : v;
      qtext.set(q, t);
    }
    return t;
  }
  function nowUs() { return Date.now() * 1000 + offsetUs; }
  function setClock(nowNs) { offsetUs = nowNs / 1000 - Date.now() * 1000; }

  async function load() {
    try {
      T = await Panel.getJSON(card.dataset.source || pd.source);
    } catch (e) {
      countEl.textContent = "could not load the points: " + e.message;
      countEl.className = "bad";
      return;
    }
    n = T.count;
    setClock(T.now_ns);
    bits = T.quality_bits || [];
    for (let i = 0; i < n; i++) {
      rowOf.set(T.ids[i], i);
      if (T.ts_us[i]) qtext.set(T.quality[i], T.quality_text[i]);
    }
    hay = T.names.map((name, i) => (name + " " + T.devices[i] + " " + T.units[i]).toLowerCase());
    filter();
  }

  function filter() {
    filterQueued = false;
    if (!T) return;
    const words = search.value.trim().toLowerCase().split(/\s+/).filter(Boolean);
    const want = qualSel.value;
    const out = new Int32Array(n);
    let k = 0;
    for (let i = 0; i < n; i++) {
      if (want && validity(T.quality[i], T.ts_us[i]) !== want) continue;
      let ok = true;
      for (const w of words) if (hay[i].indexOf(w) < 0) { ok = false; break; }
      if (ok) out[k++] = i;
    }
    view = out.subarray(0, k);
    if (sortKey) sortView();
    spacer.style.height = (k * ROW_H) + "px";
    countEl.className = "muted";
    countEl.textContent = k === n ? n + " points" : "showing " + k + " of " + n + " points";
    render();
  }

  function sortKeyOf(key) {
    switch (key) {
      case "point": return (i) => T.names[i];
      case "device": return (i) => T.devices[i];
      case "unit": return (i) => T.units[i];
      case "value": return (i) => T.value[i];
      case "quality": return (i) => (T.ts_us[i] ? T.quality[i] : -1);
      case "age": return (i) => -T.ts_us[i];
      default: return (i) => T.ts_us[i];
    }
  }
  function sortView() {
    const key = sortKeyOf(sortKey);
    const rows = Array.from(view);
    const keys = new Map(rows.map((i) => [i, key(i)]));
    rows.sort((a, b) => {
      const x = keys.get(a), y = keys.get(b);
      if (x === y) return a - b;
      if (x === null || x === undefined) return 1;  // no value: last either way
      if (y === null || y === undefined) return -1;
      return (x < y ? -1 : 1) * sortDir;
    });
    view = Int32Array.from(rows);
  }
  function onSort(ev) {
    const th = ev.target.closest("[data-sort]");
    if (!th || (ev.type === "keydown" && ev.key !== "Enter" && ev.key !== " ")) return;
    ev.preventDefault();
    if (sortKey === th.dataset.sort) sortDir = -sortDir; else { sortKey = th.dataset.sort; sortDir = 1; }
    for (const h of head.querySelectorAll("[data-sort]")) {
      h.setAttribute("aria-sort", h === th ? (sortDir > 0 ? "ascending" : "descending") : "none");
    }
    filter();
  }

  function cells(i, now) {
    const ts = T.ts_us[i];
    const q = T.quality[i];
    const v = validity(q, ts);
    const age = ts ? Panel.fmtAge(Math.max(0, (now - ts) / 1e6)) : "—";
    const tsText = ts ? Panel.fmtTs(BigInt(ts) * 1000n) : "—";
    const name = T.names[i];
    return "<div class='vt-row' role='row'>" +
      "<span role='cell' title='" + Panel.esc(name) + "'>" + Panel.esc(T.points[i]) + "</span>" +
      "<span role='cell'><a href='/devices/" + encodeURIComponent(T.devices[i]) + "'>" + Panel.esc(T.devices[i]) +
      "</a></span><span role='cell' class='num'>" + Panel.esc(Panel.fmtValue(T.value[i])) + "</span>" +
      "<span role='cell'>" + Panel.esc(T.units[i]) + "</span>" +
      "<span role='cell' class='" + vclass(v) + "' title='quality 0x" + q.toString(16).padStart(4, "0") + "'>" +
      Panel.esc(qualityText(q, ts)) + "</span><span role='cell' class='num'>" + age + "</span>" +
      "<span role='cell' class='mono'>" + tsText + "</span></div>";
  }

  function render() {
    renderQueued = false;
    if (!T) return;
    const top = scroller.scrollTop;
    const h = scroller.clientHeight || 600;
    const first = Math.max(0, Math.floor(top / ROW_H) - OVERSCAN);
    const last = Math.min(view.length, Math.ceil((top + h) / ROW_H) + OVERSCAN);
    const now = nowUs();
    let html = "";
    for (let r = first; r < last; r++) html += cells(view[r], now);
    rowsEl.style.transform = "translateY(" + (first * ROW_H) + "px)";
    rowsEl.innerHTML = html || (view.length ? "" : "<div class='vt-empty muted'>no points match</div>");
    head.style.paddingRight = (scroller.offsetWidth - scroller.clientWidth) + "px";  // scrollbar
  }
  function queueRender() { if (!renderQueued) { renderQueued = true; requestAnimationFrame(render); } }
  let resortQueued = false;
  function queueResort() {  // a live sort order follows the values, at most once a second (rows should not jitter)
    if (!resortQueued) { resortQueued = true; setTimeout(() => { resortQueued = false; filter(); }, 1000); }
  }
  function queueFilter() { if (!filterQueued) { filterQueued = true; setTimeout(filter, 120); } }

  function onValues(ev) {
    if (!T) return;
    const d = ev.detail;
    if (d.now_ns) setClock(d.now_ns);
    let qualityMoved = false;
    for (let j = 0; j < d.ids.length; j++) {
      const i = rowOf.get(d.ids[j]);
      if (i === undefined) continue;
      const tsUs = d.ts_us ? d.ts_us[j] : Math.floor(d.ts[j] / 1000);
      if (qualSel.value && validity(T.quality[i], T.ts_us[i]) !== validity(d.q[j], tsUs)) qualityMoved = true;
      T.value[i] = d.v[j];
      T.quality[i] = d.q[j];
      T.ts_us[i] = tsUs;
    }
    if (qualityMoved) queueFilter();
    else if (LIVE_SORT.has(sortKey)) queueResort();
    else queueRender();
  }

  head.addEventListener("click", onSort);
  head.addEventListener("keydown", onSort);
  scroller.addEventListener("scroll", queueRender, { passive: true });
  window.addEventListener("resize", queueRender);
  search.addEventListener("input", queueFilter);
  qualSel.addEventListener("change", filter);
  document.addEventListener("panel:values", onValues);
  setInterval(queueRender, 1000);  // ages move on
  load();
})();
