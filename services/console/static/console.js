// offhours console: a client of the public /v1 API, in plain JavaScript (no build step).
//
// Rules this file keeps (docs/console.md, "Security"):
// - the API key lives only in this tab's sessionStorage and travels only as `Authorization: Bearer`;
// - every string from the server is put into the page with textContent, never parsed as HTML (the
//   Content-Security-Policy enforces it: Trusted Types make the HTML-parsing sinks throw);
// - live changes come from one Server-Sent Events stream per page, read with fetch() so the key can
//   ride in a header (EventSource cannot send one, and a key in its URL would land in logs).

const KEY_STORAGE = "offhours.apiKey";
const STATUSES = ["validating", "in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled"];
const TERMINAL = new Set(["completed", "failed", "expired", "cancelled"]);
// Where a batch can be in its life: the order a status never moves back from (docs/events.md).
const RANK = { validating: 0, failed: 1, in_progress: 1, cancelling: 2, finalizing: 2, cancelled: 3, expired: 3, completed: 3 };
const ENDPOINTS = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/chat/ds-test"];
const PURPOSES = ["batch", "user_data", "assistants", "vision", "fine-tune", "evals"];

// ---------------------------------------------------------------- DOM building: text only

function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "on") {
      for (const [type, fn] of Object.entries(value)) el.addEventListener(type, fn);
    } else if (name === "class") {
      el.className = value;
    } else if (name === "dataset") {
      Object.assign(el.dataset, value);
    } else if (name === "style") {
      throw new Error("inline styles are not allowed");
    } else if (name === "text") {
      el.textContent = String(value);
    } else if (value === true) {
      el.setAttribute(name, "");
    } else {
      el.setAttribute(name, String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function clear(el) {
  el.replaceChildren();
  return el;
}

const main = () => document.getElementById("main");

function fmtTime(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  const d = new Date(seconds * 1000);
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

function fmtBytes(n) {
  if (n < 1024) return `${n} B`;
  const units = ["KiB", "MiB", "GiB"];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return `${v.toFixed(1)} ${units[i]}`;
}

function statusBadge(status) {
  return h("span", { class: `status ${status}`, dataset: { status }, text: status });
}

// ---------------------------------------------------------------- the API

class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    super(err.message || `HTTP ${status}`);
    this.status = status;
    this.code = err.code || null;
    this.param = err.param || null;
  }
}

function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE);
}

async function api(method, path, { json, form, key, raw } = {}) {
  const headers = { Authorization: `Bearer ${key || apiKey() || ""}` };
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form !== undefined) {
    body = form;
  }
  const response = await fetch(path, { method, headers, body, credentials: "omit", cache: "no-store" });
  if (!response.ok) {
    let payload = null;
    try { payload = await response.json(); } catch { payload = null; }
    const error = new ApiError(response.status, payload);
    if (response.status === 401 && !key) signOut("Your API key is no longer accepted; sign in again.");
    throw error;
  }
  return raw ? response : response.json();
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : "";
}

function errorBox(error) {
  const parts = [error.message];
  if (error.code) parts.push(` (code ${error.code}${error.param ? `, param ${error.param}` : ""})`);
  return h("div", { class: "error", role: "alert" }, parts.join(""));
}

function showBanner(message, kind = "error") {
  const banner = document.getElementById("banner");
  banner.textContent = message;
  banner.className = kind === "info" ? "banner info" : "banner";
  banner.hidden = !message;
}

async function download(fileId, fallbackName) {
  const response = await api("GET", `/v1/files/${encodeURIComponent(fileId)}/content`, { raw: true });
  const disposition = response.headers.get("Content-Disposition") || "";
  const match = /filename="?([^";]+)"?/.exec(disposition);
  const blob = await response.blob();
  const url = URL.createObjectURL(blob);
  const a = h("a", { href: url, download: match ? match[1] : fallbackName });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// Whether the server has an optional route (an extension another server might not have).
let openapiPaths = null;
async function offers(path) {
  if (openapiPaths === null) {
    try {
      const response = await fetch("/openapi.json", { credentials: "omit" });
      openapiPaths = response.ok ? Object.keys((await response.json()).paths || {}) : [];
    } catch {
      openapiPaths = [];
    }
  }
  return openapiPaths.includes(path);
}

// ---------------------------------------------------------------- live events (SSE over fetch)

const batchListeners = new Set();
// The newest state of each batch seen on the stream. A page's API read can be answered before an
// event and arrive after it; merging with this keeps the page from showing the older of the two.
const latest = new Map();
const resyncListeners = new Set();
let stream = null;

