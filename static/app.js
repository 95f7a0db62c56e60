// seckill status page: follows /api/stats/stream (Server-Sent Events) and
// renders every item's sale; restock, race and fault lab controls call the
// admin API.
"use strict";

// Filled from GET /api/strategies, the server's catalogue.
let STRATEGIES = [];
// Checked at first: the control group, the fast path, and a gated lock.
const FEATURED = new Set(["naive", "lua", "lock-gated"]);
const TOKEN_KEY = "seckill-admin-token";
// The last snapshot, drawn again when a view setting changes.
let lastSnapshot = null;

const $ = (selector) => document.querySelector(selector);
const esc = (value) => String(value).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const num = (value, digits = 0) =>
  value === null || value === undefined ? "–" : Number(value).toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits });

// ---- connection -----------------------------------------------------------

function setConnection(state) {
  const pill = $("#connection");
  const text = { live: "live", down: "disconnected, reconnecting…", wait: "connecting…" }[state];
  pill.textContent = text;
  pill.className = `pill ${state === "live" ? "pill-ok" : state === "down" ? "pill-bad" : "pill-wait"}`;
  pill.dataset.state = state;
}

function connect() {
  const source = new EventSource("/api/stats/stream");
  source.onopen = () => setConnection("live");
  source.addEventListener("stats", (event) => {
    setConnection("live");
    lastSnapshot = JSON.parse(event.data);
    render(lastSnapshot);
  });
  source.onerror = () => {
    setConnection("down");
    // The browser retries by itself while the stream is merely broken; once it
    // gives up (CLOSED), start over.
    if (source.readyState === EventSource.CLOSED) {
      setTimeout(connect, 2000);
    }
  };
}

// ---- rendering ------------------------------------------------------------

function render(snapshot) {
  const banner = $("#feed-error");
  banner.hidden = !snapshot.error;
  banner.textContent = snapshot.error ? `The server says: ${snapshot.error}` : "";
  renderRace(snapshot.race);
  renderFaults(snapshot.faults);
  const items = shownItems(snapshot.items || [], snapshot.race);
  const container = $("#items");
  if (items.length === 0) {
    container.innerHTML = '<p class="empty">No items yet: restock one, or start a race.</p>';
    return;
  }
  container.innerHTML = items.map((item) => itemCard(item, snapshot.expiry_lag_ms)).join("");
  for (const item of items) {
    for (const [strategy, live] of Object.entries(item.live || {})) {
      const canvas = container.querySelector(`canvas[data-item="${CSS.escape(item.item_id)}"][data-strategy="${strategy}"]`);
      if (canvas) sparkline(canvas, live.history || []);
    }
  }
}

// Each race adds one item per strategy. The items of earlier races are
// hidden unless asked for, so the page shows the sale at hand and the race
// just run, not every race since the server started.
function shownItems(items, race) {
  const prefix = race && race.item_prefix ? `${race.item_prefix}-` : null;
  const current = new Set(
    [...((race && race.results) || []).map((r) => r.item), race && race.item].filter(Boolean),
  );
  const earlier = prefix
    ? items.filter((i) => i.item_id.startsWith(prefix) && !current.has(i.item_id))
    : [];
  const toggle = $("#earlier-races");
  toggle.hidden = earlier.length === 0;
  $("#earlier-count").textContent = num(earlier.length);
  if ($("#show-earlier").checked) return items;
  const hidden = new Set(earlier.map((i) => i.item_id));
  return items.filter((i) => !hidden.has(i.item_id));
}

