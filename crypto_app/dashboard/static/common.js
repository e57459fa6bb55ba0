/* Shared helpers of the dashboard pages: JSON fetch, DOM building (text only, never HTML), formatting,
   and the periodic refresh. Every page script calls CF.every(load) with its own loader. */
"use strict";

window.CF = (function () {
  const params = new URLSearchParams(window.location.search);
  const refreshSeconds = Math.min(Math.max(Number(params.get("refresh")) || 15, 1), 3600);

  class ApiError extends Error {
    constructor(status, message, body) {
      super(message);
      this.status = status;
      this.body = body;
    }
  }

  /* GET a JSON API URL; throws ApiError carrying the API's own message. okStatuses lets /health's 503
     (a JSON body that still says what is wrong) through. */
  async function getJSON(url, okStatuses) {
    const response = await fetch(url, {headers: {Accept: "application/json"}, cache: "no-cache"});
    let body = null;
    try {
      body = await response.json();
    } catch (err) {
      throw new ApiError(response.status, `${url}: answered ${response.status} without JSON`, null);
    }
    if (!response.ok && !(okStatuses || []).includes(response.status)) {
      throw new ApiError(response.status, (body && body.message) || `${url}: HTTP ${response.status}`, body);
    }
    return body;
  }

  /* el("td", {class: "num", title: "x"}, "text", otherNode): children are text or nodes, never HTML. */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "hidden") node.hidden = true;
      else node.setAttribute(key, String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function link(href, text, attrs) {
    return el("a", Object.assign({href: href}, attrs || {}), text);
  }

  function fill(tbody, rows, emptyText, columns) {
    tbody.replaceChildren(...(rows.length ? rows : [el("tr", {class: "empty"},
      el("td", {colspan: columns || 20}, emptyText))]));
  }

  function byId(id) {
    return document.getElementById(id);
  }

  /* 12345.6789 -> "12,345.68"; small prices keep 6 significant digits. Display only: the exact value
     is put in the cell's title. */
  function money(value) {
    if (value === null || value === undefined || value === "") return "–";
    const n = Number(value);
    if (!Number.isFinite(n)) return String(value);
    const abs = Math.abs(n);
    if (abs !== 0 && abs < 1) return n.toLocaleString("en-US", {maximumSignificantDigits: 6});
    return n.toLocaleString("en-US", {maximumFractionDigits: 2});
  }

  function compact(value) {
    if (value === null || value === undefined || value === "") return "–";
    const n = Number(value);
    if (!Number.isFinite(n)) return String(value);
    return n.toLocaleString("en-US", {notation: "compact", maximumFractionDigits: 2});
  }

  function int(value) {
    return value === null || value === undefined ? "–" : Number(value).toLocaleString("en-US");
  }

  function pct(value) {
    if (value === null || value === undefined || value === "") return "–";
    const n = Number(value);
    return (n > 0 ? "+" : "") + n.toFixed(2) + "%";
  }

  function time(iso, withSeconds) {
    if (!iso) return "–";
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return String(iso);
    return d.toISOString().replace("T", " ").slice(0, withSeconds ? 19 : 16) + " UTC";
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    const s = Number(seconds);
    if (s < 1) return `${Math.round(s * 1000)} ms`;
    if (s < 120) return `${s.toFixed(1)} s`;
    if (s < 7200) return `${Math.round(s / 60)} min`;
    if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
    return `${Math.round(s / 86400)} d`;
  }

  function ago(iso) {
    if (!iso) return "never";
    const seconds = (Date.now() - new Date(iso).getTime()) / 1000;
    return seconds < 5 ? "just now" : `${duration(Math.max(seconds, 0))} ago`;
  }

  function statusPill(status) {
    return el("span", {class: `pill status-${status || "none"}`}, status || "none");
  }

  function showError(err) {
    const banner = byId("load-error");
    if (!err) {
      banner.hidden = true;
      banner.textContent = "";
      return;
    }
    banner.textContent = `Could not load: ${err.message}`;
    banner.hidden = false;
  }

  /* Run `load` now and then every refreshSeconds, one at a time; the header says when it last worked. */
  function every(load) {
    const state = byId("refresh-state");
    let count = 0;
    async function tick() {
      try {
        await load();
        count += 1;
        showError(null);
        state.textContent = `updated ${new Date().toLocaleTimeString("en-GB")} · every ${refreshSeconds} s`;
        state.dataset.refreshes = String(count);
      } catch (err) {
        showError(err);
        state.textContent = "refresh failed";
      }
      window.setTimeout(tick, refreshSeconds * 1000);
    }
    tick();
  }

  return {ApiError, getJSON, el, link, fill, byId, money, compact, int, pct, time, duration, ago,
          statusPill, showError, every, refreshSeconds};
})();
