// vtsearch's web page: search by text or image, look at a result with the regions the
// fusion scorer attended to for each query word, and describe an image with texts.
// Plain DOM code, no build step, nothing loaded from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { index: null, lastText: null, viewed: null, attention: null };

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST",
    body: body instanceof FormData ? body : JSON.stringify(body),
    headers: body instanceof FormData ? {} : { "Content-Type": "application/json" },
  };
  const response = await fetch(path, options);
  const data = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
  return data;
}

function say(element, text, isError = false) {
  element.textContent = text;
  element.classList.toggle("error", isError);
}

// ---- indexes

async function loadIndexes() {
  const info = await api("/api/info");
  const select = $("index");
  for (const index of info.indexes) {
    const option = document.createElement("option");
    option.value = index.name;
    option.textContent = `${index.name} (${index.images} images)`;
    select.append(option);
  }
  state.index = select.value;
  select.addEventListener("change", () => { state.index = select.value; $("results").replaceChildren(); });
}

// ---- search

async function search(fields) {
  const status = $("status");
  say(status, "searching…");
  try {
    let data;
    const common = { index: state.index, k: Number($("k").value), rerank: $("rerank").checked };
    const filters = chosenFilters();
    if (filters) common.filters = filters;
    if (fields.file) {
      const form = new FormData();
      for (const [key, value] of Object.entries(common)) {
        form.append(key, typeof value === "object" ? JSON.stringify(value) : String(value));
      }
      form.append("image", fields.file);
      data = await api("/api/search", form);
    } else {
      data = await api("/api/search", { ...common, ...fields });
    }
    state.lastText = fields.text || null;
    showResults(data);
    const took = Object.values(data.timings_ms).reduce((a, b) => a + b, 0);
    const how = data.reranked ? "reranked" : "stage 1 order";
    say(status, `${data.results.length} results, ${how}, ${took.toFixed(0)} ms` +
        (data.notices.length ? ` — ${data.notices.join("; ")}` : ""));
  } catch (error) {
    say(status, error.message, true);
  }
}

// The filter fields that are filled in, as the API's ``filters`` object (or null).
function chosenFilters() {
  const filters = {};
  const text = (id) => $(id).value.trim();
  if (text("f-path-prefix")) filters.path_prefix = text("f-path-prefix");
  if (text("f-glob")) filters.glob = text("f-glob");
  if (text("f-formats")) filters.formats = text("f-formats").split(/[\s,]+/).filter(Boolean);
  if (text("f-min-width")) filters.min_width = Number(text("f-min-width"));
  if (text("f-min-height")) filters.min_height = Number(text("f-min-height"));
  if (text("f-modified-after")) filters.modified_after = text("f-modified-after");
  if (text("f-modified-before")) filters.modified_before = text("f-modified-before");
  return Object.keys(filters).length ? filters : null;
}

function showResults(data) {
  const grid = $("results");
  grid.replaceChildren(...data.results.map((result) => {
    const figure = document.createElement("figure");
    figure.className = "result";
    figure.tabIndex = 0;
    figure.dataset.id = result.id;
    const moved = result.stage1_rank !== result.rank ? ` (stage 1: #${result.stage1_rank})` : "";
    figure.title = `#${result.rank} score ${result.score.toFixed(4)}${moved}\n${result.path}`;
    const image = document.createElement("img");
    image.loading = "lazy";
    image.alt = result.path.split("/").pop();
    image.src = result.thumbnail;
    const caption = document.createElement("figcaption");
    caption.textContent = `#${result.rank} · ${result.score.toFixed(3)}${moved}`;
    figure.append(image, caption);
    figure.addEventListener("click", () => openViewer(result));
    figure.addEventListener("keydown", (event) => { if (event.key === "Enter") openViewer(result); });
    return figure;
  }));
}

// ---- one result, with the scorer's attention over its regions

