// cxr-triage web page: every request goes to this same service; no asset comes from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { key: sessionStorage.getItem("cxr-api-key") || "", info: null, grey: null };

function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (state.key) h["X-API-Key"] = state.key;
  return h;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function askForKey(message) {
  $("key-section").hidden = false;
  showError(message || "This service needs an API key: enter it above.");
  $("api-key").focus();
}

async function call(path, body) {
  const init = { method: "POST", headers: headers() };
  if (body instanceof FormData) init.body = body;
  else { init.body = JSON.stringify(body || {}); init.headers["Content-Type"] = "application/json"; }
  const response = await fetch(path, init);
  let data = null;
  try { data = await response.json(); } catch (e) { data = null; }
  if (response.status === 401) {
    askForKey((data && data.error) || "API key missing or wrong.");
    throw new Error("unauthorized");
  }
  if (!response.ok) {
    const reason = data && data.reason ? ` (${data.reason})` : "";
    const message = (data && data.error) || `the service answered ${response.status}`;
    const err = new Error(message + reason);
    err.shown = true;
    throw err;
  }
  return data;
}

async function loadModel() {
  try {
    state.info = await call("/model_info", {});
  } catch (e) {
    return;
  }
  $("key-section").hidden = true;
  $("model-tag").textContent = state.info.model_tag;
  $("model-card").textContent = state.info.model_card || "No model card in this package.";
}

function pct(x) { return (100 * x).toFixed(1) + "%"; }

function drawGrey() {
  const canvas = $("image");
  if (!state.grey) return;
  const { width, height, data } = state.grey;
  canvas.width = width; canvas.height = height;
  const ctx = canvas.getContext("2d");
  const out = ctx.createImageData(width, height);
  const level = Number($("level").value), win = Number($("width").value);
  const low = level - win / 2;
  for (let i = 0; i < data.length; i += 4) {
    let v = ((data[i] - low) / win) * 255;
    v = v < 0 ? 0 : v > 255 ? 255 : v;
    out.data[i] = out.data[i + 1] = out.data[i + 2] = v;
    out.data[i + 3] = 255;
  }
  ctx.putImageData(out, 0, 0);
}

function loadGrey(url) {
  return new Promise((resolve) => {
    const img = new Image();
    img.onload = () => {
      const c = document.createElement("canvas");
      c.width = img.naturalWidth; c.height = img.naturalHeight;
      const ctx = c.getContext("2d");
      ctx.drawImage(img, 0, 0);
      state.grey = ctx.getImageData(0, 0, c.width, c.height);
      drawGrey();
      resolve();
    };
    img.src = url;
  });
}

function showPrediction(p) {
  $("label").textContent = p.label;
  $("prob").textContent = p.prob_abnormal.toFixed(3);
  $("prob").dataset.value = String(p.prob_abnormal);
  $("threshold").textContent = p.threshold.toFixed(3);
  $("threshold-mark").style.left = `calc(${pct(p.threshold)} - 1px)`;
  $("prob-mark").style.left = `calc(${pct(p.prob_abnormal)} - 3px)`;
  const op = state.info && state.info.operating_point;
  $("operating").textContent = op
    ? `At this threshold (${op.policy}): sensitivity ${pct(op.sensitivity)}, specificity ${pct(op.specificity)} on the development data.`
    : "";
  const qc = p.qc;
  $("qc").textContent = qc ? `Quality gate: ${qc.status}` + (qc.failed.length ? ` (${qc.failed.join(", ")})` : "") : "Quality gate: not run";
  const list = $("qc-list");
  list.replaceChildren();
  for (const c of (qc ? qc.checks : [])) {
    if (c.passed) continue;
    const li = document.createElement("li");
    li.textContent = `${c.name} (${c.action}): ${c.message}`;
    list.appendChild(li);
  }
}

function showSimilar(s) {
  const list = $("similar");
  list.replaceChildren();
  for (const c of s.cases) {
    const li = document.createElement("li");
    if (c.thumbnail) {
      const img = document.createElement("img");
      img.src = c.thumbnail;
      img.alt = `similar case ${c.rank}: ${c.label}`;
      li.appendChild(img);
    }
    const text = document.createElement("span");
    text.className = "case";
    text.textContent = `${c.label}` + (c.findings.length ? ` (${c.findings.join(", ")})` : "") + `, distance ${c.distance.toFixed(3)}`;
    li.appendChild(text);
    list.appendChild(li);
  }
}

async function analyse(file) {
  showError("");
  $("result").hidden = true;
  $("status").textContent = `Scoring ${file.name}...`;
  const form = () => { const f = new FormData(); f.append("image", file, file.name); return f; };
  try {
    if (!state.info) await loadModel();
    const prediction = await call("/predict", form());
    showPrediction(prediction);
    $("status").textContent = "Explaining...";
    const explained = await call("/explain", form());
    await loadGrey(explained.image_png);
    $("heatmap").src = explained.heatmap_png;
    $("method").textContent = `${explained.method}: ${explained.reason}`;
    $("caption").textContent = `${file.name}, ${explained.cols} x ${explained.rows} px`;
    $("result").hidden = false;
    $("status").textContent = "Finding similar cases...";
    showSimilar(await call("/similar", form()));
    $("status").textContent = `Done: ${file.name}.`;
  } catch (e) {
    $("status").textContent = "";
    if (e.message !== "unauthorized") showError(`${file.name}: ${e.message}`);
  }
}

function init() {
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault(); drop.classList.remove("over");
    if (e.dataTransfer.files.length) analyse(e.dataTransfer.files[0]);
  });
  $("file").addEventListener("change", (e) => { if (e.target.files.length) analyse(e.target.files[0]); });
  $("opacity").addEventListener("input", (e) => { $("heatmap").style.opacity = e.target.value / 100; });
  $("overlay-on").addEventListener("change", (e) => { $("heatmap").hidden = !e.target.checked; });
  $("level").addEventListener("input", drawGrey);
  $("width").addEventListener("input", drawGrey);
  $("heatmap").style.opacity = 0.5;
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    state.key = $("api-key").value.trim();
    sessionStorage.setItem("cxr-api-key", state.key);
    showError("");
    loadModel();
  });
  loadModel();
}

init();
