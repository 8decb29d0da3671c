// Muster's dashboard: plain JavaScript, served from the binary, reading the REST API with the
// client token as a bearer header. The token lives in sessionStorage, never in a cookie.

const TOKEN_KEY = "muster-token";
const STATUSES = ["queued", "running", "succeeded", "failed", "cancelled"];
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
// One colour per chunk state letter of GET /v1/jobs/{id}/chunks.
const CHUNK_COLOURS = {
  p: "#cbd5e1", // waiting
  w: "#f59e0b", // waiting for a retry
  r: "#2563eb", // running
  s: "#16a34a", // succeeded
  f: "#dc2626", // failed
  c: "#64748b", // never ran
};
const CHUNK_NAMES = {
  p: "waiting", w: "retry pending", r: "running", s: "succeeded", f: "failed", c: "never ran",
};
// In a binned grid, a cell shows the most telling state among its chunks.
const CHUNK_RANK = "fwrpcs";
const STREAM_SECONDS = 60;

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const toast = document.getElementById("toast");

// ---------- small helpers ----------

/** An element with attributes (`on*` functions become listeners) and children. */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (key === "class") {
      el.className = value;
    } else {
      el.setAttribute(key, value === true ? "" : String(value));
    }
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function say(text) {
  toast.textContent = text;
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
  });
}

