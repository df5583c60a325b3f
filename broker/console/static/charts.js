// The chart page: fetch the counts of the current search (grouped by the broker's database,
// Audit/Aggregate) and draw them with Chart.js (chart.umd.min.js ships with the console; see
// README.md in this folder).
/* global Chart */
"use strict";

const COLOURS = ["#2f6f9f", "#c0392b", "#27ae60", "#8e44ad", "#d68910", "#16a085", "#7f8c8d", "#e84393"];

function stacked(id, data) {
  return new Chart(document.getElementById(id), {
    type: "bar",
    data: {
      labels: data.labels,
      datasets: data.series.map((s, i) => ({ label: s.name, data: s.values, backgroundColor: COLOURS[i % COLOURS.length] })),
    },
    options: { animation: false, responsive: true, scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true } } },
  });
}

function simple(id, data, horizontal) {
  return new Chart(document.getElementById(id), {
    type: "bar",
    data: { labels: data.labels, datasets: [{ label: "count", data: data.values, backgroundColor: COLOURS[0] }] },
    options: { animation: false, responsive: true, indexAxis: horizontal ? "y" : "x", plugins: { legend: { display: false } } },
  });
}

async function draw() {
  const basis = document.getElementById("chart-basis");
  const response = await fetch(basis.dataset.src, { credentials: "same-origin" });
  if (!response.ok) {
    basis.textContent = `Could not load the chart data (${response.status}).`;
    return;
  }
  const data = await response.json();
  stacked("chart-calls", data.calls_by_outcome);
  stacked("chart-actions", data.actions_by_label);
  simple("chart-denials", data.denials_by_reason, true);
  stacked("chart-deletions", data.deletions);
  simple("chart-tenants", data.calls_by_tenant_model, true);
  basis.textContent = `Based on all ${data.entries} entries of this search.`;
  document.body.dataset.chartsReady = "true";
}

document.addEventListener("DOMContentLoaded", draw);
