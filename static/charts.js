// What the dashboard's chart and the trades page's equity curve share: the chart's look, the price format
// and the refresh loop that reads the chart's JSON while the page is open.
(function () {
  "use strict";
  const REFRESH_MS = 10000;

  function create(box, options) {
    return window.LightweightCharts.createChart(box, Object.assign({
      autoSize: true,
      layout: { background: { color: "transparent" }, textColor: "#1d232a", fontSize: 12 },
      grid: { vertLines: { color: "#eef0f3" }, horzLines: { color: "#eef0f3" } },
      rightPriceScale: { borderVisible: false },
      timeScale: { borderVisible: false, timeVisible: true, secondsVisible: false },
      localization: { timeFormatter: utc },
    }, options || {}));
  }

  // The market's decimals when the server gives them (the tiles use the same), else enough for five
  // significant digits (0.00141 needs 7, 43000 needs 2).
  function priceFormat(value, decimals) {
    const precision = Number.isInteger(decimals) ? decimals
      : Math.min(10, Math.max(2, 4 - Math.floor(Math.log10(Math.abs(value) || 1))));
    return { type: "price", precision: precision, minMove: Math.pow(10, -precision) };
  }

  // A number as the pages write it: fixed decimals, thousands separators, never an exponent.
  function fixed(value, decimals) {
    return Number(value).toLocaleString("en-US", { minimumFractionDigits: decimals, maximumFractionDigits: decimals });
  }

  // A chart time (UTC seconds) as "YYYY-MM-DD HH:MM UTC".
  function utc(seconds) {
    return new Date(seconds * 1000).toISOString().slice(0, 16).replace("T", " ") + " UTC";
  }

  // Draw the JSON at box.dataset.src now and every REFRESH_MS; a lost session reloads into the login page.
  function poll(box, draw, name) {
    async function refresh() {
      try {
        const response = await fetch(box.dataset.src, { headers: { Accept: "application/json" } });
        if (response.status === 401) { window.location.reload(); return; }
        if (response.ok) draw(await response.json());
      } catch (error) {
        console.warn(name + " refresh failed", error);
      }
    }
    refresh();
    setInterval(refresh, REFRESH_MS);
  }

  const STEPS_S = [60, 300, 900, 3600, 4 * 3600, 86400, 7 * 86400];
  const MAX_POINTS = 1500;

  // Lightweight Charts puts its points side by side whatever the time between them: a point every `step`
  // seconds (the equity held since the last fill) makes the x axis proportional to time.
  function onTimeGrid(points) {
    if (points.length < 2) return points;
    const first = points[0].time, last = points[points.length - 1].time;
    const step = STEPS_S.find((s) => (last - first) / s <= MAX_POINTS) || STEPS_S[STEPS_S.length - 1];
    const grid = [];
    let i = 0;
    for (let t = first - (first % step); t <= last; t += step) {
      while (i + 1 < points.length && points[i + 1].time <= t) i++;
      if (t >= first) grid.push({ time: t, value: points[i].value });
    }
    if (!grid.length || grid[grid.length - 1].time !== last) grid.push({ time: last, value: points[points.length - 1].value });
    if (grid[0].time !== first) grid.unshift({ time: first, value: points[0].value });
    return grid;
  }

  window.omniwiseCharts = { create: create, priceFormat: priceFormat, poll: poll, fixed: fixed, utc: utc,
                           onTimeGrid: onTimeGrid };
})();