function duration(seconds) {
  if (seconds === undefined || seconds === null) return "–";
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 90) return `${seconds.toFixed(seconds < 10 ? 1 : 0)} s`;
  const m = Math.floor(seconds / 60);
  if (m < 90) return `${m} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

function ago(iso) {
  if (!iso) return "–";
  return `${duration(Math.max(0, (Date.now() - Date.parse(iso)) / 1000))} ago`;
}

function shortId(id) {
  return id.length > 13 ? `${id.slice(0, 8)}…${id.slice(-4)}` : id;
}

/** A stable colour for a job, so its bars read as one in the task stream. */
function jobColour(id) {
  let hash = 0;
  for (const c of id) hash = (hash * 31 + c.charCodeAt(0)) >>> 0;
  return `hsl(${hash % 360} 55% 48%)`;
}

// ---------- the API ----------

class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

function headers(extra = {}) {
  const t = token();
  return t ? { ...extra, Authorization: `Bearer ${t}` } : extra;
}

/** Calls the API; a problem+json answer becomes an ApiError with its `detail`. */
async function api(path, { method = "GET", signal, raw = false, tokenOverride } = {}) {
  const hdrs = tokenOverride !== undefined
    ? (tokenOverride ? { Authorization: `Bearer ${tokenOverride}` } : {})
    : headers();
  const response = await fetch(path, { method, headers: hdrs, signal });
  if (!response.ok) {
    let detail = `${response.status} ${response.statusText}`;
    try {
      const problem = await response.json();
      detail = problem.detail || problem.title || detail;
    } catch (_) { /* not JSON */ }
    if (response.status === 401 && tokenOverride === undefined) signedOut(detail);
    throw new ApiError(response.status, detail);
  }
  return raw ? response : response.json();
}

/**
 * Follows a Server-Sent Events stream through fetch (so the token goes as a header), calling
 * `onEvent(name, data)` for each event and resuming with Last-Event-ID when the connection
 * drops, until `signal` aborts or the stream sends `end`.
 */
async function follow(path, onEvent, signal) {
  let lastId = null;
  while (!signal.aborted) {
    try {
      const hdrs = headers({ Accept: "text/event-stream" });
      if (lastId !== null) hdrs["Last-Event-ID"] = lastId;
      const response = await fetch(path, { headers: hdrs, signal });
      if (!response.ok) {
        if (response.status === 401) signedOut("the token was refused");
        return;
      }
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          let name = "message";
          let data = "";
          for (const line of block.split("\n")) {
            if (line.startsWith("id: ")) lastId = line.slice(4);
            else if (line.startsWith("event: ")) name = line.slice(7);
            else if (line.startsWith("data: ")) data += line.slice(6);
          }
          if (!data) continue;
          onEvent(name, JSON.parse(data));
          if (name === "end") return;
        }
      }
    } catch (e) {
      if (signal.aborted) return;
    }
    await sleep(1000, signal);
  }
}

/** Runs `tick` now and then every `ms` until `signal` aborts; a failing tick is shown, not fatal. */
async function every(ms, signal, tick) {
  while (!signal.aborted) {
    try {
      await tick();
    } catch (e) {
      if (signal.aborted) return;
      if (e instanceof ApiError && e.status === 401) return;
      say(`Could not refresh: ${e.message}`);
    }
    await sleep(ms, signal);
  }
}

// ---------- sign-in ----------

let view = null; // the AbortController of the view on screen

function signedOut(why) {
  sessionStorage.removeItem(TOKEN_KEY);
  showSignIn(why);
}

function showSignIn(error) {
  view?.abort();
  view = new AbortController();
  nav.hidden = true;
  document.title = "Sign in · Muster";
  const input = h("input", {
    id: "token", name: "token", type: "password", autocomplete: "off", required: true,
    spellcheck: "false", "aria-describedby": "token-help",
  });
  const message = h("p", { id: "sign-in-error", class: "error", role: "alert" }, error || "");
  message.hidden = !error;
  const form = h("form", { class: "sign-in", "aria-labelledby": "sign-in-title" },
    h("h1", { id: "sign-in-title" }, "Sign in to Muster"),
    h("label", { for: "token" }, "Client token"),
    input,
    h("p", { id: "token-help", class: "hint" },
      "The token is kept in this tab only (sessionStorage) and sent as a bearer header."),
    message,
    h("button", { type: "submit", id: "sign-in" }, "Sign in"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const candidate = input.value.trim();
    message.hidden = true;
    try {
      await api("/v1/overview?seconds=1", { tokenOverride: candidate });
    } catch (e) {
      message.textContent = e.status === 401
        ? `That token was refused: ${e.message}`
        : `Cannot sign in: ${e.message}`;
      message.hidden = false;
      input.focus();
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, candidate);
    route();
  });
  main.replaceChildren(form);
  input.focus();
}

document.getElementById("sign-out").addEventListener("click", () => signedOut(""));

// ---------- shared widgets ----------

/**
 * A canvas that follows its box's width and redraws with `draw(ctx, width, height)`, until
 * `signal` (its view's) aborts.
 */
function canvasBox(signal, label, height, draw) {
  const canvas = h("canvas", { role: "img", "aria-label": label, height });
  const box = h("div", { class: "canvas-box" }, canvas);
  const paint = () => {
    const style = getComputedStyle(box);
    const inner = box.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
    const width = Math.max(120, Math.floor(inner));
    const ratio = window.devicePixelRatio || 1;
    const tall = canvas._height ?? height;
    canvas.width = width * ratio;
    canvas.height = tall * ratio;
    canvas.style.width = `${width}px`;
    canvas.style.height = `${tall}px`;
    const ctx = canvas.getContext("2d");
    ctx.scale(ratio, ratio);
    draw(ctx, width, tall);
  };
  const observer = new ResizeObserver(() => paint());
  observer.observe(box);
  signal.addEventListener("abort", () => observer.disconnect(), { once: true });
  return { box, canvas, paint };
}

function table(caption, head, rows, empty) {
  if (!rows.length) return h("p", { class: "empty" }, empty);
  return h("div", { class: "table-box" },
    h("table", {},
      h("caption", { class: "visually-hidden" }, caption),
      h("thead", {}, h("tr", {}, head.map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, rows)));
}

// ---------- overview ----------

function overviewView(signal) {
  document.title = "Overview · Muster";
  const cards = h("div", { class: "cards", id: "cards" });
  const workersBox = h("div", { id: "workers" });
  const eventsList = h("ol", { class: "events", id: "cluster-events" });
  let throughput = [];
  const chart = canvasBox(signal, "Chunks per second over the last five minutes", 160, (ctx, w, hgt) => {
    drawThroughput(ctx, w, hgt, throughput);
  });
  const stream = new TaskStream();
  const streamBox = canvasBox(signal, "Task stream: one row per worker, one bar per chunk attempt", 120,
    (ctx, w, hgt) => stream.draw(ctx, w, hgt));
  stream.canvas = streamBox.canvas;
  streamBox.box.id = "task-stream";
  main.replaceChildren(
    h("h1", {}, "Overview"),
    cards,
    h("section", { "aria-labelledby": "tp-title" },
      h("h2", { id: "tp-title" }, "Chunks per second"), chart.box),
    h("section", { "aria-labelledby": "ts-title" },
      h("h2", { id: "ts-title" }, "Task stream"),
      h("p", { class: "hint" }, `The last ${STREAM_SECONDS} s: a bar per attempt, coloured by job; red ones failed.`),
      streamBox.box),
    h("section", { "aria-labelledby": "w-title" }, h("h2", { id: "w-title" }, "Workers"), workersBox),
    h("section", { "aria-labelledby": "e-title" },
      h("h2", { id: "e-title" }, "Cluster events"), eventsList));

  every(2000, signal, async () => {
    const o = await api("/v1/overview?seconds=300", { signal });
    throughput = o.chunks_per_second;
    chart.paint();
    const recent = throughput.slice(-11, -1);
    const rate = recent.length ? recent.reduce((a, b) => a + b, 0) / recent.length : 0;
    const jobs = STATUSES.map((s) => h("li", {},
      h("a", { href: `#/jobs?status=${s}` }, `${s}: `, h("strong", { "data-status": s }, o.jobs[s] || 0))));
    cards.replaceChildren(
      card("Workers", o.workers, o.quarantined ? `${o.quarantined} quarantined` : "connected", "workers"),
      card("Busy slots", `${o.busy_slots} / ${o.slots}`, "running a chunk", "slots"),
      card("Queue", o.chunks_pending, `${o.chunks_running} running`, "queue"),
      card("Throughput", `${rate.toFixed(rate < 10 ? 1 : 0)}/s`, "chunks, last 10 s", "rate"),
      h("div", { class: "card" }, h("h2", {}, "Jobs"), h("ul", { class: "plain" }, jobs)));
  });
  every(2000, signal, async () => {
    const { workers } = await api("/v1/workers", { signal });
    stream.workers(workers.map((w) => w.name));
    workersBox.replaceChildren(workerTable(workers));
  });
  every(1000, signal, async () => {
    await stream.poll(signal);
    streamBox.box.dataset.bars = String(stream.bars.size);
    streamBox.paint();
  });
  follow("/v1/events", (name, data) => {
    if (name === "worker_left") stream.lost(data.name);
    const item = clusterEvent(name, data);
    if (item) {
      eventsList.prepend(item);
      while (eventsList.children.length > 50) eventsList.lastChild.remove();
    }
  }, signal);
}

