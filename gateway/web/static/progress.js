// Live progress on the transfer and case pages: polls the pages' JSON endpoint for the
// transfers and cases shown (rows with data-transfer or data-case) and updates their
// bars, states and texts in place, until nothing shown is running.
"use strict";
(function () {
  const table = document.getElementById("transfers") || document.getElementById("cases");
  if (!table) return;
  const url = table.dataset.progressUrl;
  const live = document.getElementById("live");
  const EVERY_MS = 2000;

  function size(n) {
    if (n == null) return "–";
    if (n < 1024) return n + " B";
    if (n < 1048576) return (n / 1024).toFixed(1) + " KiB";
    return (n / 1048576).toFixed(1) + " MiB";
  }

  function update(row, t) {
    row.querySelectorAll('[data-field="state"]').forEach((el) => {
      el.textContent = t.state;
      el.className = el.className.replace(/state-\S+/, "state-" + t.state);
    });
    row.querySelectorAll('[data-field="percent"]').forEach((el) => { el.value = t.percent; });
    row.querySelectorAll('[data-field="percent-text"]').forEach((el) => { el.textContent = t.percent + "%"; });
    for (const src of t.sources) {
      const box = row.querySelector('[data-source="' + CSS.escape(src.name) + '"]');
      if (!box) continue;
      const bar = box.querySelector("progress");
      if (src.state === "done") bar.value = 100;
      else if (src.total) bar.value = Math.round(100 * src.items / src.total);
      const many = src.items === 1 ? "" : "s";
      box.querySelector(".source-text").textContent = src.state + ": " + src.items + " item" + many
        + (src.total ? " of " + src.total : "") + ", " + size(src.bytes);
    }
  }

  function updateCase(row, c) {
    update(row, {state: c.state, percent: c.percent, sources: []});
    const cell = row.querySelector('[data-field="sources"]');
    if (cell) cell.textContent = c.sources.map((s) => s.name + ": " + s.status).join(", ");
  }

  async function tick() {
    const rows = Array.from(table.querySelectorAll("tr[data-transfer], tr[data-case]"));
    if (!rows.length) return;
    const query = rows.map((r) => r.dataset.transfer
      ? "id=" + encodeURIComponent(r.dataset.transfer)
      : "case=" + encodeURIComponent(r.dataset.case)).join("&");
    let body;
    try { body = await window.rgw.json(url + "?" + query); } catch (e) {
      if (live) live.textContent = "Live updates paused: " + e.message;
      return setTimeout(tick, EVERY_MS * 5);
    }
    if (!body) return;
    let running = 0;
    for (const row of rows) {
      const t = row.dataset.transfer ? body.transfers[row.dataset.transfer] : body.cases[row.dataset.case];
      if (!t) continue;
      if (row.dataset.transfer) update(row, t); else updateCase(row, t);
      if (!body.terminal.includes(t.state)) running += 1;
    }
    if (live) live.textContent = running ? running + " running, updated live" : "";
    if (running) setTimeout(tick, EVERY_MS);
  }
  setTimeout(tick, EVERY_MS);
})();
