// A feature page: label, statistics, top examples, histogram, logit lens, Neuronpedia link.
"use strict";

// /feature/{sae}/{feature}: the SAE's name may itself hold "/" (a Gemma Scope release/id).
const pathParts = location.pathname.split("/").slice(2).map(decodeURIComponent);
const featureText = pathParts.pop();
const saeName = pathParts.join("/");

function exampleHtml(e, max) {
  const where = e.text_id !== undefined ? ` title="document ${e.text_id}, token ${e.position}"` : "";
  if (e.tokens) {
    const spans = e.tokens.map((t, i) => `<span class="tok" title="activation ${e.acts[i].toFixed(3)}" style="background:${shade(e.acts[i], max)}">${esc(shownToken(t))}</span>`).join("");
    return `<div class="example"><span class="muted"${where}>${e.activation.toFixed(2)}</span> ${spans}</div>`;
  }
  return `<div class="example"><span class="muted"${where}>${e.activation.toFixed(2)}</span> ${esc(e.context)}</div>`;
}

function examplesHtml(examples) {
  if (!examples.length) return `<p class="muted">No mined examples on this server (start it with --mined PATH from scope examples).</p>`;
  // shaded against the feature's largest activation shown, so weaker examples look weaker
  const max = Math.max(1e-9, ...examples.map((e) => e.activation));
  return examples.map((e) => exampleHtml(e, max)).join("");
}

function intervalsHtml(intervals, examples) {
  if (!intervals || !intervals.length) return "";
  const max = Math.max(1e-9, ...examples.map((e) => e.activation), ...intervals.flatMap((g) => g.examples.map((e) => e.activation)));
  return intervals.map((g) => {
    const [lo, hi] = g.quantiles.map((q) => Math.round(100 * q));
    const title = `Interval ${g.low.toPrecision(3)} to ${g.high === null ? "max" : g.high.toPrecision(3)} <span class="muted">(${lo}-${hi}% of non-zero activations; ${g.examples.length} of ${g.seen.toLocaleString()} windows)</span>`;
    const body = g.examples.length ? g.examples.map((e) => exampleHtml(e, max)).join("") : `<p class="muted">No window peaks in this interval besides the top examples.</p>`;
    return `<h3>${title}</h3>${body}`;
  }).join("");
}

function lensHtml(lens) {
  return ["promoted", "suppressed"].map((d) => `<table class="lens"><tr><th colspan=2>${d}</th></tr>` +
    lens[d].map((r) => `<tr><td>${esc(JSON.stringify(r.token))}</td><td>${r.logit >= 0 ? "+" : ""}${r.logit.toFixed(3)}</td></tr>`).join("") + "</table>").join("");
}

function drawHistogram(data) {
  const target = document.getElementById("histogram");
  if (!data.histogram) {
    const q = ["quantile_0.5", "quantile_0.9", "quantile_0.99"].filter((k) => k in data.stats);
    if (!q.length) { target.innerHTML = `<p class="muted">No activation histogram on this server (mine a corpus: --mined).</p>`; return; }
    Plotly.newPlot(target, [{ type: "bar", x: q.map((k) => k.replace("quantile_", "q")), y: q.map((k) => data.stats[k]), marker: { color: "rgb(255,127,14)" } }],
      { title: "Activation quantiles (over tokens where the feature fires)", height: 300, margin: { l: 50, r: 20, t: 40, b: 40 } }, { displayModeBar: false });
    return;
  }
  const { edges, counts } = data.histogram;
  const used = counts.map((c, i) => i).filter((i) => counts[i] > 0);
  Plotly.newPlot(target, [{ type: "bar", x: used.map((i) => Math.sqrt(edges[i] * edges[i + 1])), y: used.map((i) => counts[i]), marker: { color: "rgb(255,127,14)" } }],
    { title: "Non-zero activations", xaxis: { type: "log", title: "activation" }, yaxis: { title: "tokens" }, height: 300, margin: { l: 50, r: 20, t: 40, b: 40 } }, { displayModeBar: false });
}

async function load() {
  setupKeyField(() => location.reload());
  document.getElementById("title").textContent = `Feature ${featureText} of ${saeName}`;
  let data;
  try { data = await api(`/api/feature/${encodeURIComponent(saeName)}/${encodeURIComponent(featureText)}`); }
  catch (err) { document.getElementById("feature-error").textContent = err.message; return; }
  const s = data.stats;
  const density = data.density !== undefined ? data.density : s.density;
  const parts = [`SAE <code>${esc(data.sae)}</code> at <code>${esc(data.hook)}</code>, width ${data.d_sae}`];
  if (density !== undefined) parts.push(`density <b>${density.toExponential(3)}</b>`);
  if (s.max_activation !== undefined) parts.push(`max activation <b>${s.max_activation.toFixed(3)}</b>`);
  if (data.neuronpedia) parts.push(`<a href="${esc(data.neuronpedia)}">Neuronpedia</a>`);
  if (data.dense && data.dense.is_dense)
    parts.push(`<b class="dense">dense</b>: fires on over ${(100 * data.dense.threshold).toFixed(0)}% of tokens, so token views hide it unless asked`);
  document.getElementById("meta").innerHTML = parts.join(" · ");
  document.getElementById("label").innerHTML = (data.label ? `<b>Label:</b> ${esc(data.label)}` : `<span class="muted">No label on this server.</span>`) +
    (data.concept ? `<br><b>Concept</b> (derived from WordNet): ${esc(data.concept)}` : "") +
    (data.explanation ? `<br><b>Explanation:</b> ${esc(data.explanation)}` : "");
  document.getElementById("examples").innerHTML = examplesHtml(data.examples);
  document.getElementById("intervals").innerHTML = intervalsHtml(data.intervals, data.examples);
  if (data.examples_source) document.getElementById("examples-source").textContent = `Examples ${data.examples_source}.`;
  document.getElementById("lens").innerHTML = lensHtml(data.logit_lens);
  drawHistogram(data);
  document.body.dataset.loaded = "true";
}

load();