function card(title, value, note, key) {
  return h("div", { class: "card", "data-card": key },
    h("h2", {}, title), h("p", { class: "big" }, value), h("p", { class: "hint" }, note));
}

function workerTable(workers) {
  const rows = workers.map((w) => {
    const state = w.draining ? "draining" : w.quarantined_until ? "quarantined" : "ready";
    const labels = Object.entries(w.labels || {}).map(([k, v]) => `${k}=${v}`).join(", ");
    return h("tr", { "data-worker": w.name },
      h("th", { scope: "row" }, w.name),
      h("td", {}, h("span", { class: `badge ${state}` }, state)),
      h("td", { class: "num" }, `${w.running} / ${w.slots}`),
      h("td", {}, labels || "–"),
      h("td", { class: "wrap" }, w.tasks.join(", ")),
      h("td", {}, ago(w.last_heartbeat)));
  });
  return table("Connected workers",
    ["Name", "State", "Busy / slots", "Labels", "Tasks", "Heartbeat"], rows,
    "No worker is connected.");
}

function clusterEvent(name, d) {
  const when = new Date(d.at ? Date.parse(d.at) : Date.now()).toLocaleTimeString();
  let text;
  let cls = "";
  switch (name) {
    case "job_submitted": text = [`Job `, jobLink(d.job_id), ` submitted: ${d.name}, ${d.chunks} chunks`]; break;
    case "job_ended":
      text = [`Job `, jobLink(d.job_id), ` ${d.status}`];
      cls = d.status === "succeeded" ? "" : "bad";
      break;
    case "worker_joined": text = [`Worker ${d.name} joined with ${d.slots} slots`]; break;
    case "worker_draining": text = [`Worker ${d.name} is draining`]; break;
    case "worker_left":
      text = [d.chunks_lost
        ? `Worker ${d.name} lost: ${d.reason}, ${d.chunks_lost} chunks retried elsewhere`
        : `Worker ${d.name} left: ${d.reason}`];
      cls = d.chunks_lost ? "bad" : "";
      break;
    case "missed": text = [`${d.events} older events are no longer kept`]; break;
    default: return null;
  }
  return h("li", { class: cls, "data-event": name },
    h("time", { datetime: d.at || "" }, when), " ", ...text);
}

