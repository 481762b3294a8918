// The trades page's equity curve: the account's value after each fill and now, refreshed while the page is open.
(function () {
  "use strict";
  const box = document.getElementById("equity");
  const LWC = window.LightweightCharts;
  if (!box || !LWC) return;
  const REFRESH_MS = 10000;

  const chart = LWC.createChart(box, {
    autoSize: true,
    layout: { background: { color: "transparent" }, textColor: "#1d232a", fontSize: 12 },
    grid: { vertLines: { color: "#eef0f3" }, horzLines: { color: "#eef0f3" } },
    rightPriceScale: { borderVisible: false },
    timeScale: { borderVisible: false, timeVisible: true, secondsVisible: false },
    localization: { timeFormatter: (t) => new Date(t * 1000).toISOString().slice(0, 16).replace("T", " ") + " UTC" },
  });
  const line = chart.addSeries(LWC.BaselineSeries, {
    lineWidth: 2, priceLineVisible: false,
    topLineColor: "#17803d", topFillColor1: "rgba(23,128,61,.18)", topFillColor2: "rgba(23,128,61,.02)",
    bottomLineColor: "#b42318", bottomFillColor1: "rgba(180,35,24,.02)", bottomFillColor2: "rgba(180,35,24,.18)",
  });
  let isFitted = false;

  function precision(value) {  // five significant digits of the account's size
    return Math.min(10, Math.max(2, 4 - Math.floor(Math.log10(Math.abs(value) || 1))));
  }

  function draw(data) {
    const digits = precision(data.start || (data.points[0] && data.points[0].value) || 1);
    line.applyOptions({ baseValue: { type: "price", price: data.start },
                        priceFormat: { type: "price", precision: digits, minMove: Math.pow(10, -digits) } });
    line.setData(data.points);
    box.dataset.points = String(data.points.length);
    if (!isFitted && data.points.length) { chart.timeScale().fitContent(); isFitted = true; }
  }

  async function refresh() {
    try {
      const response = await fetch(box.dataset.src, { headers: { Accept: "application/json" } });
      if (response.status === 401) { window.location.reload(); return; }
      if (response.ok) draw(await response.json());
    } catch (error) {
      console.warn("equity refresh failed", error);
    }
  }

  refresh();
  setInterval(refresh, REFRESH_MS);
})();
