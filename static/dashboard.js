// The dashboard's chart: recent candles, the strategy's moving averages, fills and external signals.
(function () {
  "use strict";
  const box = document.getElementById("chart");
  const LWC = window.LightweightCharts, charts = window.omniwiseCharts;
  if (!box || !LWC || !charts) return;
  const LINE_COLORS = ["#2962ff", "#d81b60", "#ef6c00", "#00897b", "#8e24aa", "#6d4c41"];
  const GOOD = "#17803d", BAD = "#b42318", SIGNAL = "#1565c0";

  const chart = charts.create(box);
  const candles = chart.addSeries(LWC.CandlestickSeries, {
    upColor: GOOD, downColor: BAD, wickUpColor: GOOD, wickDownColor: BAD, borderVisible: false,
  });
  const markers = LWC.createSeriesMarkers(candles, []);
  const lines = new Map();
  let isFitted = false;

  function toMarker(marker) {
    if (marker.kind === "signal") {
      return { time: marker.time, position: marker.side === "BUY" ? "belowBar" : "aboveBar", shape: "circle",
               color: SIGNAL, text: marker.text };
    }
    const isBuy = marker.side === "BUY";
    return { time: marker.time, position: isBuy ? "belowBar" : "aboveBar", shape: isBuy ? "arrowUp" : "arrowDown",
             color: isBuy ? GOOD : BAD };  // fills are many: arrows alone keep the candles readable
  }

  function showLegend(names) {
    const legend = document.getElementById("chart-legend");
    if (!legend) return;
    legend.replaceChildren(...names.map((name, i) => {
      const item = document.createElement("span");
      item.style.color = LINE_COLORS[i % LINE_COLORS.length];
      item.textContent = name;
      return item;
    }));
  }

  function draw(data) {
    if (data.candles.length) {
      const format = charts.priceFormat(data.candles[data.candles.length - 1].close);
      candles.applyOptions({ priceFormat: format });
      lines.forEach((series) => series.applyOptions({ priceFormat: format }));
    }
    candles.setData(data.candles);
    const names = data.lines.map((line) => line.name);
    if (names.join("|") !== Array.from(lines.keys()).join("|")) {  // the strategy changed: new lines
      lines.forEach((series) => chart.removeSeries(series));
      lines.clear();
      names.forEach((name, i) => lines.set(name, chart.addSeries(LWC.LineSeries, {
        color: LINE_COLORS[i % LINE_COLORS.length], lineWidth: 2, priceLineVisible: false,
        lastValueVisible: false, crosshairMarkerVisible: false, title: name,
        priceFormat: candles.options().priceFormat,
      })));
    }
    data.lines.forEach((line) => lines.get(line.name).setData(line.points));
    markers.setMarkers(data.markers.map(toMarker));
    showLegend(names);
    box.dataset.candles = String(data.candles.length);
    if (!isFitted && data.candles.length) { chart.timeScale().fitContent(); isFitted = true; }
  }

  charts.poll(box, draw, "chart");
})();