async function openViewer(result) {
  state.viewed = result;
  state.attention = null;
  $("viewer").hidden = false;
  $("viewer").dataset.state = "loading";
  $("viewer-path").textContent = result.path;
  $("viewer-scores").textContent =
    `rank ${result.rank} · score ${result.score.toFixed(4)} · stage 1 ${result.stage1_score.toFixed(4)} (#${result.stage1_rank})`;
  $("viewer-original").href = result.url;
  $("tokens").replaceChildren();
  say($("viewer-note"), "");
  clearCanvas();
  const image = $("viewer-image");
  image.src = `${result.thumbnail}&size=1024`;
  await image.decode().catch(() => {});
  fitImage(image);
  if (!state.lastText) {
    say($("viewer-note"), "Search by text to see where the scorer looks for each word.");
    $("viewer").dataset.state = "ready";
    return;
  }
  try {
    const attention = await api("/api/explain", { index: state.index, image_id: result.id, text: state.lastText });
    if (state.viewed !== result) return;
    state.attention = attention;
    showTokens(attention);
    if (!attention.reranks) {
      say($("viewer-note"),
          "This index's scorer does not change the order yet (untrained, or trained to weight 0): " +
          "its attention is shown as it is.");
    }
    $("viewer").dataset.state = "ready";
  } catch (error) {
    say($("viewer-note"), error.message, true);
    $("viewer").dataset.state = "error";
  }
}

// Show the image as large as the viewer allows (small images scaled up too), at its own
// aspect ratio, so the attention canvas can lie exactly over it.
function fitImage(image) {
  const boxWidth = Math.min(window.innerWidth * 0.6, 640);
  const boxHeight = window.innerHeight * 0.8;
  const scale = Math.min(boxWidth / (image.naturalWidth || 1), boxHeight / (image.naturalHeight || 1));
  image.style.width = `${Math.round(image.naturalWidth * scale)}px`;
  image.style.height = `${Math.round(image.naturalHeight * scale)}px`;
}

function showTokens(attention) {
  const chips = [];
  attention.tokens.forEach((token, position) => {
    if (position === 0) return; // the start token says nothing about the query
    const chip = document.createElement("button");
    chip.type = "button";
    chip.className = "token";
    chip.dataset.position = position;
    const last = position === attention.tokens.length - 1;
    chip.textContent = last ? "whole text" : token;
    chip.title = last ? "the end-of-text token, which gives the match score" : `attention of "${token}"`;
    chip.addEventListener("click", () => selectToken(position));
    chips.push(chip);
  });
  $("tokens").replaceChildren(...chips);
  selectToken(attention.tokens.length > 2 ? 1 : attention.tokens.length - 1);
}

function selectToken(position) {
  for (const chip of $("tokens").children) chip.classList.toggle("active", Number(chip.dataset.position) === position);
  drawAttention(state.attention, position);
}

function clearCanvas() {
  const canvas = $("attention");
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  delete canvas.dataset.token;
}

// Light up where one token looked: regions it attended to stay bright, the others are
// dimmed in proportion (readable on any colours). The grid × grid weights become a tiny
// canvas that is scaled up smoothly over the part of the image the model sees
// (``crop``); what the model does not see is dimmed fully.
function drawAttention(attention, position) {
  const image = $("viewer-image");
  const canvas = $("attention");
  canvas.width = image.clientWidth;
  canvas.height = image.clientHeight;
  const context = canvas.getContext("2d");
  const weights = attention.weights[position];
  const grid = attention.grid;
  const peak = Math.max(...weights) || 1;
  const cells = document.createElement("canvas");
  cells.width = grid;
  cells.height = grid;
  const pixels = cells.getContext("2d").createImageData(grid, grid);
  weights.forEach((weight, region) => {
    pixels.data.set([0, 0, 0, Math.round(190 * (1 - weight / peak))], region * 4);
  });
  cells.getContext("2d").putImageData(pixels, 0, 0);
  const [x0, y0, x1, y1] = attention.crop;
  const left = x0 * canvas.width, top = y0 * canvas.height;
  const width = (x1 - x0) * canvas.width, height = (y1 - y0) * canvas.height;
  context.fillStyle = "rgba(0, 0, 0, 0.75)";
  context.fillRect(0, 0, canvas.width, canvas.height);
  context.clearRect(left, top, width, height);
  context.imageSmoothingEnabled = true;
  context.drawImage(cells, left, top, width, height);
  canvas.dataset.token = String(position);
}

