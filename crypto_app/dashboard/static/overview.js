/* Overview: health, totals, sources, recent runs, latest prices; refreshed in place. */
"use strict";

(function () {
  const {el, link, fill, byId, money, compact, int, pct, time, duration, ago, statusPill} = CF;
  const enc = encodeURIComponent;

  function runHref(id) {
    return `/runs/${enc(id)}`;
  }

  function renderHealth(health) {
    const pill = byId("health-status");
    pill.textContent = health.status;
    pill.className = `pill health-${health.status}`;
    byId("health-reasons").replaceChildren(...(health.reasons || []).map((r) => el("li", {}, r)));
  }

  function card(label, value, title, cls) {
    return el("div", {class: `card ${cls || ""}`, title: title},
      el("div", {class: "card-value"}, value), el("div", {class: "card-label"}, label));
  }

  function renderStats(stats) {
    const by = stats.runs_by_status || {};
    byId("stats-cards").replaceChildren(
      card("runs", int(stats.total_runs)),
      card("succeeded", int(by.succeeded || 0), null, "ok"),
      card("partial", int(by.partial || 0), null, by.partial ? "warn" : ""),
      card("failed", int(by.failed || 0), null, by.failed ? "bad" : ""),
      card("records loaded", int(stats.records_loaded)),
      card("records rejected", int(stats.records_rejected), null, stats.records_rejected ? "warn" : ""),
      card("quotes served", int((stats.data || {}).latest_quotes)),
      card("newest observation", ago((stats.data || {}).newest_observation),
           time((stats.data || {}).newest_observation)));
  }

  function renderSources(sources) {
    const rows = sources.map((s) => {
      const recent = s.recent || {};
      return el("tr", {"data-source": s.source},
        el("td", {}, el("strong", {}, s.source)),
        el("td", {}, el("span", {class: `pill ${s.stale ? "stale" : "fresh"}`}, s.stale ? "stale" : "fresh")),
        el("td", {title: time(s.last_success)}, ago(s.last_success)),
        el("td", {class: "nowrap"}, `every ${duration(s.schedule_seconds)}`),
        el("td", {class: "nowrap"}, s.last_run_id ? link(runHref(s.last_run_id), statusPill(s.last_status)) : "–",
          s.last_run_at ? el("span", {class: "muted"}, " ", ago(s.last_run_at)) : null),
        el("td", {class: s.last_error ? "error-cell" : "muted"}, s.last_error ? link(runHref(s.last_error_run_id), s.last_error,
          {title: `${s.last_error} (${time(s.last_error_at)})`}) : "–"),
        el("td", {class: "num"}, int(recent.runs)),
        el("td", {class: `num ${recent.failed ? "bad-text" : ""}`}, int(recent.failed)),
        el("td", {class: `num ${recent.rate_limit_waits ? "warn-text" : ""}`}, recent.rate_limit_waits
          ? `${int(recent.rate_limit_waits)} (${duration(recent.rate_limit_wait_seconds || 0)})` : "0"),
        el("td", {class: `num ${recent.http_429 ? "warn-text" : ""}`}, int(recent.http_429)));
    });
    fill(byId("sources-table").tBodies[0], rows, "No source is enabled.");
  }

  function renderRuns(runs) {
    const rows = runs.map((r) => el("tr", {class: `run status-row-${r.status}`, "data-run-id": r.id},
      el("td", {}, link(runHref(r.id), time(r.created_at), {title: r.id})),
      el("td", {}, r.source),
      el("td", {}, r.trigger),
      el("td", {}, statusPill(r.status)),
      el("td", {class: "num"}, int(r.fetched)),
      el("td", {class: "num"}, int(r.loaded)),
      el("td", {class: "num"}, r.rejected ? link(`${runHref(r.id)}#rejected`, int(r.rejected),
        {class: "rejected-link", title: "See the rejected records and their reasons"}) : "0"),
      el("td", {class: "num"}, duration(r.duration_seconds)),
      el("td", {class: r.error ? "error-cell" : "", title: r.error || null}, r.error || "")));
    fill(byId("runs-table").tBodies[0], rows, "No run yet: trigger one with POST /api/v1/runs or flask etl run.");
  }

  function renderPrices(quotes) {
    const rows = quotes.map((q) => el("tr", {},
      el("td", {}, link(`/assets/${enc(q.slug)}`, q.name)),
      el("td", {}, q.symbol),
      el("td", {}, q.dataset || q.source),
      el("td", {class: "num", title: q.price_usd}, money(q.price_usd)),
      el("td", {class: `num ${q.change_24h_pct == null ? "" : Number(q.change_24h_pct) < 0 ? "bad-text" : "ok-text"}`},
        pct(q.change_24h_pct)),
      el("td", {class: "num", title: q.market_cap_usd}, compact(q.market_cap_usd)),
      el("td", {title: time(q.observed_at)}, ago(q.observed_at))));
    fill(byId("prices-table").tBodies[0], rows, "No data yet.");
  }

  async function load() {
    const [health, stats, sources, runs, prices] = await Promise.all([
      CF.getJSON("/health", [503]),
      CF.getJSON("/api/v1/stats"),
      CF.getJSON("/api/v1/sources"),
      CF.getJSON("/api/v1/runs?page_size=15"),
      CF.getJSON("/api/v1/data?page_size=15"),
    ]);
    renderHealth(health);
    renderStats(stats);
    renderSources(sources.data);
    renderRuns(runs.data);
    renderPrices(prices.data);
  }

  CF.every(load);
})();
