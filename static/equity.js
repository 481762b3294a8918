// The trades page's equity curve: the account's value after each fill and now, refreshed while the page is open.
(function () {
  "use strict";
  const box = document.getElementById("equity");
  const LWC = window.LightweightCharts, charts = window.omniwiseCharts;
  if (!box || !LWC || !charts) return;

  const chart = charts.create(box);
  const line = chart.addSeries(LWC.BaselineSeries, {
    lineWidth: 2, priceLineVisible: false,
    topLineColor: "#17803d", topFillColor1: "rgba(23,128,61,.18)", topFillColor2: "rgba(23,128,61,.02)",
    bottomLineColor: "#b42318", bottomFillColor1: "rgba(180,35,24,.02)", bottomFillColor2: "rgba(180,35,24,.18)",
  });
  let isFitted = false;

  function draw(data) {
    const size = data.start || (data.points[0] && data.points[0].value) || 1;  // five digits of the account
    line.applyOptions({ baseValue: { type: "price", price: data.start }, priceFormat: charts.priceFormat(size, data.decimals) });
    line.setData(charts.onTimeGrid(data.points));
    box.dataset.points = String(data.points.length);
    if (!isFitted && data.points.length) { chart.timeScale().fitContent(); isFitted = true; }
  }

  charts.poll(box, draw, "equity");
})();
