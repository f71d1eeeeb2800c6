// sandfleet's dashboard: polls GET /apiv2/dashboard/ and redraws the page
// from each reply. No framework, no build step.
//
// Everything shown is written with textContent, never as markup: task
// targets are file names chosen by whoever submitted a sample, errors come
// from guests, and neither may inject anything into an operator's browser.
"use strict";

(function () {
  const ENDPOINT = "/apiv2/dashboard/";
  // Short enough that a task's progress is seen as it happens; the reply is
  // a few bounded queries, so polling costs the daemon little.
  const EVERY_MS = 1500;
  // sessionStorage: the token lives as long as the tab, is never written to
  // disk by the page, and is not shared with other tabs or sites.
  const TOKEN_KEY = "sandfleet.token";

  const $ = (id) => document.getElementById(id);
  let timer = null;
  let polling = false;
  // The server's clock minus ours, so ages are right on a skewed laptop.
  let skew = 0;
  // What each section was last drawn from: a section is redrawn only when
  // its data changed, so an operator can select and copy an error while the
  // page keeps updating.
  const drawn = {};

  // el builds an element: props are properties (className, title, …) or,
  // for keys starting with "data-", attributes; children are nodes or text.
  function el(tag, props, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === undefined || v === null) continue;
      if (k.startsWith("data-")) e.setAttribute(k, v);
      else e[k] = v;
    }
    for (const c of children) {
      if (c === undefined || c === null || c === false) continue;
      e.append(c instanceof Node ? c : String(c));
    }
    return e;
  }

  const token = () => sessionStorage.getItem(TOKEN_KEY);
  const now = () => Date.now() + skew;

  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(poll, EVERY_MS);
  }

  async function poll() {
    if (polling) return;
    polling = true;
    try {
      await refresh();
    } finally {
      polling = false;
    }
  }

  async function refresh() {
    const headers = { Accept: "application/json" };
    const t = token();
    if (t) headers.Authorization = "Token " + t;
    let resp, body;
    try {
      resp = await fetch(ENDPOINT, { headers, cache: "no-store", credentials: "omit" });
    } catch (e) {
      offline("cannot reach the daemon");
      return schedule();
    }
    if (resp.status === 401) {
      // Polling stops until a token is given: asking again every second
      // with a refused one would only fill the daemon's log.
      sessionStorage.removeItem(TOKEN_KEY);
      return askToken(t ? "That token was refused." : "");
    }
    try {
      body = await resp.json();
    } catch (e) {
      offline("HTTP " + resp.status);
      return schedule();
    }
    // CAPE's envelope: "error": [] on success (truthy in JavaScript), true on failure.
    if (!resp.ok || body.error === true) {
      offline(body.error_value || "HTTP " + resp.status);
      return schedule();
    }
    render(body.data);
    schedule();
  }

  function askToken(message) {
    clearTimeout(timer);
    $("board").hidden = true;
    $("logout").hidden = true;
    $("login").hidden = false;
    const err = $("login-error");
    err.textContent = message;
    err.hidden = !message;
    setHealth("token needed", "warn");
    $("token").focus();
  }

  function offline(why) {
    setHealth("offline", "bad");
    drawBanners([{ kind: "bad", text: "No fresh data: " + why + ". Retrying…" }]);
    document.body.classList.add("stale");
  }

  function setHealth(text, kind) {
    const h = $("health");
    h.textContent = text;
    h.className = "pill " + kind;
  }

  function render(d) {
    skew = Date.parse(d.now) - Date.now();
    document.body.classList.remove("stale");
    $("login").hidden = true;
    $("board").hidden = false;
    $("logout").hidden = !token();
    $("version").textContent = d.version;
    $("updated").textContent = "updated " + new Date(now()).toLocaleTimeString();

    const banners = [];
    if (!d.ready) banners.push({ kind: "warn", text: "Starting: the first reconcile has not finished yet." });
    if (d.paused) banners.push({ kind: "warn", text: "Dispatch is paused (SIGUSR1): no task is handed a machine until SIGUSR2." });
    for (const t of d.throttled) banners.push({ kind: "warn", text: "Pool " + t.pool + ": " + t.reason + ". The last view stands; nothing is written." });
    drawBanners(banners);
    if (!d.ready) setHealth("starting", "warn");
    else if (d.throttled.length) setHealth("throttled", "warn");
    else if (d.paused) setHealth("paused", "warn");
    else setHealth("live", "ok");

    section("summary", [d.queue, d.machines.map((m) => m.state), d.operations.length], () => drawSummary(d));
    section("pools", d.pools, () => drawPools(d.pools));
    section("machines", d.machines, () => drawMachines(d.machines));
    section("hourly", d.hourly, () => drawHourly(d.hourly));
    section("operations", d.operations, () => drawOperations(d.operations));
    section("tasks", d.tasks, () => drawTasks(d.tasks));
    tick();
  }

  function section(name, data, draw) {
    const key = JSON.stringify(data);
    if (drawn[name] === key) return;
    drawn[name] = key;
    draw();
  }

  function drawBanners(list) {
    const key = JSON.stringify(list);
    if (drawn.banners === key) return;
    drawn.banners = key;
    $("banners").replaceChildren(...list.map((b) => el("div", { className: "banner " + b.kind }, b.text)));
  }

  function fill(tableID, rows, columns, empty) {
    const body = $(tableID).tBodies[0];
    if (!rows.length) {
      body.replaceChildren(el("tr", { className: "empty" }, el("td", { colSpan: columns }, empty)));
      return;
    }
    body.replaceChildren(...rows);
  }

  // Machine states in lifecycle order, for the counts by state.
  const LIFECYCLE = ["provisioning", "ready", "leased", "dirty", "reimaging", "deleting", "quarantined", "gone"];
  const byLifecycle = (counts) =>
    Object.entries(counts).sort(([a], [b]) => LIFECYCLE.indexOf(a) - LIFECYCLE.indexOf(b));

  const badge = (kind, text, attrs) => el("span", Object.assign({ className: "badge " + kind }, attrs || {}), text);

  function drawSummary(d) {
    const cards = d.queue.map((q) =>
      el("div", { className: "card" }, el("div", { className: "count " + q.status }, q.count), el("div", { className: "label" }, q.status.replaceAll("_", " "))));
    const states = {};
    for (const m of d.machines) states[m.state] = (states[m.state] || 0) + 1;
    const machines = el("div", { className: "card wide" },
      el("div", { className: "count" }, d.machines.length),
      el("div", { className: "label" }, "machines"),
      el("div", { className: "chips" }, ...byLifecycle(states).map(([s, n]) => badge(s, s + " " + n))));
    const ops = el("div", { className: "card" }, el("div", { className: "count" }, d.operations.length), el("div", { className: "label" }, "operations in flight"));
    $("summary").replaceChildren(...cards, machines, ops);
  }

  function drawPools(pools) {
    const rows = pools.map((p) => {
      const chips = byLifecycle(p.machines).map(([s, n]) => badge(s, s + " " + n));
      return el("tr", { "data-pool": p.name },
        el("td", { className: "strong", title: [p.platform, p.arch, p.tags.join(", ")].join(" · ") }, p.name),
        el("td", {}, p.provider),
        el("td", { className: "num" }, p.desired_size),
        el("td", { className: "num", title: p.view_at ? "provider read at " + p.view_at + " UTC" : "not read yet" }, p.view_at ? p.actual_size : "?"),
        el("td", { className: "num" + (p.drift ? " bad-text" : "") }, p.drift),
        el("td", { className: "chips" }, ...chips),
        el("td", {}, p.throttled ? badge("warn", "throttled", { title: p.reason }) : el("span", { className: "muted" }, "no")));
    });
    fill("pools", rows, 7, "no pools");
  }

  function drawMachines(ms) {
    const rows = ms.map((m) => {
      // What a machine that is not ready waits on, as the server says it.
      let note = m.reason || "";
      if (!note && m.failures) note = m.failures + " failed operation" + (m.failures > 1 ? "s" : "") + " in a row";
      return el("tr", { "data-label": m.label },
        el("td", { className: "strong mono", title: "instance " + m.instance_id }, m.label),
        el("td", {}, m.pool),
        el("td", { className: "state" }, badge(m.state, m.state, { "data-state": m.state })),
        el("td", { className: "mono" }, m.task_id ? "#" + m.task_id : ""),
        el("td", { "data-since": m.state_changed_on, title: local(m.state_changed_on) }),
        el("td", { className: "mono muted" }, m.ip),
        el("td", { className: m.state === "quarantined" ? "bad-text" : "muted" }, note));
    });
    fill("machines", rows, 7, "no machines yet");
  }

  function drawHourly(hours) {
    const max = Math.max(1, ...hours.map((h) => h.completed + h.failed));
    const cols = hours.map((h) => {
      const total = h.completed + h.failed;
      const at = new Date(h.hour);
      const label = String(at.getHours()).padStart(2, "0");
      return el("div", { className: "col", title: at.toLocaleString() + ": " + h.completed + " completed, " + h.failed + " failed" },
        el("div", { className: "total" }, total || ""),
        el("div", { className: "bar" }, seg("failed", h.failed / max), seg("completed", h.completed / max)),
        el("div", { className: "hour" }, label));
    });
    $("hourly").replaceChildren(...cols);
  }

  // seg is one part of a bar, its height a fraction of the column. Set
  // through the style object: the page's CSP refuses style attributes.
  function seg(kind, fraction) {
    const e = el("div", { className: "seg " + kind });
    e.style.height = 100 * fraction + "%";
    return e;
  }

  function drawOperations(ops) {
    const rows = ops.map((o) =>
      el("tr", { "data-op": o.id },
        el("td", { className: "num mono" }, o.id),
        el("td", {}, o.pool),
        el("td", {}, o.kind + (o.capacity ? " → " + o.capacity : "")),
        el("td", {}, badge(o.state === "running" ? "leased" : "dirty", o.state, { title: o.resumable ? "resume token stored" : "no resume token yet" })),
        el("td", { className: "mono" }, o.instance_ids.join(", ")),
        el("td", { className: "num" }, o.attempt),
        el("td", { "data-since": o.created_at, title: local(o.created_at) }),
        el("td", { "data-until": o.deadline, title: local(o.deadline) })));
    fill("operations", rows, 8, "none: the cloud is quiet");
  }

  function outcome(t) {
    if (t.error) return el("span", { className: "bad-text" }, t.error);
    switch (t.status) {
      case "completed":
      case "reported":
        return el("span", { className: "muted" }, "analysis complete");
      case "running":
        return el("span", { className: "muted" }, "analysing");
      case "pending":
        if (t.reason) return el("span", { className: "muted" }, t.reason);
        return el("span", { className: "muted" }, t.machine ? "waiting for " + t.machine : "waiting for a machine");
    }
    return "";
  }

  function drawTasks(ts) {
    const rows = ts.map((t) => {
      const took = t.started_on
        ? el("td", { "data-from": t.started_on, "data-to": t.completed_on, title: "started " + local(t.started_on) })
        : el("td", { className: "muted" }, "");
      return el("tr", { "data-task": t.id },
        el("td", { className: "num mono" }, t.id),
        el("td", { className: "target", title: t.target }, t.target),
        el("td", { className: "status" }, badge(t.status, t.status.replaceAll("_", " "), { "data-status": t.status })),
        el("td", { className: "mono" }, t.status === "pending" ? "" : t.machine || ""),
        el("td", { className: "num" + (t.attempt > 1 ? " warn-text" : "") }, t.attempt),
        el("td", { "data-since": t.added_on, title: local(t.added_on) }),
        took,
        el("td", { className: "outcome" }, outcome(t)));
    });
    fill("tasks", rows, 8, "no tasks yet: submit one with `sandfleet submit FILE`");
  }

  function local(iso) {
    return iso ? new Date(iso).toLocaleString() : "";
  }

  // duration formats milliseconds as the two largest units: "3m 07s".
  function duration(ms) {
    const s = Math.max(0, Math.round(ms / 1000));
    if (s < 60) return s + "s";
    const m = Math.floor(s / 60);
    if (m < 60) return m + "m " + String(s % 60).padStart(2, "0") + "s";
    const h = Math.floor(m / 60);
    if (h < 48) return h + "h " + String(m % 60).padStart(2, "0") + "m";
    return Math.floor(h / 24) + "d " + (h % 24) + "h";
  }

  // tick refreshes every age on the page from the server's clock, between
  // polls as well, without redrawing the tables.
  function tick() {
    const t = now();
    for (const e of document.querySelectorAll("[data-since]")) {
      const at = Date.parse(e.getAttribute("data-since"));
      e.textContent = isNaN(at) ? "" : duration(t - at) + " ago";
    }
    for (const e of document.querySelectorAll("[data-until]")) {
      const at = Date.parse(e.getAttribute("data-until"));
      e.textContent = isNaN(at) ? "" : at > t ? "in " + duration(at - t) : "passed";
      e.classList.toggle("bad-text", at <= t);
    }
    for (const e of document.querySelectorAll("[data-from]")) {
      const from = Date.parse(e.getAttribute("data-from"));
      const to = e.hasAttribute("data-to") ? Date.parse(e.getAttribute("data-to")) : t;
      e.textContent = duration(to - from);
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("login").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const t = $("token").value.trim();
      if (!t) return;
      sessionStorage.setItem(TOKEN_KEY, t);
      $("token").value = "";
      $("login").hidden = true;
      setHealth("connecting…", "");
      poll();
    });
    $("logout").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      for (const k of Object.keys(drawn)) delete drawn[k];
      askToken("");
    });
    setInterval(tick, 1000);
    poll();
  });
})();
