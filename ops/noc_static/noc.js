// The NOC pages' behaviour: the live part of each page comes by server-sent events and is swapped in
// (the server renders it, escaped); forms marked live-post are sent without leaving the page; the
// overview's chart is drawn with plotly.js from the JSON the live part carries.
(function () {
  "use strict";
  const live = document.getElementById("live");
  const flashBox = document.getElementById("flash");
  const linkState = document.getElementById("link-state");

  function flash(notice, error) {
    flashBox.replaceChildren();
    for (const [text, css, role] of [[error, "error", "alert"], [notice, "notice", "status"]]) {
      if (!text) continue;
      const div = document.createElement("div");
      div.className = "banner " + css;
      div.setAttribute("role", role);
      div.textContent = text;
      flashBox.appendChild(div);
    }
  }

  function drawChart() {
    const holder = document.getElementById("chart");
    const source = document.getElementById("chart-data");
    if (!holder || !source || !window.Plotly) return;
    const c = JSON.parse(source.textContent);
    const traces = [
      {x: c.time, y: c.grid_kw, name: "grid import", mode: "lines", line: {color: "#1f5fbf", width: 2}},
      {x: c.time, y: c.facility_kw, name: "facility", mode: "lines", line: {color: "#c2571a", width: 1.5}},
      {x: c.time, y: c.it_kw, name: "IT", mode: "lines", line: {color: "#2a8a3e", width: 1.5}},
      {x: c.forecast.time, y: c.forecast.upper_kw, name: "forecast band", mode: "lines", line: {width: 0},
       showlegend: false, hoverinfo: "skip"},
      {x: c.forecast.time, y: c.forecast.lower_kw, name: "forecast band", mode: "lines", line: {width: 0},
       fill: "tonexty", fillcolor: "rgba(31,95,191,0.18)"},
      {x: c.forecast.time, y: c.forecast.kw, name: "forecast", mode: "lines", line: {color: "#1f5fbf", dash: "dash"}},
    ];
    const shapes = [], annotations = [];
    const level = (kw, text, color, right) => {
      if (kw === null || kw === undefined) return;
      shapes.push({type: "line", xref: "paper", x0: 0, x1: 1, y0: kw, y1: kw, line: {color: color, dash: "dot", width: 1.5}});
      annotations.push({xref: "paper", x: right ? 1 : 0, y: kw, xanchor: right ? "right" : "left",
                        yanchor: right ? "top" : "bottom", showarrow: false,
                        text: text + " " + Math.round(kw).toLocaleString("en") + " kW", font: {color: color, size: 11}});
    };
    level(c.target_kw, "planner's target", "#b00020");
    level(c.billed_peak_kw, "billed peak so far", "#6b4c00", true);
    for (const a of c.actions) {
      shapes.push({type: "line", x0: a.time, x1: a.time, yref: "paper", y0: 0, y1: 1, line: {color: "#7a4fbf", width: 1}});
      annotations.push({x: a.time, yref: "paper", y: 1, yanchor: "bottom", showarrow: false, text: "▼",
                        hovertext: a.label + " (" + a.verdict + ")", font: {color: "#7a4fbf"}});
    }
    const layout = {margin: {l: 70, r: 20, t: 30, b: 50}, height: 360, legend: {orientation: "h", y: -0.2},
                    xaxis: {title: {text: "time (" + c.tz + ")"}}, yaxis: {title: {text: "power (kW)"}, rangemode: "tozero"},
                    shapes: shapes, annotations: annotations, hovermode: "x unified"};
    window.Plotly.react(holder, traces, layout, {displayModeBar: false, responsive: true});
    holder.dataset.points = String(c.time.length + c.forecast.time.length);
  }

  const page = document.body.dataset.events;
  if (page && window.EventSource) {
    const seen = document.body.dataset.digest || "";
    const stream = new EventSource("/events?page=" + encodeURIComponent(page) + "&seen=" + encodeURIComponent(seen));
    stream.addEventListener("live", (event) => {
      live.innerHTML = event.data;  // the server's rendering, every text escaped
      drawChart();
    });
    stream.addEventListener("logout", () => { stream.close(); window.location.assign("/login"); });
    stream.onopen = () => { if (linkState) linkState.textContent = "(live)"; };
    stream.onerror = () => { if (linkState) linkState.textContent = "(reconnecting…)"; };
  }

  document.addEventListener("submit", async (event) => {
    const form = event.target;
    if (!form.classList.contains("live-post")) return;
    event.preventDefault();
    const body = new URLSearchParams(new FormData(form, event.submitter));
    for (const button of form.querySelectorAll("button")) button.disabled = true;
    let answer;
    try {
      const resp = await fetch(form.action, {method: "POST", body: body, credentials: "same-origin",
                                             headers: {"Accept": "application/json"}});
      answer = await resp.json().catch(() => ({error: "The NOC answered " + resp.status + "."}));
    } catch (err) {
      answer = {error: "The NOC did not answer: " + err};
    }
    flash(answer.notice, answer.error);
    if (answer.error) for (const button of form.querySelectorAll("button")) button.disabled = false;
    else form.classList.add("sent");
  });

  document.addEventListener("DOMContentLoaded", drawChart);
  if (document.readyState !== "loading") drawChart();
})();