function closeViewer() {
  $("viewer").hidden = true;
  state.viewed = null;
}

// ---- describe an image (image → text)

async function describe(fields) {
  const status = $("match-status");
  say(status, "matching…");
  try {
    const labels = $("labels").value.split("\n").map((line) => line.trim()).filter(Boolean);
    let data;
    if (fields.file) {
      const form = new FormData();
      form.append("index", state.index);
      form.append("image", fields.file);
      if (labels.length) form.append("labels", labels.join("\n"));
      data = await api("/api/match", form);
    } else {
      data = await api("/api/match", { index: state.index, image_id: fields.imageId, labels: labels.length ? labels : null });
    }
    $("match-results").replaceChildren(...data.results.map((result) => {
      const item = document.createElement("li");
      const score = document.createElement("span");
      score.className = "score";
      score.textContent = result.score.toFixed(4);
      item.append(result.text, score);
      return item;
    }));
    say(status, `${data.results.length} texts, ${data.reranked ? "reranked" : "stage 1 order"}`);
  } catch (error) {
    say(status, error.message, true);
  }
}

function preview(source) {
  const image = $("match-preview");
  image.src = source;
  image.hidden = false;
}

// ---- wiring

function showTab(name) {
  for (const tab of document.querySelectorAll(".tab")) tab.classList.toggle("active", tab.dataset.tab === name);
  $("search-tab").hidden = name !== "search";
  $("match-tab").hidden = name !== "match";
}

function acceptDrop(element, onFile) {
  element.addEventListener("dragover", (event) => { event.preventDefault(); element.classList.add("dragging"); });
  element.addEventListener("dragleave", () => element.classList.remove("dragging"));
  element.addEventListener("drop", (event) => {
    event.preventDefault();
    element.classList.remove("dragging");
    const file = event.dataTransfer.files[0];
    if (file) onFile(file);
  });
}

function start() {
  for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => showTab(tab.dataset.tab));
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("query").value.trim();
    if (text) search({ text });
  });
  $("query-image").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) search({ file });
  });
  acceptDrop($("query"), (file) => search({ file }));
  const matchFile = (file) => { preview(URL.createObjectURL(file)); describe({ file }); };
  $("match-image").addEventListener("change", (event) => { if (event.target.files[0]) matchFile(event.target.files[0]); });
  acceptDrop(document.querySelector("#match-form .drop"), matchFile);
  $("match-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const file = $("match-image").files[0];
    if (file) describe({ file });
  });
  $("viewer-close").addEventListener("click", closeViewer);
  $("viewer").addEventListener("click", (event) => { if (event.target === $("viewer")) closeViewer(); });
  document.addEventListener("keydown", (event) => { if (event.key === "Escape") closeViewer(); });
  $("more-like-this").addEventListener("click", () => {
    const id = state.viewed.id;
    closeViewer();
    $("query").value = "";
    search({ image_id: id });
  });
  $("describe-this").addEventListener("click", () => {
    const result = state.viewed;
    closeViewer();
    showTab("match");
    preview(result.thumbnail + "&size=512");
    describe({ imageId: result.id });
  });
  window.addEventListener("resize", () => {
    if (!$("viewer").hidden) fitImage($("viewer-image"));
    const active = document.querySelector(".token.active");
    if (state.attention && active) drawAttention(state.attention, Number(active.dataset.position));
  });
  loadIndexes().catch((error) => say($("status"), error.message, true));
}

document.addEventListener("DOMContentLoaded", start);