function onBatchEvent(fn) { batchListeners.add(fn); }
function onResync(fn) { resyncListeners.add(fn); }

function setLive(state, text) {
  const el = document.getElementById("live");
  el.className = `live ${state}`;
  el.textContent = text;
}

function startStream() {
  stopStream();
  const controller = new AbortController();
  stream = controller;
  let delay = 1000;
  let first = true;
  const run = async () => {
    while (!controller.signal.aborted) {
      try {
        const response = await fetch("/console/events", {
          headers: { Authorization: `Bearer ${apiKey()}`, Accept: "text/event-stream" },
          credentials: "omit", cache: "no-store", signal: controller.signal,
        });
        if (response.status === 401) { signOut("Your API key is no longer accepted; sign in again."); return; }
        if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
        delay = 1000;
        await readEvents(response.body, (event, data) => {
          if (event === "ready") {
            document.getElementById("project").textContent = `project ${data.project}`;
            setLive("on", "live");
            // Anything may have changed while the stream was down: reload what the page shows.
            if (!first) for (const fn of resyncListeners) fn();
            first = false;
          } else if (event === "batch") {
            const batch = freshest(data.data);
            if (batch !== data.data) return;  // older than what was seen: nothing new to show
            for (const fn of batchListeners) fn(batch, data.type);
          } else if (event === "resync") {
            for (const fn of resyncListeners) fn();
          }
        });
      } catch (error) {
        if (controller.signal.aborted) return;
      }
      if (controller.signal.aborted) return;
      setLive("off", "reconnecting…");
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, 30000);
    }
  };
  run();
}

function stopStream() {
  if (stream) stream.abort();
  stream = null;
}

// A Server-Sent Events parser over a fetch body (the text/event-stream format, as EventSource reads it).
async function readEvents(body, handle) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = "message";
  let data = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let newline;
    while ((newline = buffer.search(/\r\n|\r|\n/)) >= 0) {
      const line = buffer.slice(0, newline);
      buffer = buffer.slice(newline + (buffer.startsWith("\r\n", newline) ? 2 : 1));
      if (line === "") {
        if (data.length) {
          let parsed = null;
          try { parsed = JSON.parse(data.join("\n")); } catch { parsed = null; }
          if (parsed !== null) handle(event, parsed);
        }
        event = "message";
        data = [];
      } else if (!line.startsWith(":")) {
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "event") event = value;
        else if (field === "data") data.push(value);
      }
    }
  }
}

// The newer of `batch` and what the stream said about it last (and remember the newer).
function freshest(batch) {
  const seen = latest.get(batch.id);
  if (seen && !newer(seen, batch)) return seen;
  latest.set(batch.id, batch);
  if (latest.size > 5000) latest.delete(latest.keys().next().value);
  return batch;
}

// A batch seen live never moves back: events may arrive twice or late (docs/events.md, "Ordering").
function newer(current, incoming) {
  if (!current) return true;
  const a = RANK[current.status] ?? 0;
  const b = RANK[incoming.status] ?? 0;
  if (b !== a) return b > a;
  const done = (c) => (c.request_counts ? c.request_counts.completed + c.request_counts.failed : 0);
  return done(incoming) >= done(current);
}

// ---------------------------------------------------------------- session and routing

function signOut(message) {
  sessionStorage.removeItem(KEY_STORAGE);
  latest.clear();
  stopStream();
  document.getElementById("nav").hidden = true;
  document.getElementById("session").hidden = true;
  renderSignIn(message);
}

function renderSignIn(message) {
  showBanner("");
  const input = h("input", { type: "password", id: "api-key", name: "api-key", autocomplete: "off", placeholder: "sk-oh-…", required: true });
  const problem = h("div", { id: "signin-error" });
  const submit = h("button", { type: "submit", text: "Sign in" });
  const form = h("form", {
    class: "card signin",
    on: {
      submit: async (e) => {
        e.preventDefault();
        const key = input.value.trim();
        clear(problem);
        submit.disabled = true;
        try {
          await api("GET", "/v1/batches?limit=1", { key });
          sessionStorage.setItem(KEY_STORAGE, key);
          input.value = "";
          enterSession();
        } catch (error) {
          const text = error.status === 401
            ? `This API key was not accepted. ${error.message}`
            : `The API could not be reached: ${error.message}`;
          append(problem, [h("div", { class: "error", role: "alert", text })]);
        } finally {
          submit.disabled = false;
        }
      },
    },
  },
  h("h1", { text: "Sign in" }),
  h("p", { class: "muted", text: "Paste an API key (offhours keys create --project NAME). It is kept in this tab only and sent as a bearer token." }),
  h("label", {}, "API key", input),
  problem,
  submit);
  append(clear(main()), [form, message ? h("div", { class: "notice", role: "status", text: message }) : null]);
  input.focus();
}

