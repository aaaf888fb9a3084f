// The status page: asks /api/devices (filtered, sorted and paged by the server) every few
// seconds and draws the table with textContent only: device strings are untrusted.
"use strict";
(function () {
  const REFRESH_MS = 5000;
  const PAGE = 100;
  const view = { q: "", status: "", state: "", label: "", sort: "name", order: "asc", offset: 0 };
  const $ = (id) => document.getElementById(id);
  let timer = null;
  let inflight = null;

  function readHash() {
    const p = new URLSearchParams(location.hash.slice(1));
    for (const k of Object.keys(view)) if (p.has(k)) view[k] = k === "offset" ? Number(p.get(k)) || 0 : p.get(k);
    $("q").value = view.q; $("status").value = view.status; $("state").value = view.state;
  }
  function writeHash() {
    const p = new URLSearchParams();
    for (const [k, v] of Object.entries(view)) if (v && !(k === "sort" && v === "name") && !(k === "order" && v === "asc")) p.set(k, v);
    history.replaceState(null, "", p.toString() ? "#" + p : location.pathname);
  }

  function ago(ts, now) {
    if (ts === null || ts === undefined) return "";
    const s = Math.max(0, now - ts);
    if (s < 90) return Math.round(s) + " s ago";
    if (s < 5400) return Math.round(s / 60) + " min ago";
    if (s < 172800) return Math.round(s / 3600) + " h ago";
    return Math.round(s / 86400) + " d ago";
  }
  function num(v, unit, digits) {
    return v === null || v === undefined ? "" : Number(v).toFixed(digits) + " " + unit;
  }
  function power(w) {
    if (w === null || w === undefined) return "";
    return Math.abs(w) >= 1000 ? (w / 1000).toFixed(2) + " kW" : Math.round(w) + " W";
  }
  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = text;
    if (cls) e.className = cls;
    return e;
  }
  function cell(row, label, text, cls) {
    const td = el("td", text, cls);
    td.dataset.label = label;
    row.appendChild(td);
    return td;
  }

  function drawSummary(s) {
    $("s-configured").textContent = s.configured;
    $("s-up").textContent = s.up;
    $("s-down").textContent = s.down;
    $("s-pending").textContent = s.pending;
    $("s-charging").textContent = s.charging;
    $("s-power").textContent = power(s.power_w) || "0 W";
    const box = $("by-label");
    box.textContent = "";
    const labels = Object.keys(s.by_label).sort();
    const select = $("label");
    const chosen = view.label;
    select.textContent = "";
    select.appendChild(new Option("any label", ""));
    for (const key of labels) {
      const table = el("table");
      const head = table.createTHead().insertRow();
      for (const h of [key, "configured", "up", "down", "charging", "power"]) head.appendChild(el("th", h));
      const body = table.createTBody();
      for (const value of Object.keys(s.by_label[key]).sort()) {
        const b = s.by_label[key][value];
        const r = body.insertRow();
        for (const t of [value, b.configured, b.up, b.down, b.charging, power(b.power_w) || "0 W"]) r.appendChild(el("td", String(t)));
        select.appendChild(new Option(key + " = " + value, key + ":" + value));
      }
      const wrap = el("div", null, "table-wrap");
      wrap.appendChild(table);
      box.appendChild(wrap);
    }
    select.value = chosen;
  }

  function drawRows(data) {
    const tbody = $("devices").tBodies[0];
    const frag = document.createDocumentFragment();
    for (const d of data.devices) {
      const tr = document.createElement("tr");
      tr.dataset.device = d.name;
      const name = cell(tr, "Device", null);
      const a = el("a", d.name);
      a.href = "/device/" + encodeURIComponent(d.name);
      name.appendChild(a);
      if (d.alias && d.alias !== d.name) name.appendChild(el("span", d.alias, "hint"));
      const labels = cell(tr, "Labels", null);
      for (const [k, v] of Object.entries(d.labels)) labels.appendChild(el("span", k + "=" + v, "label"));
      cell(tr, "Model", d.model);
      cell(tr, "Firmware", d.firmware);
      cell(tr, "Host", d.host);
      const st = cell(tr, "State", d.status === "up" ? d.state_text : d.status === "down" ? "Down" : d.state_text, "status-" + d.status);
      st.dataset.status = d.status;
      cell(tr, "Power", power(d.power_w), "num");
      cell(tr, "Session", num(d.session_kwh, "kWh", 2), "num");
      cell(tr, "Temp.", num(d.temperature_c, "°C", 1), "num");
      cell(tr, "Wi-Fi", num(d.wifi_dbm, "dBm", 0), "num");
      cell(tr, "Last success", d.last_success === null ? (d.status === "pending" ? "" : "never") : ago(d.last_success, data.now));
      cell(tr, "Down since", ago(d.down_since, data.now));
      const err = cell(tr, "Last error", d.error_text, "error");
      if (d.error) err.appendChild(el("span", d.error, "hint"));
      frag.appendChild(tr);
    }
    if (!data.devices.length) {
      const tr = document.createElement("tr");
      const td = el("td", data.summary.configured ? "No device matches the filter." : "No devices configured.");
      td.colSpan = 13;
      tr.appendChild(td);
      frag.appendChild(tr);
    }
    tbody.replaceChildren(frag);
    for (const th of document.querySelectorAll("th[data-sort]")) {
      th.classList.toggle("sorted-asc", th.dataset.sort === view.sort && view.order === "asc");
      th.classList.toggle("sorted-desc", th.dataset.sort === view.sort && view.order === "desc");
    }
    const last = Math.min(data.offset + data.devices.length, data.total);
    $("page").textContent = data.total ? (data.offset + 1) + "–" + last + " of " + data.total : "0 of 0";
    $("prev").disabled = data.offset === 0;
    $("next").disabled = last >= data.total;
  }

  async function refresh() {
    clearTimeout(timer);
    const p = new URLSearchParams({ sort: view.sort, order: view.order, offset: view.offset, limit: PAGE });
    if (view.q) p.set("q", view.q);
    if (view.status) p.set("status", view.status);
    if (view.state) p.set("state", view.state);
    if (view.label) p.set("label", view.label);
    if (inflight) inflight.abort();
    inflight = new AbortController();
    try {
      const resp = await fetch("/api/devices?" + p, { signal: inflight.signal, headers: { Accept: "application/json" } });
      if (!resp.ok) throw new Error("HTTP " + resp.status);
      const data = await resp.json();
      $("version").textContent = data.version;
      drawSummary(data.summary);
      drawRows(data);
      $("updated").textContent = "Updated " + new Date(data.now * 1000).toLocaleTimeString() + "; refreshes every " + REFRESH_MS / 1000 + " s.";
      document.body.dataset.loaded = "1";
    } catch (e) {
      if (e.name !== "AbortError") $("updated").textContent = "Could not refresh: " + e.message;
    }
    timer = setTimeout(refresh, REFRESH_MS);
  }

  function changed() { view.offset = 0; writeHash(); refresh(); }
  let typing = null;
  $("q").addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(() => { view.q = $("q").value.trim(); changed(); }, 250); });
  $("filters").addEventListener("submit", (e) => e.preventDefault());
  for (const id of ["status", "state", "label"]) $(id).addEventListener("change", () => { view[id] = $(id).value; changed(); });
  for (const th of document.querySelectorAll("th[data-sort]")) {
    th.addEventListener("click", () => {
      if (view.sort === th.dataset.sort) view.order = view.order === "asc" ? "desc" : "asc";
      else { view.sort = th.dataset.sort; view.order = "asc"; }
      changed();
    });
  }
  $("prev").addEventListener("click", () => { view.offset = Math.max(0, view.offset - PAGE); writeHash(); refresh(); });
  $("next").addEventListener("click", () => { view.offset += PAGE; writeHash(); refresh(); });
  readHash();
  refresh();
})();