function jobLink(id) {
  return h("a", { href: `#/jobs/${id}` }, shortId(id));
}

function drawThroughput(ctx, width, height, counts) {
  ctx.clearRect(0, 0, width, height);
  const pad = { left: 44, right: 8, top: 10, bottom: 20 };
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  const max = Math.max(1, ...counts);
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = "#475569";
  ctx.textAlign = "right";
  ctx.fillText(String(max), pad.left - 6, pad.top + 8);
  ctx.fillText("0", pad.left - 6, pad.top + plotH);
  ctx.textAlign = "left";
  ctx.fillText(`${counts.length / 60} min ago`, pad.left, height - 4);
  ctx.textAlign = "right";
  ctx.fillText("now", width - pad.right, height - 4);
  ctx.strokeStyle = "#e2e8f0";
  ctx.strokeRect(pad.left, pad.top, plotW, plotH);
  if (!counts.length) return;
  const step = plotW / counts.length;
  ctx.fillStyle = "#2563eb";
  counts.forEach((n, i) => {
    const barH = (n / max) * plotH;
    ctx.fillRect(pad.left + i * step, pad.top + plotH - barH, Math.max(1, step - 0.5), barH);
  });
}

/** The task stream: attempts of the last minute, a row per worker. */
class TaskStream {
  constructor() {
    this.next = 0;
    this.bars = new Map(); // "job/chunk/attempt" -> bar
    this.rows = [];
    this.gone = new Set();
  }

  workers(names) {
    for (const name of names) {
      if (!this.rows.includes(name)) this.rows.push(name);
      this.gone.delete(name);
    }
  }

  lost(name) {
    this.gone.add(name);
  }

  async poll(signal) {
    // At most two pages a tick: far behind (a busy cluster), it skips to the last 2,000.
    for (let i = 0; i < 2; i++) {
      const read = await api(`/v1/attempts?after=${this.next}`, { signal });
      if (read.head - read.next > 2000) {
        this.next = read.head - 2000;
        continue;
      }
      for (const a of read.attempts) {
        const key = `${a.job_id}/${a.chunk}/${a.attempt}`;
        const bar = this.bars.get(key) || { job: a.job_id, worker: a.worker };
        bar.start = Date.parse(a.started_at);
        bar.end = a.finished_at ? Date.parse(a.finished_at) : null;
        bar.failed = a.state === "failed";
        this.bars.set(key, bar);
        if (!this.rows.includes(a.worker)) this.rows.push(a.worker);
      }
      this.next = read.next;
      if (read.attempts.length < 1000) break;
    }
    const horizon = Date.now() - STREAM_SECONDS * 1000;
    for (const [key, bar] of this.bars) {
      if (bar.end !== null && bar.end < horizon) this.bars.delete(key);
    }
    // Keep at most 5000 bars (the newest): a fast cluster's minute is summarised, not drawn whole.
    if (this.bars.size > 5000) {
      const keys = [...this.bars.keys()];
      for (const key of keys.slice(0, keys.length - 5000)) this.bars.delete(key);
    }
    const rowH = 18;
    const tall = Math.max(60, this.rows.length * rowH + 24);
    if (this.canvas) this.canvas._height = tall;
  }