function enterSession() {
  document.getElementById("nav").hidden = false;
  document.getElementById("session").hidden = false;
  setLive("", "connecting…");
  startStream();
  if (!location.hash || location.hash === "#" || location.hash === "#/") location.hash = "#/batches";
  else route();
}

let teardown = () => {};

function route() {
  if (!apiKey()) { renderSignIn(); return; }
  teardown();
  batchListeners.clear();
  resyncListeners.clear();
  showBanner("");
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  const page = parts[0] || "batches";
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("current", a.dataset.page === page);
  const pages = { batches: parts[1] ? () => batchPage(parts[1]) : batchesPage, files: filesPage, webhooks: webhooksPage, models: modelsPage };
  const render = pages[page] || batchesPage;
  teardown = () => {};
  Promise.resolve(render()).catch((error) => {
    if (error instanceof ApiError && error.status === 401) return;
    append(main(), [errorBox(error)]);
  });
}

// ---------------------------------------------------------------- Batches

function progressBar(batch) {
  const c = batch.request_counts || { total: 0, completed: 0, failed: 0 };
  const ok = h("span", { class: "ok" });
  const fail = h("span", { class: "fail" });
  const bar = h("div", {
    class: "bar", role: "progressbar", "aria-label": "progress",
    "aria-valuemin": 0, "aria-valuemax": c.total, "aria-valuenow": c.completed + c.failed,
  }, ok, fail);
  if (c.total > 0) {
    // CSSOM, not an inline style attribute: allowed by the Content-Security-Policy.
    ok.style.width = `${(100 * c.completed) / c.total}%`;
    fail.style.width = `${(100 * c.failed) / c.total}%`;
  }
  const counts = h("div", { class: "counts", text: `${c.completed} completed · ${c.failed} failed · ${c.total} total` });
  return h("div", { class: "progress", dataset: { completed: c.completed, failed: c.failed, total: c.total } }, bar, counts);
}