// `expiryLagMs`: how late this server's last expiry call took its most
// overdue order (null before any; the server's, not the item's), shown on
// items with a payment window.
function itemCard(item, expiryLagMs) {
  const left = Math.max(0, item.stock);
  const pct = item.initial_stock > 0 ? Math.min(100, (100 * left) / item.initial_stock) : 0;
  const bad = item.oversold > 0;
  const rows = Object.entries(item.strategies || {})
    .map(([strategy, c]) => {
      const live = (item.live || {})[strategy] || {};
      return `<tr data-strategy="${esc(strategy)}">
        <td>${esc(strategy)}</td>
        <td data-field="attempts">${num(c.attempts)}</td>
        <td data-field="purchased">${num(c.purchased)}</td>
        <td data-field="sold_out">${num(c.sold_out)}</td>
        <td data-field="limit_reached">${num(c.limit_reached)}</td>
        <td data-field="contention">${num(c.contention)}</td>
        <td data-field="retries">${num(c.retries)}</td>
        <td data-field="rps">${num(live.requests_per_s)}</td>
        <td>${num(live.p50_ms, 1)}</td>
        <td>${num(live.p99_ms, 1)}</td>
        <td><canvas class="spark" width="110" height="26" data-item="${esc(item.item_id)}" data-strategy="${esc(strategy)}" aria-label="requests per second, last 30 s"></canvas></td>
      </tr>`;
    })
    .join("");
  return `<article class="item ${bad ? "oversold" : ""}" data-item="${esc(item.item_id)}">
    <div class="item-head"><h3>${esc(item.item_id)}</h3><span class="gen">sale #${num(item.generation)} · limit ${num(item.per_user_limit)}/user · ${item.strategy ? `bound to ${esc(item.strategy)}` : "not bound yet"}</span></div>
    <div class="bar" role="img" aria-label="${num(left)} of ${num(item.initial_stock)} left"><span style="width:${pct}%"></span></div>
    <div class="bar-label"><span data-field="stock">${num(item.stock)}</span> of ${num(item.initial_stock)} left</div>
    <div class="headline">
      <div class="oversell ${bad ? "bad" : ""}">
        <div class="n" data-field="oversold">${num(item.oversold)}</div>
        <div class="label">${bad ? "oversold!" : "oversold: none"}</div>
      </div>
      <dl class="facts">
        <div><dt>sold</dt><dd data-field="sold">${num(item.sold)}</dd></div>
        <div><dt>drift</dt><dd class="${item.drift !== 0 ? "warn" : ""}"><span data-field="drift">${num(item.drift)}</span>${item.drift !== 0 ? " (lost updates)" : ""}</dd></div>
        <div><dt>undersold</dt><dd data-field="undersold" class="${item.undersold > 0 ? "warn" : ""}">${num(item.undersold)}</dd></div>
        ${item.payment_window_ms > 0 ? `<div><dt>reserved</dt><dd data-field="reserved">${num(item.reserved)}</dd></div>
        <div><dt>paid</dt><dd data-field="paid">${num(item.paid)}</dd></div>
        <div><dt>returned</dt><dd data-field="returned">${num(item.returned)}</dd></div>
        <div><dt>pay within</dt><dd>${num(item.payment_window_ms / 1000, 1)} s</dd></div>
        <div><dt>expiry lag</dt><dd title="how late this server's last expiry call took its most overdue order (any item)">${expiryLagMs == null ? "none yet" : `${num(expiryLagMs)} ms`}</dd></div>` : ""}
        <div><dt>persisted</dt><dd data-field="persisted">${num(item.persisted)}</dd></div>
        <div><dt>lag</dt><dd data-field="lag">${num(item.lag)}</dd></div>
      </dl>
    </div>
    ${rows ? `<div class="table-wrap"><table>
      <thead><tr><th>strategy</th><th>attempts</th><th>purchased</th><th>sold out</th><th>limit</th><th>contention</th><th>retries</th><th>req/s</th><th>p50 ms</th><th>p99 ms</th><th>req/s, 30 s</th></tr></thead>
      <tbody>${rows}</tbody></table></div>` : '<p class="hint">No purchases yet.</p>'}
  </article>`;
}

function sparkline(canvas, values) {
  const ctx = canvas.getContext("2d");
  const { width, height } = canvas;
  ctx.clearRect(0, 0, width, height);
  if (values.length < 2) return;
  const max = Math.max(1, ...values);
  ctx.strokeStyle = "#2f5fb3";
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  values.forEach((v, i) => {
    const x = (i / (values.length - 1)) * (width - 2) + 1;
    const y = height - 2 - (v / max) * (height - 4);
    i === 0 ? ctx.moveTo(x, y) : ctx.lineTo(x, y);
  });
  ctx.stroke();
}