  draw(ctx, width, height) {
    ctx.clearRect(0, 0, width, height);
    const label = Math.min(140, Math.floor(width * 0.3));
    const rowH = 18;
    const now = Date.now();
    const from = now - STREAM_SECONDS * 1000;
    const x = (t) => label + ((t - from) / (STREAM_SECONDS * 1000)) * (width - label - 4);
    ctx.font = "12px system-ui, sans-serif";
    ctx.textBaseline = "middle";
    this.rows.forEach((name, i) => {
      const y = i * rowH;
      ctx.fillStyle = i % 2 ? "#f8fafc" : "#f1f5f9";
      ctx.fillRect(label, y, width - label, rowH);
      ctx.fillStyle = this.gone.has(name) ? "#dc2626" : "#0f172a";
      const text = this.gone.has(name) ? `${name} (lost)` : name;
      ctx.fillText(text.length > 22 ? `${text.slice(0, 21)}…` : text, 4, y + rowH / 2, label - 8);
    });
    for (const bar of this.bars.values()) {
      const row = this.rows.indexOf(bar.worker);
      if (row < 0) continue;
      const start = Math.max(from, bar.start);
      const end = bar.end ?? now;
      if (end < from) continue;
      ctx.fillStyle = bar.failed ? "#dc2626" : jobColour(bar.job);
      ctx.globalAlpha = bar.end === null ? 0.6 : 1;
      ctx.fillRect(x(start), row * rowH + 3, Math.max(1.5, x(end) - x(start)), rowH - 6);
    }
    ctx.globalAlpha = 1;
    ctx.fillStyle = "#475569";
    ctx.textBaseline = "alphabetic";
    ctx.fillText(`${STREAM_SECONDS} s ago`, label, height - 4);
    ctx.textAlign = "right";
    ctx.fillText("now", width - 4, height - 4);
    ctx.textAlign = "left";
  }
}

// ---------- jobs ----------

function jobsView(signal, params) {
  const status = params.get("status") || "";
  document.title = `${status ? `${status[0].toUpperCase()}${status.slice(1)} jobs` : "Jobs"} · Muster`;
  const select = h("select", { id: "status-filter", name: "status" },
    h("option", { value: "" }, "all"),
    STATUSES.map((s) => h("option", { value: s, selected: s === status }, s)));
  select.addEventListener("change", () => {
    location.hash = select.value ? `#/jobs?status=${select.value}` : "#/jobs";
  });
  const list = h("div", { id: "job-list", "aria-live": "polite" });
  main.replaceChildren(
    h("h1", {}, "Jobs"),
    h("div", { class: "toolbar" }, h("label", { for: "status-filter" }, "Status "), select),
    list);
  every(2000, signal, async () => {
    const query = status ? `?status=${status}&limit=200` : "?limit=200";
    const { jobs } = await api(`/v1/jobs${query}`, { signal });
    const rows = jobs.map((j) => {
      const c = j.chunks;
      const pct = c.total ? Math.floor((100 * c.succeeded) / c.total) : 0;
      return h("tr", { "data-job": j.id },
        h("th", { scope: "row" }, jobLink(j.id)),
        h("td", {}, j.kind || j.task),
        h("td", {}, h("span", { class: `badge ${j.status}` }, j.status)),
        h("td", {}, h("progress", { max: c.total, value: c.succeeded, "aria-label": `${pct}% done` }),
          ` ${c.succeeded} / ${c.total}`),
        h("td", {}, ago(j.created_at)));
    });
    list.replaceChildren(table("Jobs", ["Job", "Kind", "Status", "Chunks done", "Submitted"], rows,
      status ? `No ${status} job.` : "No job yet."));
  });
}