function utcStamp(localValue) {
  // <input type=datetime-local> gives local time; the API wants yyyyMMddHHmmss in UTC.
  if (!localValue) return "";
  const d = new Date(localValue);
  if (Number.isNaN(d.getTime())) return "";
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getUTCFullYear()}${p(d.getUTCMonth() + 1)}${p(d.getUTCDate())}${p(d.getUTCHours())}${p(d.getUTCMinutes())}${p(d.getUTCSeconds())}`;
}

async function batchesPage() {
  const root = clear(main());
  const state = { after: null, history: [], rows: new Map(), batches: new Map() };

  const statusBoxes = STATUSES.map((s) => h("input", { type: "checkbox", name: "status", value: s }));
  const dsName = h("input", { type: "search", name: "ds_name", placeholder: "contains…" });
  const createdAfter = h("input", { type: "datetime-local", name: "create_after", step: 1 });
  const createdBefore = h("input", { type: "datetime-local", name: "create_before", step: 1 });
  const filters = h("form", {
    class: "card", id: "batch-filters",
    on: { submit: (e) => { e.preventDefault(); state.after = null; state.history = []; load(); } },
  },
  h("div", { class: "actions" }, statusBoxes.map((box) => h("label", { class: "inline" }, box, box.value))),
  h("div", { class: "actions" },
    h("label", {}, "ds_name", dsName),
    h("label", {}, "Created after", createdAfter),
    h("label", {}, "Created before", createdBefore),
    h("button", { type: "submit", text: "Filter" })));

  const tbody = h("tbody");
  const table = h("table", { id: "batches" },
    h("thead", {}, h("tr", {}, ["Batch", "Name", "Endpoint", "Model", "Status", "Progress", "Created"].map((t) => h("th", { text: t })))),
    tbody);
  const prev = h("button", { type: "button", class: "secondary", text: "← Newer", on: { click: () => { state.after = state.history.pop() ?? null; load(); } } });
  const next = h("button", { type: "button", class: "secondary", text: "Older →", on: { click: () => { state.history.push(state.after); state.after = state.lastId; load(); } } });
  const listError = h("div");

  append(root, [
    h("h1", { text: "Batches" }),
    createBatchForm(() => { state.after = null; state.history = []; load(); }),
    filters, listError, table, h("div", { class: "pager" }, prev, next),
  ]);

  function row(batch) {
    const name = (batch.metadata && batch.metadata.ds_name) || "";
    return h("tr", { dataset: { batchId: batch.id } },
      h("td", {}, h("a", { class: "mono", href: `#/batches/${encodeURIComponent(batch.id)}`, text: batch.id })),
      h("td", { class: "ds-name", text: name }),
      h("td", { class: "mono", text: batch.endpoint }),
      h("td", { text: batch.model || "—" }),
      h("td", { class: "status-cell" }, statusBadge(batch.status)),
      h("td", { class: "progress-cell" }, progressBar(batch)),
      h("td", { text: fmtTime(batch.created_at) }));
  }

  async function load() {
    clear(listError);
    const params = {
      limit: 20, after: state.after,
      status: statusBoxes.filter((b) => b.checked).map((b) => b.value).join(","),
      ds_name: dsName.value, create_after: utcStamp(createdAfter.value), create_before: utcStamp(createdBefore.value),
    };
    let page;
    try {
      page = await api("GET", `/v1/batches${query(params)}`);
    } catch (error) {
      append(listError, [errorBox(error)]);
      return;
    }
    state.lastId = page.last_id;
    state.rows.clear();
    state.batches.clear();
    clear(tbody);
    for (const loaded of page.data) {
      const batch = freshest(loaded);
      const tr = row(batch);
      state.rows.set(batch.id, tr);
      state.batches.set(batch.id, batch);
      tbody.append(tr);
    }
    if (!page.data.length) tbody.append(h("tr", {}, h("td", { colspan: 7, class: "muted", text: "No batches." })));
    prev.disabled = state.after === null;
    next.disabled = !page.has_more;
    state.firstPageUnfiltered = state.after === null && !params.status && !params.ds_name && !params.create_after && !params.create_before;
  }

  let reload = null;
  onBatchEvent((batch) => {
    const tr = state.rows.get(batch.id);
    if (tr) {
      state.batches.set(batch.id, batch);
      const fresh = row(batch);
      tr.replaceWith(fresh);
      state.rows.set(batch.id, fresh);
    } else if (state.firstPageUnfiltered && !reload) {
      // A batch this page does not show yet (made elsewhere): reload the page once, not per event.
      reload = setTimeout(() => { reload = null; load(); }, 300);
    }
  });
  onResync(load);
  teardown = () => { if (reload) clearTimeout(reload); };
  await load();
}

function createBatchForm(created) {
  const fileSelect = h("select", { name: "input_file_id", required: true });
  const endpoint = h("select", { name: "endpoint" }, ENDPOINTS.map((e) => h("option", { value: e, text: e })));
  const windowInput = h("input", { name: "completion_window", value: "24h", required: true, pattern: "[0-9]+[hd]" });
  const dsName = h("input", { name: "ds_name", maxlength: 100 });
  const dsDescription = h("input", { name: "ds_description", maxlength: 200 });
  const metadata = h("textarea", { name: "metadata", placeholder: "key=value, one per line" });
  const problem = h("div");
  const submit = h("button", { type: "submit", text: "Create batch" });

  async function loadFiles() {
    clear(fileSelect);
    try {
      const page = await api("GET", "/v1/files?purpose=batch&limit=100");
      if (!page.data.length) fileSelect.append(h("option", { value: "", text: "— upload a batch file first (Files) —" }));
      for (const f of page.data) fileSelect.append(h("option", { value: f.id, text: `${f.filename} (${f.id}, ${fmtBytes(f.bytes)})` }));
    } catch (error) {
      append(problem, [errorBox(error)]);
    }
  }

  const form = h("form", {
    class: "card", id: "create-batch",
    on: {
      submit: async (e) => {
        e.preventDefault();
        clear(problem);
        const meta = {};
        if (dsName.value) meta.ds_name = dsName.value;
        if (dsDescription.value) meta.ds_description = dsDescription.value;
        for (const line of metadata.value.split("\n")) {
          const eq = line.indexOf("=");
          if (eq > 0) meta[line.slice(0, eq).trim()] = line.slice(eq + 1).trim();
        }
        submit.disabled = true;
        try {
          const batch = await api("POST", "/v1/batches", {
            json: {
              input_file_id: fileSelect.value, endpoint: endpoint.value, completion_window: windowInput.value.trim(),
              ...(Object.keys(meta).length ? { metadata: meta } : {}),
            },
          });
          append(problem, [h("div", { class: "notice", role: "status" }, "Created ", h("a", { href: `#/batches/${batch.id}`, class: "mono", text: batch.id }))]);
          created(batch);
        } catch (error) {
          append(problem, [errorBox(error)]);
        } finally {
          submit.disabled = false;
        }
      },
    },
  },
  h("h2", { text: "New batch" }),
  h("div", { class: "grid-create" },
    h("label", {}, "Input file", fileSelect),
    h("label", {}, "Endpoint", endpoint),
    h("label", {}, "Completion window", windowInput),
    h("label", {}, "ds_name", dsName),
    h("label", {}, "ds_description", dsDescription),
    h("label", {}, "Other metadata", metadata)),
  h("div", { class: "actions" }, submit, h("button", { type: "button", class: "secondary", text: "Refresh files", on: { click: loadFiles } })),
  problem);
  loadFiles();
  return form;
}

