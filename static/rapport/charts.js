// Lifecycle charts (Chart.js) from the page's json_script data; clicking a bar or point opens its customers.
// The same numbers are in tables under each chart, so the page works without JavaScript.
(function () {
  "use strict";

  var STAGE_COLOURS = {
    prospect: "#adb5bd", onboarding: "#0dcaf0", active: "#198754", at_risk: "#fd7e14", lapsed: "#dc3545"
  };
  var PRIMARY = "#0d6efd";

  function open(url) {
    if (url) { window.location.assign(url); }
  }

  var builders = {
    stages: function (stages) {
      return {
        config: {
          type: "bar",
          data: {
            labels: stages.map(function (s) { return s.label; }),
            datasets: [{
              label: "Customers", data: stages.map(function (s) { return s.count; }),
              backgroundColor: stages.map(function (s) { return STAGE_COLOURS[s.stage]; })
            }]
          },
          options: { plugins: { legend: { display: false } }, scales: { y: { beginAtZero: true, ticks: { precision: 0 } } } }
        },
        urlOf: function (element) { return stages[element.index].url; }
      };
    },
    flow: function (flow) {
      return {
        config: {
          type: "bar",
          data: {
            labels: flow.labels,
            datasets: flow.datasets.map(function (d) {
              return { label: d.label, data: d.data, backgroundColor: STAGE_COLOURS[d.stage] };
            })
          },
          options: { scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true, ticks: { precision: 0 } } } }
        },
        urlOf: function (element) { return flow.datasets[element.datasetIndex].url; }
      };
    },
    pareto: function (pareto) {
      return {
        config: {
          type: "line",
          data: {
            datasets: [
              { label: "Share of revenue", data: pareto.points, borderColor: PRIMARY, pointRadius: 0, pointHitRadius: 6 },
              { label: "Even spread", data: [{ x: 0, y: 0 }, { x: 100, y: 100 }], borderColor: "#adb5bd",
                borderDash: [4, 4], pointRadius: 0 }
            ]
          },
          options: {
            interaction: { mode: "nearest", intersect: false },
            scales: {
              x: { type: "linear", min: 0, max: 100, title: { display: true, text: "Top customers (%)" } },
              y: { min: 0, max: 100, title: { display: true, text: "Share of revenue (%)" } }
            }
          }
        },
        urlOf: function () { return pareto.url; }
      };
    },
    churn: function (churn) {
      return {
        config: {
          type: "line",
          data: {
            labels: churn.points.map(function (p) { return p.month; }),
            datasets: [{ label: "Churn (%)", data: churn.points.map(function (p) { return p.rate; }),
                         borderColor: STAGE_COLOURS.lapsed, pointHitRadius: 8 }]
          },
          options: { plugins: { legend: { display: false } }, scales: { y: { beginAtZero: true } } }
        },
        urlOf: function () { return churn.url; }
      };
    },
    clv: function (clv) {
      return {
        config: {
          type: "bar",
          data: {
            labels: clv.bins.map(function (b) { return b.label; }),
            datasets: [{ label: "Customers", data: clv.bins.map(function (b) { return b.count; }), backgroundColor: PRIMARY }]
          },
          options: { plugins: { legend: { display: false } }, scales: { y: { beginAtZero: true, ticks: { precision: 0 } } } }
        },
        urlOf: function (element) { return clv.bins[element.index].url; }
      };
    }
  };

  function draw(canvas, data) {
    var build = builders[canvas.dataset.chart];
    if (!build || data === undefined) { return; }
    var chart = build(data);
    var options = chart.config.options || {};
    options.animation = false;
    options.responsive = true;
    options.onClick = function (event, elements) {
      if (elements.length) { open(chart.urlOf(elements[0])); }
    };
    options.onHover = function (event, elements) {
      event.native.target.style.cursor = elements.length ? "pointer" : "default";
    };
    chart.config.options = options;
    canvas.chart = new window.Chart(canvas, chart.config);
    canvas.dataset.drawn = "true";
  }

  function drawAll() {
    var source = document.getElementById("lifecycle-charts");
    if (!source || !window.Chart) { return; }
    var charts = JSON.parse(source.textContent);
    document.querySelectorAll("canvas[data-chart]").forEach(function (canvas) {
      draw(canvas, charts[canvas.dataset.chart]);
    });
  }

  // When the polled refresh finishes, reload so the numbers and charts show its result.
  document.addEventListener("htmx:afterSettle", function () {
    var bar = document.querySelector("[data-refresh-status] .job-progress");
    if (bar && (bar.dataset.state === "done" || bar.dataset.state === "failed")) {
      window.location.reload();
    }
  });

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", drawAll);
  } else {
    drawAll();
  }
})();
