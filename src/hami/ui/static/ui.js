// Light progressive enhancement: every page works without it.
"use strict";

const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"];

function drawChart(holder) {
  const source = document.getElementById(holder.dataset.chart);
  if (!source || typeof uPlot === "undefined") return;
  const chart = JSON.parse(source.textContent);
  const width = Math.max(320, Math.min(holder.clientWidth || 800, 1100));
  // Values are ratios (shown as percents) or MiB (shown as GiB).
  const gib = chart.unit === "MiB";
  const show = (v, digits) => (gib ? (v / 1024).toFixed(digits) + " GiB" : (100 * v).toFixed(digits) + " %");
  const series = [{ label: chart.x }].concat(chart.series.map((name, i) => ({
    label: name,
    stroke: PALETTE[i % PALETTE.length],
    width: 2,
    value: (u, v) => (v == null ? "–" : show(v, gib ? 1 : 2)),
  })));
  const options = {
    width: width,
    height: 320,
    series: series,
    scales: { x: { time: !!chart.time } },
    axes: [{ label: chart.x }, { label: chart.y, size: 70, values: (u, ticks) => ticks.map((t) => show(t, 0)) }],
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