const TIMELINE = [
  ["created", "created_at"], ["validating", "created_at"], ["in_progress", "in_progress_at"], ["finalizing", "finalizing_at"],
];
const ENDINGS = [["completed", "completed_at"], ["failed", "failed_at"], ["expired", "expired_at"], ["cancelling", "cancelling_at"], ["cancelled", "cancelled_at"]];

function timeline(batch) {
  const steps = TIMELINE.filter(([name]) => name !== "validating");
  const ends = ENDINGS.filter(([, field]) => batch[field]);
  if (!ends.length) ends.push(["completed", "completed_at"]);
  return h("ol", { class: "timeline", id: "timeline" }, [...steps, ...ends].map(([name, field]) => h("li", {
    class: batch[field] ? (["failed", "expired", "cancelled"].includes(name) ? "reached bad" : "reached") : "",
    dataset: { step: name },
  }, h("strong", { text: name }), h("span", { class: "when", text: fmtTime(batch[field]) }))));
}

async function batchPage(batchId) {
  const root = clear(main());
  let batch = freshest(await api("GET", `/v1/batches/${encodeURIComponent(batchId)}`));
  const retryOffered = await offers("/v1/batches/{batch_id}/retry");
  const view = h("div", { id: "batch" });
  const deliveries = h("div", { id: "deliveries" });
  append(root, [h("p", {}, h("a", { href: "#/batches", text: "← Batches" })), view, h("h2", { text: "Webhook deliveries" }), deliveries]);

  const draw = () => {
    const c = batch.request_counts || {};
    const actions = h("div", { class: "actions" });
    const problem = h("div");
    const act = (label, cls, fn) => h("button", {
      type: "button", class: cls, text: label,
      on: { click: async (e) => { e.target.disabled = true; clear(problem); try { await fn(); } catch (error) { append(problem, [errorBox(error)]); } finally { e.target.disabled = false; } } },
    });
    if (batch.output_file_id) actions.append(act("Download output", "", () => download(batch.output_file_id, `${batch.id}_output.jsonl`)));
    if (batch.error_file_id) actions.append(act("Download errors", "secondary", () => download(batch.error_file_id, `${batch.id}_errors.jsonl`)));
    if (batch.status === "validating" || batch.status === "in_progress") {
      actions.append(act("Cancel", "danger", async () => { batch = freshest(await api("POST", `/v1/batches/${batch.id}/cancel`)); draw(); }));
    }
    // The server's retry extension takes ended batches with an error file and a file input (not a URL).
    if (retryOffered && TERMINAL.has(batch.status) && batch.status !== "failed" && c.failed > 0
        && batch.error_file_id && !/^https?:/.test(batch.input_file_id || "")) {
      actions.append(act("Retry what did not finish", "secondary", async () => {
        const retry = await api("POST", `/v1/batches/${batch.id}/retry`, { json: {} });
        location.hash = `#/batches/${encodeURIComponent(retry.id)}`;
      }));
    }
    const usage = batch.usage;
    const errors = (batch.errors && batch.errors.data) || [];
    append(clear(view), [
      h("h1", {}, h("span", { class: "mono", text: batch.id }), " ", statusBadge(batch.status)),
      timeline(batch),
      actions, problem,
      h("div", { class: "card" }, h("dl", { class: "facts" },
        h("dt", { text: "Progress" }), h("dd", {}, progressBar(batch)),
        h("dt", { text: "Endpoint" }), h("dd", { class: "mono", text: batch.endpoint }),
        h("dt", { text: "Model" }), h("dd", { text: batch.model || "—" }),
        h("dt", { text: "Input file" }), h("dd", { class: "mono", text: batch.input_file_id }),
        h("dt", { text: "Completion window" }), h("dd", { text: `${batch.completion_window} (expires ${fmtTime(batch.expires_at)})` }),
        h("dt", { text: "Usage" }), h("dd", { id: "usage", text: usage ? `${usage.input_tokens} input + ${usage.output_tokens} output = ${usage.total_tokens} tokens` : (TERMINAL.has(batch.status) ? "—" : "— (known when the batch ends)") }),
        h("dt", { text: "Metadata" }), h("dd", {}, batch.metadata && Object.keys(batch.metadata).length
          ? h("dl", { class: "facts", id: "metadata" }, Object.entries(batch.metadata).flatMap(([k, v]) => [h("dt", { text: k }), h("dd", { text: v })]))
          : "—"),
        batch.retried_by ? [h("dt", { text: "Retried by" }), h("dd", {}, h("a", { class: "mono", href: `#/batches/${encodeURIComponent(batch.retried_by)}`, text: batch.retried_by }))] : null)),
      errors.length ? [
        h("h2", { text: "Errors" }),
        h("table", { id: "batch-errors" },
          h("thead", {}, h("tr", {}, ["Line", "Code", "Param", "Message"].map((t) => h("th", { text: t })))),
          h("tbody", {}, errors.map((e) => h("tr", {},
            h("td", { class: "line", text: e.line ?? "—" }), h("td", { class: "mono code", text: e.code || "" }),
            h("td", { class: "mono", text: e.param || "" }), h("td", { text: e.message || "" }))))),
      ] : null,
    ]);
  };

  async function loadDeliveries() {
    let page;
    try {
      page = await api("GET", `/v1/webhook_deliveries${query({ batch_id: batch.id, limit: 50 })}`);
    } catch (error) {
      append(clear(deliveries), [errorBox(error)]);
      return;
    }
    if (!page.data.length) {
      append(clear(deliveries), [h("p", { class: "muted", text: "No webhook deliveries for this batch." })]);
      return;
    }
    append(clear(deliveries), [h("table", {},
      h("thead", {}, h("tr", {}, ["Event", "To", "Status", "Attempts", ""].map((t) => h("th", { text: t })))),
      h("tbody", {}, page.data.map((d) => {
        const problem = h("div");
        return h("tr", { dataset: { deliveryId: d.id } },
          h("td", { class: "mono", text: d.event_type }),
          h("td", { class: "mono", text: d.endpoint_id || d.callback_url || "" }),
          h("td", {}, statusBadge(d.status), d.last_error ? h("div", { class: "muted", text: d.last_error }) : null),
          h("td", {}, String(d.attempt_count), h("ul", { class: "attempts" }, (d.attempts || []).map((a) => h("li", {
            text: `#${a.attempt} ${fmtTime(a.started_at)} ${a.outcome}${a.response_code ? ` HTTP ${a.response_code}` : ""}${a.error ? ` — ${a.error}` : ""}`,
          })))),
          h("td", {}, h("button", {
            type: "button", class: "secondary", text: "Redeliver",
            on: { click: async () => { clear(problem); try { await api("POST", `/v1/webhook_deliveries/${encodeURIComponent(d.id)}/redeliver`); await loadDeliveries(); } catch (error) { append(problem, [errorBox(error)]); } } },
          }), problem));
      })))]);
  }

  onBatchEvent((incoming) => {
    if (incoming.id !== batch.id) return;
    batch = incoming;
    draw();
    if (TERMINAL.has(batch.status)) loadDeliveries();
  });
  onResync(async () => {
    batch = freshest(await api("GET", `/v1/batches/${encodeURIComponent(batchId)}`));
    draw();
    loadDeliveries();
  });
  draw();
  await loadDeliveries();
}

