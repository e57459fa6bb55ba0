/* One asset: consensus of the latest prices, a price chart per source (and dataset, when the API names
   one) with the consensus (median) and spread across them, candles of one series, the latest quote per
   source. Charts are TradingView Lightweight Charts (vendored); data from /api/v1/assets/{ref}[/history]. */
"use strict";

(function () {
  const {el, byId, fill, money, compact, pct, time, ago} = CF;
  const LWC = window.LightweightCharts;
  const ref = byId("main").dataset.assetRef;
  const COLORS = ["#2962ff", "#e65100", "#2e7d32", "#8e24aa", "#00838f", "#c62828", "#6d4c41", "#546e7a"];
  const DAY = 86400 * 1000;
  const RANGES = {
    all: () => ({interval: "1d", since: "2000-01-03T00:00:00Z"}),
    "90d": () => ({interval: "4h", since: new Date(Date.now() - 90 * DAY).toISOString()}),
    "7d": () => ({interval: "1h", since: new Date(Date.now() - 7 * DAY).toISOString()}),
    "48h": () => ({interval: "raw", since: new Date(Date.now() - 2 * DAY).toISOString()}),
  };
  let range = "all";
  let fitPending = true;
  const colorOf = {};
  const lineSeries = {};
  let candleSeries = null;
  let consensusSeries = null;
  let spreadSeries = null;
  let lastCandles = {};

  const chartOptions = {
    autoSize: true,
    layout: {attributionLogo: false, background: {color: "#ffffff"}, textColor: "#3c4257", fontSize: 12},
    grid: {vertLines: {color: "#eef0f4"}, horzLines: {color: "#eef0f4"}},
    rightPriceScale: {borderColor: "#d8dce6"},
    timeScale: {borderColor: "#d8dce6", timeVisible: true, secondsVisible: false},
    localization: {priceFormatter: (p) => money(p)},
  };
  const priceChart = LWC.createChart(byId("price-chart"), chartOptions);
  let candleChart = null;                 // created when its section first shows: a hidden box has no size

  function keyOf(row) {
    return row.dataset || row.source;   // a dataset name starts with its source ("csv:prices.csv")
  }

  function color(key) {
    if (!colorOf[key]) colorOf[key] = COLORS[Object.keys(colorOf).length % COLORS.length];
    return colorOf[key];
  }

  function seconds(iso) {
    return Math.floor(new Date(iso).getTime() / 1000);
  }

  /* rows (points or candles) -> {key: [{time, value, ...}]}, ascending, one value per time. */
  function group(history) {
    const raw = history.interval === "raw";
    const rows = (raw ? history.points : history.candles) || [];
    const out = {};
    for (const row of rows) {
      const value = Number(raw ? row.price_usd : row.close);
      if (!Number.isFinite(value)) continue;
      const key = keyOf(row);
      const t = seconds(raw ? row.observed_at : row.bucket);
      const list = out[key] || (out[key] = []);
      const item = raw ? {time: t, value: value} : {time: t, value: value, open: Number(row.open),
        high: Number(row.high), low: Number(row.low), close: value, from: row.from};
      if (list.length && list[list.length - 1].time === t) list[list.length - 1] = item;
      else list.push(item);
    }
    for (const list of Object.values(out)) list.sort((a, b) => a.time - b.time);
    return out;
  }

  function median(values) {
    const s = [...values].sort((a, b) => a - b);
    const mid = Math.floor(s.length / 2);
    return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
  }

  /* At each time two or more series share: their median, and (max - min) / median in percent. */
  function consensusOf(series) {
    const byTime = new Map();
    for (const list of Object.values(series)) {
      for (const p of list) (byTime.get(p.time) || byTime.set(p.time, []).get(p.time)).push(p.value);
    }
    const med = [];
    const spread = [];
    for (const t of [...byTime.keys()].sort((a, b) => a - b)) {
      const values = byTime.get(t);
      if (values.length < 2) continue;
      const m = median(values);
      med.push({time: t, value: m});
      spread.push({time: t, value: m ? (Math.max(...values) - Math.min(...values)) / m * 100 : 0});
    }
    return {med, spread};
  }

  function precisionFor(series) {
    const values = Object.values(series).flat().map((p) => p.value);
    const typical = values.length ? median(values) : 1;
    if (typical >= 1) return {type: "price", precision: 2, minMove: 0.01};
    const digits = Math.min(Math.max(2 - Math.floor(Math.log10(typical || 1e-8)), 4), 10);
    return {type: "price", precision: digits, minMove: Math.pow(10, -digits)};
  }

  function drawPrices(series) {
    const format = precisionFor(series);
    for (const key of Object.keys(lineSeries)) {
      if (!series[key]) {
        priceChart.removeSeries(lineSeries[key]);
        delete lineSeries[key];
      }
    }
    for (const [key, list] of Object.entries(series)) {
      if (!lineSeries[key]) {
        lineSeries[key] = priceChart.addSeries(LWC.LineSeries, {color: color(key), lineWidth: 2, title: key,
          priceLineVisible: false});
      }
      lineSeries[key].applyOptions({priceFormat: format});
      lineSeries[key].setData(list.map((p) => ({time: p.time, value: p.value})));
    }
    const {med, spread} = consensusOf(series);
    if (!consensusSeries) {
      consensusSeries = priceChart.addSeries(LWC.LineSeries, {color: "#111827", lineWidth: 1,
        lineStyle: LWC.LineStyle.Dashed, title: "consensus", priceLineVisible: false, lastValueVisible: false});
      spreadSeries = priceChart.addSeries(LWC.HistogramSeries, {color: "rgba(230, 81, 0, 0.45)",
        priceScaleId: "spread", title: "spread %", lastValueVisible: false, priceLineVisible: false,
        priceFormat: {type: "custom", formatter: (v) => `${v.toFixed(2)}%`, minMove: 0.0001}});
      priceChart.priceScale("spread").applyOptions({scaleMargins: {top: 0.82, bottom: 0}});
    }
    consensusSeries.applyOptions({priceFormat: format});
    consensusSeries.setData(med);
    spreadSeries.setData(spread);
    const legend = Object.keys(series).map((key) => el("span", {class: "legend-item"},
      el("span", {class: `swatch swatch-${COLORS.indexOf(color(key))}`}), key));
    if (med.length) {
      legend.push(el("span", {class: "legend-item"}, el("span", {class: "swatch swatch-consensus"}), "consensus (median)"),
        el("span", {class: "legend-item"}, el("span", {class: "swatch swatch-spread"}), "spread % between series"));
    }
    byId("price-legend").replaceChildren(...legend);
    return med.length;
  }

  function drawCandles(series, interval) {
    const section = byId("candles-section");
    const keys = Object.keys(series);
    lastCandles = series;
    if (interval === "raw" || !keys.length) {
      section.hidden = true;
      return;
    }
    section.hidden = false;
    if (!candleChart) {
      candleChart = LWC.createChart(byId("candle-chart"), chartOptions);
      fitPending = true;
    }
    const select = byId("candle-series");
    const chosen = keys.includes(select.value) ? select.value : keys[0];
    select.replaceChildren(...keys.map((k) => el("option", {value: k, selected: k === chosen ? "selected" : null}, k)));
    select.value = chosen;
    if (!candleSeries) {
      candleSeries = candleChart.addSeries(LWC.CandlestickSeries, {upColor: "#2e7d32", downColor: "#c62828",
        borderVisible: false, wickUpColor: "#2e7d32", wickDownColor: "#c62828"});
    }
    const list = series[chosen].filter((c) => [c.open, c.high, c.low, c.close].every(Number.isFinite));
    candleSeries.applyOptions({priceFormat: precisionFor({[chosen]: list})});
    candleSeries.setData(list.map((c) => ({time: c.time, open: c.open, high: c.high, low: c.low, close: c.close})));
    const from = new Set(list.map((c) => c.from).filter(Boolean));
    byId("candle-note").textContent = `${list.length} candles of ${interval} for ${chosen}; ` + (from.size
      ? `from: ${[...from].join(", ")} (source = the source's own candles, observed = built from observations).`
      : "built from the observed prices (open = first, close = last observation in each bucket).");
  }

  // volume_usd is the volume of the row's own interval (the dataset's native interval), never a 24h volume
  function intervalVolume(q, interval) {
    if (q.volume_usd === null || q.volume_usd === undefined) return el("td", {class: "num"}, "–");
    const per = interval ? ` / ${interval}` : "";
    return el("td", {class: "num", title: `${q.volume_usd} USD traded within the row's interval` +
      (interval ? ` (${interval})` : "")}, compact(q.volume_usd) + per);
  }

  function renderAsset(asset) {
    document.title = `${asset.name} (${asset.symbol}) · cryptoflow`;
    byId("asset-name").textContent = asset.name;
    byId("asset-symbol").textContent = `${asset.symbol} · ${asset.slug}`;
    byId("asset-sources").textContent = `Sources: ${(asset.sources || []).join(", ") || "none"}` +
      (asset.datasets && asset.datasets.length ? ` · datasets: ${asset.datasets.map((d) => d.name || d.dataset || d).join(", ")}` : "");
    const c = asset.consensus || {};
    const card = (label, value, title) => el("div", {class: "card", title: title},
      el("div", {class: "card-value"}, value), el("div", {class: "card-label"}, label));
    byId("consensus-cards").replaceChildren(
      card("consensus (median)", money(c.median_price_usd), c.median_price_usd),
      card("lowest", money(c.min_price_usd), c.min_price_usd),
      card("highest", money(c.max_price_usd), c.max_price_usd),
      card("spread", c.spread_pct === null || c.spread_pct === undefined ? "–" : `${Number(c.spread_pct).toFixed(2)}%`,
        c.spread_usd ? `${c.spread_usd} USD` : null),
      card("sources with a price", String(c.sources || 0)));
    const intervalOf = Object.fromEntries((asset.datasets || []).map((d) => [d.name, d.native_interval]));
    fill(byId("quotes-table").tBodies[0], (asset.quotes || []).map((q) => el("tr", {},
      el("td", {}, keyOf(q)),
      el("td", {class: "num", title: q.price_usd}, money(q.price_usd)),
      el("td", {class: "num", title: q.open_usd}, money(q.open_usd)),
      el("td", {class: "num", title: q.high_usd}, money(q.high_usd)),
      el("td", {class: "num", title: q.low_usd}, money(q.low_usd)),
      el("td", {class: "num", title: q.market_cap_usd}, compact(q.market_cap_usd)),
      el("td", {class: "num", title: q.volume_24h_usd}, compact(q.volume_24h_usd)),
      intervalVolume(q, intervalOf[q.dataset]),
      el("td", {class: "num"}, pct(q.change_24h_pct)),
      el("td", {title: time(q.observed_at)}, ago(q.observed_at)),
      el("td", {class: "flags"}, ...(q.flags || []).map((f) => el("span", {class: "pill flag"},
        typeof f === "string" ? f : (f.rule || f.name || JSON.stringify(f))))))), "No quote.");
    fill(byId("identifiers-table").tBodies[0], (asset.identifiers || []).map((i) => el("tr", {},
      el("td", {}, i.source), el("td", {}, i.external_id), el("td", {}, i.symbol || "–"),
      el("td", {}, i.name || "–"), el("td", {}, time(i.first_seen_at)))), "None.");
  }

  async function load() {
    const window_ = RANGES[range]();
    const params = new URLSearchParams({interval: window_.interval, since: window_.since, limit: "10000"});
    const base = `/api/v1/assets/${encodeURIComponent(ref)}`;
    const [asset, history] = await Promise.all([CF.getJSON(base), CF.getJSON(`${base}/history?${params}`)]);
    renderAsset(asset);
    const series = group(history);
    const shared = drawPrices(series);
    drawCandles(series, history.interval);
    const count = Object.values(series).reduce((n, l) => n + l.length, 0);
    const times = Object.values(series).flat().map((p) => p.time);
    const iso = (t) => new Date(t * 1000).toISOString();
    byId("price-note").textContent = count
      ? `${count} ${history.interval === "raw" ? "observations" : `${history.interval} closes`} from ` +
        `${time(iso(Math.min(...times)))} to ${time(iso(Math.max(...times)))}` +
        (shared ? `; consensus and spread where ${Object.keys(series).length > 1 ? "series overlap" : "—"}.` :
          Object.keys(series).length > 1 ? "; the series do not overlap in time, so no consensus line." : ".") +
        (history.truncated ? " Truncated: choose a shorter range." : "")
      : "No price in this range: choose another range.";
    if (fitPending && count) {
      priceChart.timeScale().fitContent();
      if (candleChart) candleChart.timeScale().fitContent();
      fitPending = false;
    }
  }

  function markRange() {
    for (const button of byId("ranges").querySelectorAll("button")) {
      button.classList.toggle("active", button.dataset.range === range);
    }
  }

  byId("ranges").addEventListener("click", (event) => {
    const button = event.target.closest("button[data-range]");
    if (!button || button.dataset.range === range) return;
    range = button.dataset.range;
    fitPending = true;
    markRange();
    load().catch(CF.showError);
  });
  byId("candle-series").addEventListener("change", () => {
    drawCandles(lastCandles, RANGES[range]().interval);
    if (candleChart) candleChart.timeScale().fitContent();
  });
  markRange();
  CF.every(load);
})();
