/* One run: status, error, counts, worker statistics and its rejected records with their reasons. */
"use strict";

(function () {
  const {el, byId, int, time, duration, fill} = CF;
  const runId = byId("main").dataset.runId;
  const LIMIT = 500;

  function kv(target, pairs) {
    const nodes = [];
    for (const [key, value] of pairs) {
      if (value === undefined) continue;
      nodes.push(el("dt", {}, key), el("dd", {}, value === null ? "–" : value));
    }
    target.replaceChildren(...(nodes.length ? nodes : [el("dd", {class: "muted"}, "none")]));
  }

  function json(value) {
    return el("pre", {class: "json"}, JSON.stringify(value, null, 2));
  }

  /* A long JSON value, folded; it stays open across refreshes once the reader opened it. */
  function folded(key, value) {
    const before = byId("run-facts").querySelector(`details[data-key="${key}"]`);
    return el("details", {"data-key": key, open: before && before.open ? "open" : null},
      el("summary", {}, `${Object.keys(value).length} fields`), json(value));
  }

  function filled(value) {
    return !!value && typeof value === "object" && Object.keys(value).length > 0;
  }

  function errorsList(errors) {
    if (!errors || typeof errors !== "object") return json(errors);
    return el("ul", {class: "errors"}, ...Object.entries(errors).map(([field, messages]) =>
      el("li", {}, el("code", {}, field), ": ", Array.isArray(messages) ? messages.join("; ") : JSON.stringify(messages))));
  }

  function card(label, value, cls) {
    return el("div", {class: `card ${cls || ""}`}, el("div", {class: "card-value"}, value),
      el("div", {class: "card-label"}, label));
  }

  async function load() {
    const run = await CF.getJSON(`/api/v1/runs/${encodeURIComponent(runId)}?rejected_limit=${LIMIT}`);
    document.title = `Run ${run.source} ${run.status} · cryptoflow`;
    const status = byId("run-status");
    status.textContent = run.status;
    status.className = `pill status-${run.status}`;
    byId("run-error").hidden = !run.error;
    byId("run-error-text").textContent = run.error || "";
    byId("run-cards").replaceChildren(
      card("fetched", int(run.fetched)), card("loaded", int(run.loaded)),
      card("rejected", int(run.rejected), run.rejected ? "warn" : ""),
      card("pages", int(run.pages)), card("duration", duration(run.duration_seconds)));
    kv(byId("run-facts"), [
      ["source", run.source], ["trigger", run.trigger], ["created", time(run.created_at, true)],
      ["started", time(run.started_at, true)], ["finished", time(run.finished_at, true)],
      ["last heartbeat", time(run.heartbeat_at, true)], ["deliveries", int(run.deliveries)],
      ["schema drift", filled(run.schema_drift) ? folded("drift", run.schema_drift) : undefined],
      ["checkpoint before", filled(run.checkpoint_before) ? folded("before", run.checkpoint_before) : undefined],
      ["checkpoint after", filled(run.checkpoint_after) ? folded("after", run.checkpoint_after) : undefined],
    ]);
    const stats = run.stats || {};
    kv(byId("run-stats"), Object.entries(stats).filter(([, v]) => !(v && typeof v === "object" &&
      !Object.keys(v).length)).map(([key, value]) =>
      [key.replace(/_/g, " "), typeof value === "object" && value !== null
        ? Object.entries(value).map(([k, v]) => `${k}: ${v}`).join(", ") : String(value)]));
    const records = run.rejected_records || [];
    byId("rejected-summary").textContent = run.rejected
      ? `${int(run.rejected)} record${run.rejected === 1 ? "" : "s"} rejected` +
        (records.length < run.rejected ? `; the first ${records.length} are shown.` : ".")
      : "No record was rejected.";
    byId("rejected-table").hidden = records.length === 0;
    fill(byId("rejected-table").tBodies[0], records.map((r, i) => el("tr", {class: "rejected-row"},
      el("td", {class: "num"}, i + 1),
      el("td", {class: "reason"}, r.reason),
      el("td", {}, errorsList(r.errors)),
      el("td", {}, json(r.record)))), "None.");
  }

  CF.every(load);
})();