// ---------- one job ----------

function jobView(signal, id) {
  document.title = `Job ${shortId(id)} · Muster`;
  const heading = h("h1", {}, "Job ", h("code", {}, shortId(id)));
  const badge = h("span", { class: "badge", id: "job-status" }, "…");
  const meta = h("p", { class: "hint", id: "job-meta" });
  const bar = h("progress", { id: "job-progress", max: 1, value: 0, "aria-labelledby": "progress-text" });
  const progressText = h("p", { id: "progress-text" }, "…");
  const cancel = h("button", { type: "button", id: "cancel", class: "danger" }, "Cancel job");
  let states = "";
  const grid = canvasBox(signal, "Chunks by state", 120, (ctx, w, hgt) => drawGrid(ctx, w, hgt, states, grid));
  grid.box.id = "grid";
  const legend = h("ul", { class: "legend plain" }, Object.entries(CHUNK_NAMES).map(([k, name]) => {
    // Set through the style object: the page's CSP refuses style attributes.
    const swatch = h("span", { class: "swatch" });
    swatch.style.background = CHUNK_COLOURS[k];
    return h("li", {}, swatch, name);
  }));
  const retries = h("div", { id: "retries" });
  const attemptsList = h("ol", { class: "events", id: "attempt-events" });
  const result = h("div", { id: "result" });
  const logs = h("pre", { id: "logs", class: "logs", hidden: true, tabindex: 0 });
  main.replaceChildren(
    h("p", {}, h("a", { href: "#/jobs" }, "← Jobs")),
    heading,
    h("div", { class: "job-head" }, badge, cancel),
    meta,
    h("section", { "aria-labelledby": "p-title" },
      h("h2", { id: "p-title" }, "Progress"), bar, progressText),
    h("section", { "aria-labelledby": "g-title" },
      h("h2", { id: "g-title" }, "Chunks"), grid.box, legend),
    h("section", { "aria-labelledby": "r-title" },
      h("h2", { id: "r-title" }, "Retries"), retries),
    h("section", { "aria-labelledby": "a-title" },
      h("h2", { id: "a-title" }, "Recent attempts"), attemptsList),
    h("section", { "aria-labelledby": "o-title" },
      h("h2", { id: "o-title" }, "Output"), logs),
    h("section", { "aria-labelledby": "res-title" },
      h("h2", { id: "res-title" }, "Result"), result));

  let status = null;
  let lastGrid = 0;
  let gridTimer = null;
  let retriedShown = -1;
  let retriesKey = null;

  const refreshGrid = async () => {
    lastGrid = Date.now();
    const read = await api(`/v1/jobs/${id}/chunks`, { signal });
    states = read.states;
    let done = 0;
    for (let i = 0; i < states.length; i++) if (states.charCodeAt(i) === 115) done++;
    grid.box.dataset.total = String(states.length);
    grid.box.dataset.succeeded = String(done);
    grid.canvas.setAttribute("aria-label",
      `Chunks by state: ${done} of ${states.length} succeeded`);
    grid.paint();
  };
  const gridSoon = () => {
    if (gridTimer) return;
    const wait = Math.max(0, 500 - (Date.now() - lastGrid));
    gridTimer = setTimeout(() => {
      gridTimer = null;
      refreshGrid().catch(() => {});
    }, wait);
  };
  let statusTimer = null;
  const statusSoon = () => {
    if (statusTimer) return;
    statusTimer = setTimeout(() => {
      statusTimer = null;
      refreshStatus().catch(() => {});
    }, 500);
  };
  const refreshStatus = async () => {
    const job = await api(`/v1/jobs/${id}`, { signal });
    const submitted = new Date(Date.parse(job.created_at)).toLocaleString();
    const backups = job.backups && job.backups.started
      ? ` · ${job.backups.started} speculative backups, ${job.backups.won} won`
      : "";
    meta.textContent = `${job.kind || job.task} · priority ${job.priority} · submitted ${submitted}${backups}`;
    // Redrawn when a retry or an attempt's end is new: a table of a thousand retries is not
    // rebuilt for nothing.
    const key = job.retries.map((r) => r.attempts.map((a) => (a.finished_at ? "e" : "r")).join("")).join("|");
    if (key !== retriesKey) {
      retriesKey = key;
      retriedShown = job.retries.length;
      retries.replaceChildren(retryTable(job.retries));
    }
    return job;
  };
  const showProgress = (p) => {
    status = p.status;
    badge.textContent = p.status;
    badge.className = `badge ${p.status}`;
    const c = p.chunks;
    bar.max = Math.max(1, c.total);
    bar.value = c.succeeded;
    const parts = [`${c.succeeded} / ${c.total} chunks done`];
    if (c.running) parts.push(`${c.running} running`);
    if (c.failed) parts.push(`${c.failed} failed`);
    if (p.retried) parts.push(`${p.retried} retried`);
    if (p.eta_seconds !== undefined) parts.push(`ETA ${duration(p.eta_seconds)}`);
    if (p.error) parts.push(`error: ${p.error}`);
    progressText.textContent = parts.join(" · ");
    cancel.disabled = TERMINAL.has(p.status);
    if (p.retried !== retriedShown || TERMINAL.has(p.status)) statusSoon();
    gridSoon();
  };

  cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    try {
      await api(`/v1/jobs/${id}`, { method: "DELETE", signal });
      say(`Job ${shortId(id)} cancelled.`);
    } catch (e) {
      say(`Could not cancel: ${e.message}`);
      cancel.disabled = TERMINAL.has(status);
    }
  });

  refreshStatus().then(() => refreshGrid()).catch((e) => {
    if (signal.aborted) return;
    main.replaceChildren(h("h1", {}, "Job not found"), h("p", { class: "error", role: "alert" }, e.message));
  });
  follow(`/v1/jobs/${id}/events`, (name, data) => {
    switch (name) {
      case "progress": showProgress(data); break;
      case "attempt": {
        // A retry starting or ending changes the retries table.
        if (data.attempt > 1 || data.state === "failed") statusSoon();
        if (data.state === "started") break;
        const item = h("li", { class: data.state === "failed" ? "bad" : "" },
          `chunk ${data.chunk} attempt ${data.attempt} on ${data.worker}: ${data.state}`,
          data.reason ? ` (${data.reason})` : "");
        attemptsList.prepend(item);
        while (attemptsList.children.length > 30) attemptsList.lastChild.remove();
        break;
      }
      case "log": {
        logs.hidden = false;
        logs.append(`[batch ${data.batch}] ${data.text}\n`);
        while (logs.childNodes.length > 500) logs.firstChild.remove();
        break;
      }
      case "end":
        cancel.disabled = true;
        refreshStatus().catch(() => {});
        refreshGrid().catch(() => {});
        if (data.status === "succeeded") showResult(id, result, signal);
        else result.replaceChildren(h("p", { class: "empty" },
          data.status === "failed" ? "No result: the job failed." : "No result: the job was cancelled."));
        break;
      default: break;
    }
  }, signal);
}

