/* Asset search: the first 100 matches of /api/v1/assets?q=, refreshed in place. */
"use strict";

(function () {
  const {el, link, fill, byId, time} = CF;
  const query = byId("main").dataset.query || "";

  async function load() {
    const url = "/api/v1/assets?page_size=100" + (query ? `&q=${encodeURIComponent(query)}` : "");
    const page = await CF.getJSON(url);
    const rows = page.data.map((a) => el("tr", {},
      el("td", {}, link(`/assets/${encodeURIComponent(a.slug)}`, a.name)),
      el("td", {}, a.symbol),
      el("td", {class: "muted"}, a.slug),
      el("td", {}, (a.sources || []).join(", ")),
      el("td", {}, time(a.created_at))));
    fill(byId("assets-table").tBodies[0], rows, query ? `No asset matches “${query}”.` : "No asset yet.");
    const total = page.metadata.total_count;
    byId("assets-summary").textContent = `${total}${page.metadata.total_count_exact ? "" : " (about)"} ` +
      `asset${total === 1 ? "" : "s"}${query ? ` matching “${query}”` : ""}` +
      (page.metadata.has_more ? `; the first ${page.data.length} are shown, narrow the search to see others.` : ".");
  }

  CF.every(load);
})();
