// Light progressive enhancement: every page works without it.
"use strict";

const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"];

function drawChart(holder) {
  const source = document.getElementById(holder.dataset.chart);
  if (!source || typeof uPlot === "undefined") return;
  const chart = JSON.parse(source.textContent);
  const width = Math.max(320, Math.min(holder.clientWidth || 800, 1100));
  const series = [{ label: chart.x }].concat(chart.series.map((name, i) => ({
    label: name,
    stroke: PALETTE[i % PALETTE.length],
    width: 2,
    value: (u, v) => (v == null ? "–" : (100 * v).toFixed(2) + " %"),
  })));
  const options = {
    width: width,
    height: 320,
    series: series,
    scales: { x: { time: false } },
    axes: [{ label: chart.x }, { label: chart.y, values: (u, ticks) => ticks.map((t) => (100 * t).toFixed(0) + " %") }],
  };
  new uPlot(options, chart.data, holder);
  holder.dataset.drawn = "true";
}

function fillFromFile(input) {
  const target = document.getElementById(input.dataset.fills);
  input.addEventListener("change", () => {
    const file = input.files && input.files[0];
    if (!file) return;
    file.text().then((text) => {
      target.value = text;
      input.form.requestSubmit();
    });
  });
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-chart]").forEach(drawChart);
  document.querySelectorAll("input[type=file][data-fills]").forEach(fillFromFile);
});
