"use strict";
// The web page: collections, upload, search, results with thumbnails and heat maps.
//
// File names, collection names, page text and error messages come from whoever uploaded or named them:
// every one goes into the page as text (textContent, text nodes), never as HTML. The page is served with
// a Content-Security-Policy that allows no inline script, so this file is the only script it runs.

const $ = (id) => document.getElementById(id);
const apiKey = () => $("apikey").value.trim();
const keyHeader = () => (apiKey() ? { "X-API-Key": apiKey() } : {});

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path, opts = {}) {
  const r = await fetch(path, { ...opts, headers: { ...keyHeader(), ...(opts.headers || {}) } });
  const body = r.headers.get("content-type")?.includes("json") ? await r.json() : null;
  if (!r.ok) throw new ApiError(r.status, body ? `${body.code}: ${body.detail}` : `${r.status} ${r.statusText}`);
  return body;
}

function show(el, message, isError = false) {
  el.textContent = message;
  el.classList.toggle("err", isError);
}

const hint = (message) => show($("hint"), message);

async function imageURL(path) {  // fetched with the key header, shown as a blob URL
  const r = await fetch(path, { headers: keyHeader() });
  return r.ok ? URL.createObjectURL(await r.blob()) : "";
}

// The chosen collection's API path, or null (then `el` says what to do) — never `/v1/collections//…`.
function collectionPath(el) {
  const name = $("collection").value;
  if (!name) {
    show(el, "Choose a collection first, or create one (top of the page).", true);
    return null;
  }
  return `/v1/collections/${encodeURIComponent(name)}`;
}

let listing = 0;
async function loadCollections(select) {
  const ticket = ++listing;  // answers for an older key that arrive late are dropped
  let cols;
  try {
    cols = await api("/v1/collections");
  } catch (e) {
    if (ticket !== listing) return;
    $("collection").replaceChildren();
    if (e.status === 401) {
      hint(apiKey() ? "This API key is not valid: check it and type it again."
        : "This server needs an API key: type it in the API key box at the top right.");
    } else {
      hint(`The collections could not be listed (${e.message}).`);
    }
    return;
  }
  if (ticket !== listing) return;
  const sel = $("collection");
  const keep = select ?? sel.value;
  sel.replaceChildren(...cols.map((c) => {
    const option = document.createElement("option");
    option.value = c.name;
    option.textContent = c.name;
    return option;
  }));
  if (cols.some((c) => c.name === keep)) sel.value = keep;
  if (!cols.length) {
    hint("No collections yet. Type a name in “new collection” and press create, then upload PDFs, "
      + "images or videos and search them.");
  } else if (!cols.find((c) => c.name === sel.value).documents) {
    hint("This collection is empty: choose files below and press “upload & ingest”, then search.");
  } else {
    hint("");
  }
}

let keyTimer;
function keyChanged(delay) {
  clearTimeout(keyTimer);
  keyTimer = setTimeout(() => loadCollections(), delay);
}
$("apikey").addEventListener("input", () => keyChanged(400));
$("apikey").addEventListener("change", () => keyChanged(0));
$("apikey").addEventListener("keydown", (ev) => { if (ev.key === "Enter") keyChanged(0); });
$("collection").addEventListener("change", () => loadCollections());

$("create").addEventListener("click", async () => {
  const name = $("newname").value.trim();
  if (!name) {
    show($("status"), "Type a name for the new collection first.", true);
    return;
  }
  try {
    await api("/v1/collections", {
      method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ name }),
    });
    $("newname").value = "";
    show($("status"), `Created collection ${name}.`);
    await loadCollections(name);
  } catch (e) {
    show($("status"), e.message, true);
  }
});

$("upload").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const path = collectionPath($("job"));
  if (!path) return;
  if (!$("files").files.length) {
    show($("job"), "Choose one or more files first.", true);
    return;
  }
  const form = new FormData();
  for (const f of $("files").files) form.append("files", f);
  try {
    let job = await api(`${path}/documents`, { method: "POST", body: form });
    while (job.status === "queued" || job.status === "running") {
      // Pages and frames: the total grows as each file is opened.
      show($("job"), `job ${job.id}: ${job.status} · ${job.units_done}/${job.units_total} pages/frames`
        + ` · file ${Math.min(job.progress + 1, job.total)} of ${job.total}`);
      await new Promise((r) => setTimeout(r, 700));
      job = await api(`/v1/jobs/${job.id}`);
    }
    const lines = job.documents.map((d) => `${d.filename}: ${d.status}${d.error ? " — " + d.error : ""}`);
    show($("job"), [`job ${job.id}: ${job.status}`, ...lines].join("\n"), job.status === "failed");
    await loadCollections();
  } catch (e) {
    show($("job"), e.message, true);
  }
});