// ---------------------------------------------------------------- Files

async function filesPage() {
  const root = clear(main());
  const state = { after: null, history: [] };
  const purpose = h("select", { name: "purpose", id: "upload-purpose" }, PURPOSES.map((p) => h("option", { value: p, text: p })));
  const picker = h("input", { type: "file", id: "upload-input", hidden: true, multiple: true });
  const outcome = h("div", { id: "upload-outcome" });
  const zone = h("div", { class: "drop", id: "drop-zone", tabindex: 0, role: "button" }, "Drop JSONL files here, or click to choose");
  const tbody = h("tbody");
  const prev = h("button", { type: "button", class: "secondary", text: "← Newer", on: { click: () => { state.after = state.history.pop() ?? null; load(); } } });
  const next = h("button", { type: "button", class: "secondary", text: "Older →", on: { click: () => { state.history.push(state.after); state.after = state.lastId; load(); } } });
  const listError = h("div");

  async function upload(files) {
    clear(outcome);
    for (const file of files) {
      const form = new FormData();
      form.append("purpose", purpose.value);
      form.append("file", file, file.name);
      const line = h("div", { class: "notice", text: `Uploading ${file.name}…` });
      outcome.append(line);
      try {
        const created = await api("POST", "/v1/files", { form });
        line.replaceWith(h("div", { class: "notice", role: "status", dataset: { fileId: created.id } }, `Uploaded ${file.name} as `, h("span", { class: "mono", text: created.id })));
      } catch (error) {
        // The API names the offending line ("Invalid batch file: Line 2 must be a JSON object…").
        line.replaceWith(h("div", { class: "error", role: "alert" }, `${file.name}: `, error.message, error.code ? ` (code ${error.code})` : ""));
      }
    }
    state.after = null;
    state.history = [];
    await load();
  }

  zone.addEventListener("click", () => picker.click());
  zone.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") picker.click(); });
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => { e.preventDefault(); zone.classList.remove("over"); upload([...e.dataTransfer.files]); });
  picker.addEventListener("change", () => { upload([...picker.files]); picker.value = ""; });

  async function load() {
    clear(listError);
    let page;
    try {
      page = await api("GET", `/v1/files${query({ limit: 20, after: state.after })}`);
    } catch (error) {
      append(listError, [errorBox(error)]);
      return;
    }
    state.lastId = page.last_id;
    clear(tbody);
    for (const f of page.data) {
      const problem = h("div");
      let armed = false;
      const del = h("button", {
        type: "button", class: "danger", text: "Delete",
        on: {
          click: async () => {
            // Two clicks instead of window.confirm(): a dialog can be auto-dismissed or blocked.
            if (!armed) { armed = true; del.textContent = "Confirm delete"; return; }
            try { await api("DELETE", `/v1/files/${encodeURIComponent(f.id)}`); await load(); } catch (error) { append(clear(problem), [errorBox(error)]); }
          },
        },
      });
      tbody.append(h("tr", { dataset: { fileId: f.id } },
        h("td", { class: "mono", text: f.id }), h("td", { class: "filename", text: f.filename }), h("td", { text: f.purpose }),
        h("td", { text: fmtBytes(f.bytes) }), h("td", { text: fmtTime(f.created_at) }), h("td", { text: fmtTime(f.expires_at) }),
        h("td", {}, h("button", { type: "button", class: "secondary", text: "Download", on: { click: () => download(f.id, f.filename).catch((error) => append(clear(problem), [errorBox(error)])) } }), " ", del, problem)));
    }
    if (!page.data.length) tbody.append(h("tr", {}, h("td", { colspan: 7, class: "muted", text: "No files." })));
    prev.disabled = state.after === null;
    next.disabled = !page.has_more;
  }

  append(root, [
    h("h1", { text: "Files" }),
    h("div", { class: "card" }, h("div", { class: "actions" }, h("label", {}, "Purpose", purpose)), zone, picker, outcome),
    listError,
    h("table", { id: "files" },
      h("thead", {}, h("tr", {}, ["File", "Name", "Purpose", "Size", "Created", "Expires", ""].map((t) => h("th", { text: t })))),
      tbody),
    h("div", { class: "pager" }, prev, next),
  ]);
  await load();
}

