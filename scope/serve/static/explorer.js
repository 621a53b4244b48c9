// The explorer's front page: features per token, search, and default vs steered generation.
"use strict";

const state = { data: null, shadedBy: null, steering: [] };
const $ = (id) => document.getElementById(id);

async function loadModels() {
  try {
    const models = await api("/v1/models");
    const saes = models.data.filter((m) => m.object === "sae");
    $("model-name").textContent = models.data[0].id;
    $("sae").innerHTML = saes.map((s) => `<option value="${esc(s.id)}">${esc(s.id)} (${esc(s.hook)}, ${s.d_sae})</option>`).join("");
  } catch (err) {
    $("features-error").textContent = "Could not list the model and SAEs: " + err.message;
  }
}

function featureRow(sae, item, extra) {
  return `<div class="feat" data-feature="${item.feature}">
    <span class="act">${extra}</span>
    <a class="feature-link" href="/feature/${encodeURIComponent(sae)}/${item.feature}">#${item.feature}</a>
    ${noteHtml(item)}
    <button class="shade-by" data-feature="${item.feature}" title="shade the tokens by this feature">shade</button>
    <button class="add-steer" data-sae="${esc(sae)}" data-feature="${item.feature}">steer</button></div>`;
}

async function showFeatures() {
  $("features-error").textContent = "";
  const text = $("prompt").value;
  if (!text.trim()) { $("features-error").textContent = "Type a prompt first."; return; }
  try {
    state.data = await api("/api/features", {
      text, sae: $("sae").value || null, k: Number($("k").value) || 5,
      dense: $("show-dense").checked, rank_by: $("rank-by").value,
    });
  } catch (err) { $("features-error").textContent = err.message; return; }
  $("dense-note").textContent = state.data.dense.note;
  state.shadedBy = null;
  renderTokens();
  renderSummary();
}

function tokenValue(token) {
  if (state.shadedBy === null) return token.features.length ? token.features[0].activation : 0;
  return state.data.activations[String(state.shadedBy)][token.position];
}

function renderTokens() {
  const tokens = state.data.tokens;
  const max = Math.max(1e-9, ...tokens.map(tokenValue));
  $("tokens").innerHTML = tokens.map((t) =>
    `<span class="tok" data-position="${t.position}" data-act="${tokenValue(t).toFixed(4)}" style="background:${shade(tokenValue(t), max)}"
      title="${esc(t.token)}: ${tokenValue(t).toFixed(3)}">${esc(shownToken(t.token))}</span>`).join("");
  $("shading").textContent = state.shadedBy === null
    ? "Shaded by each token's strongest feature. Click a token for its features."
    : `Shaded by feature #${state.shadedBy}. Click a token for its features.`;
}

function renderSummary() {
  const best = new Map();
  for (const t of state.data.tokens) for (const f of t.features)
    if (!best.has(f.feature) || best.get(f.feature).activation < f.activation) best.set(f.feature, f);
  const items = [...best.values()].sort((a, b) => b.activation - a.activation).slice(0, 20);
  $("token-features").innerHTML = `<h2>Strongest features in the prompt</h2>` +
    (items.length ? items.map((f) => featureRow(state.data.sae, f, f.activation.toFixed(2))).join("") : `<p class="muted">No feature fires.</p>`);
}

function renderToken(position) {
  const token = state.data.tokens[position];
  document.querySelectorAll(".tok").forEach((el) => el.classList.toggle("selected", Number(el.dataset.position) === position));
  $("token-features").innerHTML = `<h2>Token ${position}: ${esc(JSON.stringify(token.token))}</h2>` +
    (token.features.length ? token.features.map((f) => featureRow(state.data.sae, f, f.activation.toFixed(2))).join("")
      : `<p class="muted">No feature fires here${position === 0 ? " (BOS is never encoded)" : ""}.</p>`);
}