function renderRace(race) {
  const box = $("#race-status");
  if (!race || (!race.running && !race.results.length && !race.error)) {
    box.innerHTML = "";
    return;
  }
  const progress = race.running && race.strategy
    ? `<label>${esc(race.phase)}: ${num(race.purchased)} of ${num(race.stock)} sold
         <progress max="${race.stock}" value="${race.purchased}"></progress></label>`
    : `<p class="hint">${esc(race.phase)}${race.error ? `: ${esc(race.error)}` : ""}</p>`;
  const rows = race.results
    .map((r) => `<tr><td>${esc(r.strategy)}</td><td>${num(r.requests_per_s)}</td><td>${num(r.ceiling_ratio, 3)}</td>
      <td>${num(r.p99_ms, 1)}</td><td>${r.oversold > 0 ? `${num(r.oversold)} OVERSOLD` : "0"}</td><td>${num(r.undersold)}</td>
      <td class="verdict ${r.linearizable ? "" : "warn"}" title="${esc(r.violation || "")}">${r.linearizable ? "yes" : `NO: ${esc(r.violation || "")}`}</td>
      <td>${num(r.refused_with_stock)}</td><td>${num(r.phantom_sold_out)}</td>
      <td>${num(r.sold)}</td><td>${num(r.returned)}</td></tr>`)
    .join("");
  box.innerHTML = progress + (rows
    ? `<div class="table-wrap"><table><thead><tr><th>strategy</th><th>req/s</th><th>× /healthz</th><th>p99 ms</th><th>oversold</th><th>undersold</th><th>linearizable</th><th>refused with stock</th><th>phantom sold-outs</th><th>sold</th><th>units back</th></tr></thead><tbody>${rows}</tbody></table></div>`
    : "");
}

// ---- fault lab --------------------------------------------------------------

// The fault choices are drawn once, from the first snapshot (the faults the
// server knows and its defaults) and the strategy catalogue, so a refresh of
// the feed does not undo what the user ticked.
let faultChoicesDrawn = false;

function drawFaultChoices(status) {
  if (faultChoicesDrawn || !status || STRATEGIES.length === 0) return;
  faultChoicesDrawn = true;
  const box = (group, name, checked, title = "") =>
    `<label title="${esc(title)}"><input type="checkbox" name="${group}-${esc(name)}" ${checked ? "checked" : ""}> ${esc(name)}</label>`;
  const strategies = new Set(status.default_strategies);
  $("#faults-strategies").insertAdjacentHTML(
    "beforeend",
    STRATEGIES.map((s) => box("fs", s, strategies.has(s))).join(" "),
  );
  const faults = new Set(status.default_faults);
  $("#faults-faults").insertAdjacentHTML(
    "beforeend",
    status.available_faults.map((f) => box("ff", f, faults.has(f))).join(" "),
  );
}

const percent = (share) => (share === null || share === undefined ? "–" : `${num(100 * share)}%`);

// What a cell's tooltip says: how the lab knows the fault happened, the
// figures behind the verdict, and the command that runs the cell again.
function cellTitle(cell) {
  return [
    cell.evidence && `evidence: ${cell.evidence}`,
    cell.error && `error: ${cell.error}`,
    `oversold ${num(cell.oversold)}, lost 201s ${num(cell.lost_201s)}, duplicate ids ${num(cell.duplicate_ids)}`,
    `served during ${percent(cell.served_during)}, after ${percent(cell.served_after)}; recovery ${num(cell.recovery_s, 2)} s; p99 during ${num(cell.p99_during_ms, 1)} ms`,
    `repro: ${cell.repro}`,
  ].filter(Boolean).join("\n");
}