function retryTable(retries) {
  const rows = [];
  for (const r of retries) {
    for (const a of r.attempts) {
      const reason = a.error ? `${a.error.class.replace(/_/g, " ")}${a.error.message ? `: ${a.error.message}` : ""}` : "succeeded";
      rows.push(h("tr", { class: a.error ? "bad" : "" },
        h("th", { scope: "row" }, r.chunk),
        h("td", { class: "num" }, a.attempt),
        h("td", {}, a.worker_name),
        h("td", { class: "wrap" }, a.finished_at ? reason : "running"),
        h("td", {}, h("time", { datetime: a.started_at }, new Date(Date.parse(a.started_at)).toLocaleTimeString()))));
    }
  }
  return table("Chunks that needed more than one attempt", ["Chunk", "Attempt", "Worker", "Outcome", "Started"],
    rows, "No chunk needed a retry.");
}

/** Draws the chunk grid; past what fits at 4 px a cell, each cell stands for a run of chunks. */
function drawGrid(ctx, width, height, states, grid) {
  const n = states.length;
  ctx.clearRect(0, 0, width, height);
  if (!n) return;
  let cell = Math.max(4, Math.min(16, Math.floor(Math.sqrt((width * 240) / n))));
  let perRow = Math.max(1, Math.floor(width / cell));
  const maxRows = Math.floor(400 / cell);
  const per = Math.max(1, Math.ceil(n / (perRow * maxRows)));
  const cells = Math.ceil(n / per);
  const rows = Math.ceil(cells / perRow);
  const tall = rows * cell;
  if (grid.canvas._height !== tall) {
    grid.canvas._height = tall;
    requestAnimationFrame(() => grid.paint());
    return;
  }
  for (let i = 0; i < cells; i++) {
    let letter = "s";
    if (per === 1) {
      letter = states[i];
    } else {
      let best = CHUNK_RANK.length;
      for (let j = i * per; j < Math.min(n, (i + 1) * per); j++) {
        const rank = CHUNK_RANK.indexOf(states[j]);
        if (rank < best) best = rank;
      }
      letter = CHUNK_RANK[best] || "s";
    }
    ctx.fillStyle = CHUNK_COLOURS[letter] || "#000";
    const gap = 1;
    ctx.fillRect((i % perRow) * cell, Math.floor(i / perRow) * cell, cell - gap, cell - gap);
  }
  grid.box.dataset.perCell = String(per);
}

