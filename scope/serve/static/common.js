// Shared by the explorer pages: API calls (with the optional API key), token shading, escaping.
"use strict";

const SHADE = [255, 127, 14]; // plotly's orange, as in scope's feature pages

function apiKey() { return localStorage.getItem("scope-api-key") || ""; }

function headers() {
  const h = { "Content-Type": "application/json" };
  if (apiKey()) h["Authorization"] = "Bearer " + apiKey();
  return h;
}

async function api(path, body) {
  const options = body === undefined ? { headers: headers() } : { method: "POST", headers: headers(), body: JSON.stringify(body) };
  const response = await fetch(path, options);
  const data = await response.json().catch(() => ({ error: { message: response.statusText } }));
  if (!response.ok) throw new Error((data.error && data.error.message) || response.statusText);
  return data;
}

function esc(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

function shade(value, max) {
  const alpha = max > 0 ? Math.max(0, Math.min(1, value / max)) : 0;
  return `rgba(${SHADE[0]},${SHADE[1]},${SHADE[2]},${alpha.toFixed(3)})`;
}

function shownToken(token) { return token.replace(/\n/g, "↵\n") || "\u200b"; }

function noteHtml(item) {
  const concept = item.concept ? ` <span class="concept" title="derived from WordNet: what the peak words share">≈ ${esc(item.concept)}</span>` : "";
  if (item.label) return `<span class="label">${esc(item.label)}</span>${concept}`;
  if (item.promotes && item.promotes.length)
    return `<span class="hint">promotes ${item.promotes.map((t) => esc(JSON.stringify(t))).join(", ")}</span>`;
  return "";
}

function setupKeyField(onChange) {
  const field = document.getElementById("api-key");
  if (!field) return;
  field.value = apiKey();
  field.addEventListener("change", () => {
    localStorage.setItem("scope-api-key", field.value.trim());
    if (onChange) onChange();
  });
}
