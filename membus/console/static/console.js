// membus console: the live feed (Server-Sent Events). Rows are built with textContent, never
// innerHTML: change content is whatever agents wrote.
"use strict";
(function () {
  function start() {
    const feed = document.getElementById("feed");
    const status = document.getElementById("feed-status");
    if (!feed || !window.EventSource) return;
    const base = feed.dataset.base;
    const source = new EventSource(feed.dataset.stream);
    let count = 0;
    const say = (text) => { if (status) status.textContent = text; };
    const cell = (row, text, code) => {
      const td = document.createElement("td");
      const el = code ? document.createElement("code") : td;
      el.textContent = text;
      if (code) td.appendChild(el);
      row.appendChild(td);
      return td;
    };
    source.addEventListener("open", () => say("Following changes as they happen."));
    source.addEventListener("change", (e) => {
      const c = JSON.parse(e.data);
      if (c.op === "delete") {
        // a forgotten memory leaves the page as it leaves the store
        feed.querySelectorAll("tr[data-memory]").forEach((tr) => {
          if (tr.dataset.memory === c.memory_id) tr.remove();
        });
      }
      const row = document.createElement("tr");
      row.dataset.memory = c.memory_id;
      if (c.op === "delete") row.className = "feed-delete";
      cell(row, new Date(c.at).toISOString().replace("T", " ").slice(0, 19) + " UTC");
      cell(row, c.op + " " + c.kind);
      cell(row, c.scope, true);
      const what = cell(row, "");
      if (c.op === "delete") {
        what.textContent = "memory " + c.memory_id + " forgotten";
        row.dataset.memory = "";
      } else {
        const a = document.createElement("a");
        a.href = base + "/memories/" + encodeURIComponent(c.memory_id);
        a.textContent = (c.content || "").slice(0, 160);
        what.appendChild(a);
      }
      cell(row, (c.agents || []).join(", "));
      feed.prepend(row);
      count += 1;
      say(count + " change" + (count === 1 ? "" : "s") + " shown; following live.");
    });
    source.addEventListener("error", () => say("Disconnected; reconnecting…"));
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