function renderFaults(status) {
  drawFaultChoices(status);
  const box = $("#faults-status");
  const start = $("#faults button[type=submit]");
  if (!status) return;
  start.disabled = !status.enabled || status.running;
  $("#faults-cancel").disabled = !status.running;
  if (!status.enabled) {
    box.innerHTML = '<p class="hint">The fault lab is off on this server (FAULT_LAB=false).</p>';
    return;
  }
  if (!status.phase) {
    box.innerHTML = "";
    return;
  }
  const cells = new Map(status.cells.map((c) => [`${c.strategy}|${c.fault}`, c]));
  const head = status.faults.map((f) => `<th scope="col">${esc(f)}</th>`).join("");
  const rows = status.strategies
    .map((s) => {
      const tds = status.faults
        .map((f) => {
          const cell = cells.get(`${s}|${f}`);
          const where = `data-strategy="${esc(s)}" data-fault="${esc(f)}"`;
          if (!cell) return `<td class="cell pending" ${where}>${status.running ? "…" : "–"}</td>`;
          return `<td class="cell ${esc(cell.judgement)}" ${where} title="${esc(cellTitle(cell))}">${esc(cell.words)}</td>`;
        })
        .join("");
      return `<tr><th scope="row">${esc(s)}</th>${tds}</tr>`;
    })
    .join("");
  box.innerHTML = `<p class="hint">${esc(status.phase)}${status.error ? `: ${esc(status.error)}` : ""}</p>
    <div class="table-wrap"><table><thead><tr><th></th>${head}</tr></thead><tbody>${rows}</tbody></table></div>`;
}

// ---- admin calls ----------------------------------------------------------

async function admin(method, path, body) {
  for (let attempt = 0; attempt < 2; attempt++) {
    const headers = { "content-type": "application/json" };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.authorization = `Bearer ${token}`;
    const response = await fetch(path, { method, headers, body: JSON.stringify(body) });
    if (response.status === 401 && attempt === 0) {
      const entered = prompt("This server needs its admin token (ADMIN_TOKEN):");
      if (!entered) return response;
      sessionStorage.setItem(TOKEN_KEY, entered);
      continue;
    }
    return response;
  }
}

async function describe(response) {
  try {
    const body = await response.json();
    return body.error ? `${response.status} ${body.error.code}: ${body.error.message}` : `${response.status} ok`;
  } catch {
    return `${response.status}`;
  }
}

$("#show-earlier").addEventListener("change", () => {
  if (lastSnapshot) render(lastSnapshot);
});

$("#restock").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = new FormData(event.target);
  const item = String(form.get("item"));
  const response = await admin("PUT", `/api/items/${encodeURIComponent(item)}`, {
    stock: Number(form.get("stock")),
    per_user_limit: Number(form.get("limit")),
  });
  $("#restock-message").textContent = response.ok ? `${item}: restocked (${response.status})` : await describe(response);
});

$("#race").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = new FormData(event.target);
  const strategies = STRATEGIES.filter((s) => form.get(`s-${s}`));
  const response = await admin("POST", "/api/race", {
    strategies,
    stock: Number(form.get("stock")),
    concurrency: Number(form.get("concurrency")),
    duration_s: Number(form.get("duration")),
    payment_window_ms: Number(form.get("window")),
  });
  if (!response.ok) $("#race-status").textContent = await describe(response);
});

$("#faults").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = new FormData(event.target);
  const status = lastSnapshot && lastSnapshot.faults;
  const response = await admin("POST", "/api/faults", {
    strategies: STRATEGIES.filter((s) => form.get(`fs-${s}`)),
    faults: ((status && status.available_faults) || []).filter((f) => form.get(`ff-${f}`)),
  });
  $("#faults-message").textContent = response.ok ? "" : await describe(response);
});

$("#faults-cancel").addEventListener("click", async () => {
  const response = await admin("DELETE", "/api/faults");
  $("#faults-message").textContent = response.ok ? "" : await describe(response);
});

async function loadStrategies() {
  try {
    const response = await fetch("/api/strategies");
    const catalogue = await response.json();
    STRATEGIES = catalogue.strategies.filter((s) => s.enabled).map((s) => s.name);
    $("#race-strategies").insertAdjacentHTML(
      "beforeend",
      catalogue.strategies
        .filter((s) => s.enabled)
        .map((s) => `<label title="${esc(s.guard)}"><input type="checkbox" name="s-${esc(s.name)}" ${FEATURED.has(s.name) ? "checked" : ""}> ${esc(s.name)}</label>`)
        .join(" "),
    );
    if (lastSnapshot) drawFaultChoices(lastSnapshot.faults);
  } catch (err) {
    $("#race-status").textContent = "cannot load the strategies; reload the page";
  }
}

loadStrategies();

connect();