async function showResult(id, box, signal) {
  try {
    const response = await api(`/v1/jobs/${id}/result`, { signal, raw: true });
    const text = await response.text();
    const parsed = JSON.parse(text).result;
    const pretty = JSON.stringify(parsed, null, 2);
    const preview = pretty.length > 4000 ? `${pretty.slice(0, 4000)}\n… (${pretty.length} characters in all)` : pretty;
    const download = h("button", { type: "button", id: "download" }, "Download result");
    download.addEventListener("click", () => {
      const url = URL.createObjectURL(new Blob([JSON.stringify(parsed)], { type: "application/json" }));
      const a = h("a", { href: url, download: `muster-${id}.json` });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    });
    box.replaceChildren(h("pre", { class: "result", id: "result-preview", tabindex: 0 }, preview), download);
  } catch (e) {
    box.replaceChildren(h("p", { class: "error" }, `Cannot read the result: ${e.message}`));
  }
}

// ---------- routing ----------

async function route() {
  view?.abort();
  view = new AbortController();
  if (!token()) {
    // A coordinator run with --insecure needs no token.
    try {
      await api("/v1/overview?seconds=1", { tokenOverride: "" });
    } catch (e) {
      showSignIn(e.status === 401 ? "" : `Cannot reach the coordinator: ${e.message}`);
      return;
    }
  }
  nav.hidden = false;
  const [path, query] = location.hash.replace(/^#/, "").split("?");
  const params = new URLSearchParams(query || "");
  const parts = (path || "/").split("/").filter(Boolean);
  const current = parts[0] === "jobs" ? "jobs" : "overview";
  for (const link of nav.querySelectorAll("a")) {
    if (link.dataset.view === current) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  say("");
  if (parts[0] === "jobs" && parts[1]) jobView(view.signal, decodeURIComponent(parts[1]));
  else if (parts[0] === "jobs") jobsView(view.signal, params);
  else overviewView(view.signal);
  main.focus({ preventScroll: true });
}

window.addEventListener("hashchange", route);
route();