async function runSearch(body) {
  $("search-error").textContent = "";
  $("search-results").innerHTML = "";
  try {
    const data = await api("/api/search", { sae: $("sae").value || null, ...body });
    $("search-results").innerHTML = data.results.length
      ? data.results.map((r) => featureRow(data.sae, r, r.score !== undefined ? Number(r.score).toFixed(3) : "")).join("")
      : `<p class="muted">No feature found.</p>`;
  } catch (err) { $("search-error").textContent = err.message; }
}

function lines(id) { return $(id).value.split("\n").map((s) => s.trim()).filter(Boolean); }

function addSteer(sae, feature) {
  if (!state.steering.some((s) => s.sae === sae && s.feature === feature))
    state.steering.push({ sae, feature, mode: "add", value: 8, unit: "act" });
  renderSteering();
}

function renderSteering() {
  if (!state.steering.length) { $("steer-list").innerHTML = `<p class="muted">Add features with the "steer" buttons above.</p>`; return; }
  $("steer-list").innerHTML = state.steering.map((s, i) => `<div class="steer-item" data-index="${i}">
    <b>${esc(s.sae)} #${s.feature}</b>
    <select class="mode">${["add", "clamp", "scale", "ablate"].map((m) => `<option${m === s.mode ? " selected" : ""}>${m}</option>`).join("")}</select>
    strength <input class="value" type="number" step="any" value="${s.value}">
    <select class="unit">${["act", "max"].map((u) => `<option${u === s.unit ? " selected" : ""}>${u}</option>`).join("")}</select>
    <button class="remove">remove</button></div>`).join("");
}

function readSteering() {
  document.querySelectorAll(".steer-item").forEach((el) => {
    const s = state.steering[Number(el.dataset.index)];
    s.mode = el.querySelector(".mode").value;
    s.value = Number(el.querySelector(".value").value);
    s.unit = el.querySelector(".unit").value;
  });
  return state.steering.map((s) => {
    const item = { sae: s.sae, feature: s.feature, mode: s.mode };
    if (s.mode !== "ablate") item.value = s.value;
    if (s.mode === "clamp") item.unit = s.unit;
    return item;
  });
}

async function stream(body, output) {
  output.textContent = "";
  const response = await fetch("/v1/completions", { method: "POST", headers: headers(), body: JSON.stringify({ ...body, stream: true }) });
  if (!response.ok) {
    const data = await response.json().catch(() => ({}));
    throw new Error((data.error && data.error.message) || response.statusText);
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const line = buffer.slice(0, cut).trim();
      buffer = buffer.slice(cut + 2);
      if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
      const chunk = JSON.parse(line.slice(6));
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.choices.length) output.textContent += chunk.choices[0].text;
    }
  }
  output.dataset.done = "true";
}

async function generate() {
  $("generate-error").textContent = "";
  const prompt = $("prompt").value;
  const body = { prompt, max_tokens: Number($("max-tokens").value) || 32, temperature: Number($("temperature").value) || 0 };
  const steering = { positions: $("positions").value, interventions: readSteering() };
  for (const id of ["default-output", "steered-output"]) delete $(id).dataset.done;
  try {
    await Promise.all([
      stream(body, $("default-output")),
      stream({ ...body, steering }, $("steered-output")),
    ]);
  } catch (err) { $("generate-error").textContent = err.message; }
}

document.addEventListener("click", (event) => {
  const target = event.target;
  if (target.classList.contains("tok")) renderToken(Number(target.dataset.position));
  else if (target.classList.contains("shade-by")) { state.shadedBy = Number(target.dataset.feature); renderTokens(); }
  else if (target.classList.contains("add-steer")) addSteer(target.dataset.sae, Number(target.dataset.feature));
  else if (target.classList.contains("remove")) { readSteering(); state.steering.splice(Number(target.closest(".steer-item").dataset.index), 1); renderSteering(); }
});
$("show").addEventListener("click", showFeatures);
$("search").addEventListener("click", () => runSearch({ query: $("query").value }));
$("contrast").addEventListener("click", () => runSearch({ positive: lines("positive"), negative: lines("negative") }));
$("generate").addEventListener("click", generate);
$("sae").addEventListener("change", () => { if (state.data) showFeatures(); });
setupKeyField(() => { $("features-error").textContent = ""; loadModels(); });
loadModels();