function hitCard(h, query) {
  const card = document.createElement("div");
  card.className = "hit";
  const img = document.createElement("img");
  img.alt = "";
  const meta = document.createElement("div");
  meta.className = "meta";
  const name = document.createElement("b");
  name.className = "document";
  name.textContent = h.document;
  const where = h.page ? `page ${h.page}`
    : h.t_start != null ? `${h.t_start.toFixed(1)}–${h.t_end.toFixed(1)} s` : h.kind;
  const heat = document.createElement("a");
  heat.href = "#";
  heat.className = "heat";
  heat.textContent = "heat map";
  meta.append(name, ` · ${where} · ${h.score.toFixed(3)} · `, heat);
  const text = document.createElement("div");
  text.className = "text";
  text.textContent = h.text;
  card.append(img, meta, text);
  const unit = Number(h.unit_id);
  imageURL(`/v1/units/${unit}/thumbnail`).then((u) => { if (u) img.src = u; });
  // The heat map: the page image with the patch-grid cells that match a query token tinted; a second
  // click goes back to the thumbnail.
  let thumb = null;
  heat.addEventListener("click", async (ev) => {
    ev.preventDefault();
    if (thumb) {
      img.src = thumb;
      thumb = null;
      heat.textContent = "heat map";
      return;
    }
    const u = await imageURL(`/v1/units/${unit}/heatmap?query=${encodeURIComponent(query)}`);
    if (u) {
      thumb = img.src;
      img.src = u;
      heat.textContent = "thumbnail";
    }
  });
  return card;
}

$("search").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const path = collectionPath($("status"));
  if (!path) return;
  const query = $("query").value;
  try {
    const res = await api(`${path}/search`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ query, top_k: Number($("topk").value) || 12 }),
    });
    show($("status"), `${res.hits.length} hits from ${res.units_searched} units in ${res.took_ms.toFixed(1)} ms`);
    $("results").replaceChildren(...res.hits.map((h) => hitCard(h, query)));
  } catch (e) {
    show($("status"), e.message, true);
  }
});

// The chosen collection's latest evaluation: its table (one row per configuration) and picture.
const EVAL_COLUMNS = ["config", "ndcg@10", "mrr@10", "recall@10", "recall@100", "map", "exact_recall@10",
  "p50_ms", "p95_ms", "bytes_per_page", "ram_bytes_per_page"];

function cell(tag, text) {
  const el = document.createElement(tag);
  el.textContent = text;
  return el;
}

async function loadEvaluation() {
  const path = collectionPath($("evalstatus"));
  if (!path) return;
  $("evaltable").replaceChildren();
  $("evalplot").removeAttribute("src");
  try {
    const list = await api(`${path}/evaluations`);
    if (!list.length) {
      show($("evalstatus"), "No evaluation of this collection yet.");
      return;
    }
    const ev = list[0];
    const when = ev.finished_at || ev.created_at;
    show($("evalstatus"), `evaluation ${ev.id}: ${ev.status}${ev.error ? " — " + ev.error : ""}, `
      + `${ev.queries ?? "?"} queries, ${when}`, ev.status === "failed");
    if (ev.status !== "succeeded") return;
    const head = document.createElement("tr");
    head.append(...EVAL_COLUMNS.map((c) => cell("th", c)));
    const rows = ev.rows.map((r) => {
      const tr = document.createElement("tr");
      tr.append(...EVAL_COLUMNS.map((c) => cell("td",
        typeof r[c] === "number" ? (Number.isInteger(r[c]) ? String(r[c]) : r[c].toFixed(3)) : String(r[c]))));
      if (r.config === ev.best) tr.className = "best";
      return tr;
    });
    $("evaltable").replaceChildren(head, ...rows);
    const u = await imageURL(`/v1/evaluations/${Number(ev.id)}/plot`);
    if (u) $("evalplot").src = u;
  } catch (e) {
    show($("evalstatus"), e.message, true);
  }
}

$("evalload").addEventListener("click", loadEvaluation);

loadCollections();
