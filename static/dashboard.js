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

  const LEVEL_COLORS = { entry: "#1f5fbf", "stop loss": BAD, "trailing stop": BAD, "take profit": GOOD };
  let priceLines = [], decimals = 2;

  // The open trade's entry, stop and take profit as horizontal lines, replaced at each refresh.
  function showLevels(levels) {
    priceLines.forEach((line) => candles.removePriceLine(line));
    priceLines = (levels || []).map((level) => candles.createPriceLine({
      price: level.price, color: LEVEL_COLORS[level.name] || "#6b7480", lineWidth: 1,
      lineStyle: level.name === "entry" ? LWC.LineStyle.Solid : LWC.LineStyle.Dashed,
      axisLabelVisible: true, title: level.name,
    }));
    box.dataset.levels = (levels || []).map((level) => level.name).join(",");
  }

  // The values under the pointer (the newest candle when it is off the chart), in the tiles' decimals.
  const hover = document.getElementById("chart-hover");
  function showHover(param) {
    if (!hover) return;
    const bar = param && param.seriesData ? param.seriesData.get(candles) : null;
    if (!bar) { hover.textContent = ""; return; }
    const parts = [charts.utc(param.time), "O " + charts.fixed(bar.open, decimals), "H " + charts.fixed(bar.high, decimals),
                   "L " + charts.fixed(bar.low, decimals), "C " + charts.fixed(bar.close, decimals)];
    lines.forEach((series, name) => {
      const point = param.seriesData.get(series);
      if (point && point.value !== undefined) parts.push(name + " " + charts.fixed(point.value, decimals));
    });
    hover.textContent = parts.join(" · ");
  }
  chart.subscribeCrosshairMove(showHover);

  function draw(data) {
    if (Number.isInteger(data.price_decimals)) decimals = data.price_decimals;
    showLevels(data.levels);
    if (data.candles.length) {
      const format = charts.priceFormat(data.candles[data.candles.length - 1].close, data.price_decimals);
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