// ---------------------------------------------------------------- Webhooks

async function webhooksPage() {
  const root = clear(main());
  const types = (await api("GET", "/v1/webhook_event_types")).data || [];
  const typeName = (t) => (typeof t === "string" ? t : t.type || t.id || t.name);
  const boxes = types.map(typeName).map((t) => h("input", { type: "checkbox", name: "event_types", value: t, checked: ["batch.completed", "batch.failed", "batch.expired", "batch.cancelled"].includes(t) }));
  const url = h("input", { type: "url", name: "url", required: true, placeholder: "https://example.com/hooks/offhours" });
  const name = h("input", { name: "name" });
  const description = h("input", { name: "description" });
  const problem = h("div");
  const secretBox = h("div", { id: "secret" });
  const tbody = h("tbody");

  function showSecret(endpoint) {
    append(clear(secretBox), [h("div", { class: "notice", role: "status" },
      h("p", {}, "Signing secret of ", h("span", { class: "mono", text: endpoint.id }), " — shown once, store it now:"),
      h("div", { class: "secret", text: endpoint.signing_secret || "" }))]);
  }

  async function load() {
    const page = await api("GET", "/v1/webhook_endpoints?limit=100");
    clear(tbody);
    for (const ep of page.data) {
      const rowProblem = h("div");
      const run = (fn) => async () => { clear(rowProblem); try { await fn(); } catch (error) { append(rowProblem, [errorBox(error)]); } };
      tbody.append(h("tr", { dataset: { endpointId: ep.id } },
        h("td", {}, h("div", { class: "ep-name", text: ep.name || "" }), h("div", { class: "mono muted", text: ep.id })),
        h("td", { class: "mono", text: ep.url }),
        h("td", { text: (ep.event_types || []).join(", ") }),
        h("td", {}, ep.enabled ? "enabled" : "disabled"),
        h("td", { class: "mono", text: ep.signing_secret_hint || "" }),
        h("td", {}, h("div", { class: "actions" },
          h("button", { type: "button", class: "secondary", text: ep.enabled ? "Disable" : "Enable", on: { click: run(async () => { await api("POST", `/v1/webhook_endpoints/${ep.id}`, { json: { enabled: !ep.enabled } }); await load(); }) } }),
          h("button", { type: "button", class: "secondary", text: "Rotate secret", on: { click: run(async () => { showSecret(await api("POST", `/v1/webhook_endpoints/${ep.id}/rotate_secret`, { json: {} })); await load(); }) } }),
          h("button", { type: "button", class: "secondary", text: "Send test", on: { click: run(async () => { const r = await api("POST", `/v1/webhook_endpoints/${ep.id}/test`, { json: {} }); append(rowProblem, [h("div", { class: "notice", role: "status", text: `Test event sent: the receiver answered HTTP ${r.status_code}.` })]); }) } }),
          h("button", { type: "button", class: "danger", text: "Delete", on: { click: run(async () => { await api("DELETE", `/v1/webhook_endpoints/${ep.id}`); await load(); }) } })),
        rowProblem)));
    }
    if (!page.data.length) tbody.append(h("tr", {}, h("td", { colspan: 6, class: "muted", text: "No webhook endpoints." })));
  }

  const form = h("form", {
    class: "card", id: "create-endpoint",
    on: {
      submit: async (e) => {
        e.preventDefault();
        clear(problem);
        try {
          const ep = await api("POST", "/v1/webhook_endpoints", {
            json: {
              url: url.value.trim(), event_types: boxes.filter((b) => b.checked).map((b) => b.value),
              ...(name.value ? { name: name.value } : {}), ...(description.value ? { description: description.value } : {}),
            },
          });
          showSecret(ep);
          url.value = "";
          await load();
        } catch (error) {
          append(problem, [errorBox(error)]);
        }
      },
    },
  },
  h("h2", { text: "New endpoint" }),
  h("div", { class: "actions" }, h("label", {}, "URL", url), h("label", {}, "Name", name), h("label", {}, "Description", description)),
  h("div", { class: "actions" }, boxes.map((b) => h("label", { class: "inline" }, b, b.value))),
  h("div", { class: "actions" }, h("button", { type: "submit", text: "Create endpoint" })),
  problem);

  append(root, [
    h("h1", { text: "Webhooks" }), form, secretBox,
    h("table", { id: "endpoints" },
      h("thead", {}, h("tr", {}, ["Endpoint", "URL", "Events", "State", "Secret", ""].map((t) => h("th", { text: t })))),
      tbody),
  ]);
  await load();
}

