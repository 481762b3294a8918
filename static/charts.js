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
    }, options || {}));
  }

  // Enough decimals for five significant digits (0.00141 needs 7, 43000 needs 2).
  function priceFormat(value) {
    const precision = Math.min(10, Math.max(2, 4 - Math.floor(Math.log10(Math.abs(value) || 1))));
    return { type: "price", precision: precision, minMove: Math.pow(10, -precision) };
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

  window.omniwiseCharts = { create: create, priceFormat: priceFormat, poll: poll };
})();