// ---------------------------------------------------------------- Models

async function modelsPage() {
  const root = clear(main());
  const page = await api("GET", "/v1/models");
  const optional = (m, k) => (m[k] === undefined || m[k] === null ? "—" : String(m[k]));
  append(root, [
    h("h1", { text: "Models" }),
    h("p", { class: "muted", text: "Models with a live worker. Queued and in-flight work appear where the server reports them." }),
    h("table", { id: "models" },
      h("thead", {}, h("tr", {}, ["Model", "Endpoints", "Live workers", "Queued", "In flight"].map((t) => h("th", { text: t })))),
      h("tbody", {}, page.data.length ? page.data.map((m) => h("tr", { dataset: { model: m.id } },
        h("td", { class: "mono", text: m.id }),
        h("td", { class: "mono", text: (m.endpoints || []).join(", ") }),
        h("td", { text: optional(m, "workers") }),
        h("td", { text: optional(m, "queued") }),
        h("td", { text: optional(m, "in_flight") })))
        : h("tr", {}, h("td", { colspan: 5, class: "muted", text: "No model has a live worker." })))),
  ]);
}

// ---------------------------------------------------------------- start

document.getElementById("signout").addEventListener("click", () => signOut("Signed out."));
window.addEventListener("hashchange", route);
if (apiKey()) enterSession();
else renderSignIn();
