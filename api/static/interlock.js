// Interlock web pages: the live parts. The pages read fine without this file.
//
// Live updates come from Server-Sent Events; when SSE is unavailable (the stream never
// opens: a proxy that buffers it, or a server that turned it off) the page long-polls
// instead, and after an error it retries after a growing delay. The header says which.
(function () {
  "use strict";

  const body = document.body;
  const FRAGMENT = { "X-Interlock-Fragment": "1" };
  const SSE_OPEN_TIMEOUT = 5000;   // no "open" within this: SSE is buffered or blocked
  const POLL_WAIT = 25;            // seconds a long poll may be held by the server

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  // -- the "live" / "reconnecting" indicator --------------------------------------------

  function show(state, mode) {
    const el = document.getElementById("live");
    if (!el) return;
    el.hidden = false;
    el.dataset.state = state;
    el.dataset.mode = mode;
    const how = mode === "sse" ? "server-sent events" : "long polling";
    el.textContent = { live: "live", reconnecting: "reconnecting…", finished: "finished" }[state] || state;
    el.title = state === "finished" ? "the run has ended: nothing more will change" : `updates by ${how}`;
  }

  // -- one live channel: SSE first, then the long poll ----------------------------------

  function connect(opts) {
    let failures = 0;
    let stopped = false;

    const delay = () => Math.min(500 * 2 ** Math.min(failures, 5), 10000);
    const stop = () => { stopped = true; show("finished", "sse"); };

    function startSse() {
      let opened = false;
      const es = new EventSource(opts.sseUrl());
      const timer = setTimeout(() => {
        if (!opened) { es.close(); longPoll(); }
      }, SSE_OPEN_TIMEOUT);
      const opened_ = () => {
        if (!opened) { opened = true; clearTimeout(timer); }
        failures = 0;
        show("live", "sse");
      };
      es.onopen = opened_;
      for (const [name, handler] of Object.entries(opts.events)) {
        es.addEventListener(name, (ev) => {
          opened_();
          handler(ev, () => { es.close(); stop(); });
        });
      }
      es.onerror = () => {
        if (stopped) return;
        if (!opened) {             // never opened: no SSE here, long-poll instead
          clearTimeout(timer);
          es.close();
          longPoll();
          return;
        }
        show("reconnecting", "sse");
        if (es.readyState === EventSource.CLOSED) {  // the browser gave up: try again later
          failures += 1;
          setTimeout(startSse, delay());
        }                          // else the browser reconnects by itself, with Last-Event-ID
      };
    }

    async function longPoll() {
      show("reconnecting", "poll");
      let wait = 0;                // the first request answers at once: proves the way works
      while (!stopped) {
        try {
          const more = await opts.poll(wait);
          failures = 0;
          show("live", "poll");
          if (more === false) { stopped = true; show("finished", "poll"); return; }
          wait = POLL_WAIT;
        } catch (err) {
          failures += 1;
          show("reconnecting", "poll");
          await sleep(delay());
        }
      }
    }

    if ("EventSource" in window) startSse(); else longPoll();
  }

  async function getJson(url, headers) {
    const res = await fetch(url, { headers: headers || {}, credentials: "same-origin", cache: "no-store" });
    if (!res.ok) throw new Error(`${res.status} from ${url}`);
    return res.json();
  }

  // Serialise calls to an async function; calls made meanwhile collapse into one more run.
  function coalesce(fn) {
    let running = null;
    let again = false;
    return function run() {
      if (running) { again = true; return running; }
      running = (async () => {
        try {
          do { again = false; await fn(); } while (again);
        } finally { running = null; }
      })();
      return running;
    };
  }

  // -- redrawing a part of the page without losing the reader's place ---------------------

  // Where focus is, as something that survives the element being replaced: its id, or its
  // row (data-run-id, data-seq) and its position among the focusable elements of that row.
  const FOCUSABLE = "a[href], button, input, select, textarea, summary, [tabindex]";

  function focusKey(container) {
    const el = document.activeElement;
    if (!el || el === document.body || !container.contains(el)) return null;
    const row = el.closest("[data-run-id], [data-seq]");
    const scope = row || container;
    return {
      id: el.id || null,
      row: row ? (row.dataset.runId ? `[data-run-id="${CSS.escape(row.dataset.runId)}"]` : `[data-seq="${row.dataset.seq}"]`) : null,
      index: [...scope.querySelectorAll(FOCUSABLE)].indexOf(el),
      selection: "selectionStart" in el && el.selectionStart !== null ? [el.selectionStart, el.selectionEnd] : null,
    };
  }

  function restoreFocus(container, key) {
    if (!key) return;
    let el = key.id ? document.getElementById(key.id) : null;
    if (!el) {
      const scope = key.row ? container.querySelector(key.row) : container;
      el = scope ? scope.querySelectorAll(FOCUSABLE)[key.index] : null;
    }
    if (!el) return;
    el.focus({ preventScroll: true });
    if (key.selection && "setSelectionRange" in el) {
      try { el.setSelectionRange(key.selection[0], key.selection[1]); } catch (err) { /* not a text field */ }
    }
  }

  // Replace ``container``'s content with ``html``, keeping focus, what was typed into fields
  // that are still there (by id), the ticked rows and the open details.
  function redraw(container, html) {
    const key = focusKey(container);
    const typed = new Map([...container.querySelectorAll("input[id], textarea[id], select[id]")]
      .filter((el) => el.type !== "hidden" && el.type !== "checkbox").map((el) => [el.id, el.value]));
    const ticked = new Set([...container.querySelectorAll("input[type=checkbox]:checked")].map((el) => el.value));
    const open = new Set([...container.querySelectorAll("details[open][data-key]")].map((el) => el.dataset.key));
    container.innerHTML = html;
    for (const [id, value] of typed) {
      const el = document.getElementById(id);
      if (el && container.contains(el) && [...(el.options || [{ value }])].some((o) => o.value === value)) el.value = value;
    }
    for (const box of container.querySelectorAll("input[type=checkbox]")) if (ticked.has(box.value)) box.checked = true;
    for (const d of container.querySelectorAll("details[data-key]")) if (open.has(d.dataset.key)) d.open = true;
    restoreFocus(container, key);
  }

  // -- pausing live updates: changes are held (the channel stays open) until resumed ------------

  let livePaused = false;
  const heldRefreshes = new Set();

  // ``refresh`` now, or once updates are resumed.
  function whenLive(refresh) {
    if (!livePaused) return refresh();
    heldRefreshes.add(refresh);
    const button = document.getElementById("live-pause");
    if (button) { button.textContent = "Resume updates (changes waiting)"; button.dataset.held = "1"; }
    return Promise.resolve();
  }

  function pauseButton() {
    const button = document.getElementById("live-pause");
    if (!button) return;
    button.hidden = false;
    button.addEventListener("click", () => {
      livePaused = !livePaused;
      button.setAttribute("aria-pressed", String(livePaused));
      button.textContent = livePaused ? "Resume updates" : "Pause updates";
      delete button.dataset.held;
      const live = document.getElementById("live");
      if (live) live.dataset.paused = livePaused ? "1" : "";
      if (!livePaused) {
        const held = [...heldRefreshes];
        heldRefreshes.clear();
        for (const refresh of held) refresh().catch(() => {});
      }
    });
  }

  // -- the runs page --------------------------------------------------------------------

  function runsPage() {
    let cursor = parseFloat(body.dataset.cursor) || Date.now() / 1000;
    const firstPage = !new URLSearchParams(location.search).has("cursor");
    let last = 0;
    let timer = null;

    const refresh = coalesce(async () => {
      last = Date.now();
      const d = await getJson(location.pathname + location.search, FRAGMENT);
      const rows = document.getElementById("runs-rows");
      const before = new Map([...rows.querySelectorAll("tr[data-run-id]")]
        .map((tr) => [tr.dataset.runId, tr.dataset.status]));
      redraw(rows, d.rows);
      redraw(document.getElementById("counts"), d.counts);
      redraw(document.getElementById("pager"), d.pager);
      for (const tr of rows.querySelectorAll("tr[data-run-id]")) {
        if (before.get(tr.dataset.runId) !== tr.dataset.status) tr.classList.add("flash-row");
      }
    });

    // At most two refreshes a second, however many runs change.
    function schedule() {
      if (timer) return;
      timer = setTimeout(() => { timer = null; whenLive(refresh).catch(() => {}); },
                         Math.max(0, last + 500 - Date.now()));
    }

    connect({
      sseUrl: () => {
        const url = new URL(body.dataset.streamUrl, location.href);
        url.searchParams.set("after", cursor.toFixed(6));
        return url.toString();
      },
      events: {
        run(ev) {
          const run = JSON.parse(ev.data);
          const id = parseFloat(ev.lastEventId);
          if (id > cursor) cursor = id;
          if (firstPage || document.querySelector(`tr[data-run-id="${CSS.escape(run.id)}"]`)) schedule();
        },
      },
      async poll(wait) {
        const url = new URL(body.dataset.changesUrl, location.href);
        url.searchParams.set("since", cursor.toFixed(6));
        url.searchParams.set("wait", String(wait));
        const d = await getJson(url.toString());
        if (d.cursor > cursor) cursor = d.cursor;
        if (d.changed) await whenLive(refresh);
        return true;
      },
    });
  }

  // -- the run page ---------------------------------------------------------------------

  const FINISHED = ["succeeded", "cancelled"];

  function runPage() {
    let lastSeq = parseInt(body.dataset.lastSeq, 10) || 0;
    const fragmentUrl = body.dataset.fragmentUrl;

    const refresh = coalesce(async () => {
      const url = new URL(fragmentUrl, location.href);
      url.searchParams.set("after", String(lastSeq));
      const childrenPage = new URLSearchParams(location.search).get("children");
      if (childrenPage) url.searchParams.set("children", childrenPage);  // the page of children shown
      const d = await getJson(url.toString(), FRAGMENT);
      if (d.last_seq > lastSeq) {
        document.getElementById("timeline").insertAdjacentHTML("beforeend", d.rows);
        lastSeq = d.last_seq;
      }
      for (const [id, key] of [["run-head", "head"], ["diagram", "diagram"], ["waiting", "waiting"], ["data", "data"],
                               ["children", "children"], ["gantt", "gantt"]]) {
        const el = document.getElementById(id);
        if (el && el.innerHTML !== d[key]) redraw(el, d[key]);
      }
      const actions = document.getElementById("actions");
      if (actions && actions.dataset.sig !== d.actions_sig) {  // keep what is being typed when nothing changed
        redraw(actions, d.actions);
        actions.dataset.sig = d.actions_sig;
      }
      body.dataset.status = d.status;
      body.dataset.lastSeq = String(lastSeq);
      body.dataset.childrenLive = d.children_live ? "1" : "0";
      tick();
      watchChildren();
    });
    window.interlockRefresh = refresh;

    // A child's own changes are not in this run's history: long-poll for them while one may
    // still change (new children show up in the history, and a refresh starts this again).
    let watching = false;
    async function watchChildren() {
      if (watching || body.dataset.childrenLive !== "1") return;
      watching = true;
      let since = parseFloat(body.dataset.childrenSince) || 0;
      let failures = 0;
      try {
        while (body.dataset.childrenLive === "1") {
          const started = Date.now();
          try {
            const url = new URL(body.dataset.changesUrl, location.href);
            url.searchParams.set("parent", body.dataset.runId);
            url.searchParams.set("since", since.toFixed(6));
            url.searchParams.set("wait", String(POLL_WAIT));
            const d = await getJson(url.toString());
            if (d.cursor > since) since = d.cursor;
            failures = 0;
            if (d.changed) await whenLive(refresh);
            await sleep(Math.max(0, started + 1000 - Date.now()));  // at most a refresh a second
          } catch (err) {
            failures += 1;
            await sleep(Math.min(500 * 2 ** Math.min(failures, 5), 10000));
          }
        }
      } finally {
        body.dataset.childrenSince = since.toFixed(6);
        watching = false;
      }
    }
    watchChildren();

    connect({
      sseUrl: () => {
        const url = new URL(body.dataset.streamUrl, location.href);
        url.searchParams.set("after", String(lastSeq));
        return url.toString();
      },
      events: {
        history(ev) {
          if (parseInt(ev.lastEventId, 10) > lastSeq) whenLive(refresh).catch(() => {});
        },
        end(ev, finish) {
          finish();
          whenLive(refresh).catch(() => {});
        },
      },
      async poll(wait) {
        const url = new URL(body.dataset.historyUrl, location.href);
        url.searchParams.set("after", String(lastSeq));
        url.searchParams.set("wait", String(wait));
        const d = await getJson(url.toString());
        if (d.history.length) await whenLive(refresh);
        return !(FINISHED.includes(d.status) && d.history.length === 0 && lastSeq >= d.last_seq);
      },
    });
  }

  // -- countdowns (timers, next attempts) -------------------------------------------------

  // -- times: relative ("3 min ago", "in 1 h"), the absolute time on hover, in UTC or in the
  //    browser's zone (a toggle remembered in this browser) -----------------------------------

  const ZONE_KEY = "interlock.timezone";
  let zone = (() => { try { return localStorage.getItem(ZONE_KEY) || "utc"; } catch (err) { return "utc"; } })();
  const localZone = (() => { try { return Intl.DateTimeFormat().resolvedOptions().timeZone || "local"; } catch (err) { return "local"; } })();

  function amount(seconds) {
    const s = Math.abs(seconds);
    if (s < 60) return `${Math.round(s)} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min`;
    if (s < 48 * 3600) return `${Math.floor(s / 3600)} h`;
    return `${Math.floor(s / 86400)} d`;
  }

  function relative(seconds) {
    if (Math.abs(seconds) < 1) return "just now";
    return seconds > 0 ? `in ${amount(seconds)}` : `${amount(seconds)} ago`;
  }

  function absolute(epoch) {
    const d = new Date(epoch * 1000);
    const utc = zone === "utc";
    const two = (n) => String(n).padStart(2, "0");
    const parts = utc
      ? [d.getUTCFullYear(), d.getUTCMonth() + 1, d.getUTCDate(), d.getUTCHours(), d.getUTCMinutes(), d.getUTCSeconds()]
      : [d.getFullYear(), d.getMonth() + 1, d.getDate(), d.getHours(), d.getMinutes(), d.getSeconds()];
    return `${parts[0]}-${two(parts[1])}-${two(parts[2])} ${two(parts[3])}:${two(parts[4])}:${two(parts[5])}`;
  }

  const zoneName = () => (zone === "utc" ? "UTC" : localZone);

  function tick() {
    const now = Date.now() / 1000;
    for (const el of document.querySelectorAll(".countdown[data-due]")) {
      const left = parseFloat(el.dataset.due) - now;
      el.textContent = left > 0 ? relative(left) : "due now";
    }
    for (const el of document.querySelectorAll("time[data-t]")) {
      const t = parseFloat(el.dataset.t);
      const shown = `${absolute(t)} ${zoneName()}`;
      if (el.title !== shown) el.title = shown;
      const text = el.classList.contains("abs") ? absolute(t) : relative(t - now);
      if (el.textContent !== text) el.textContent = text;
    }
    const button = document.getElementById("time-zone");
    if (button) {
      const label = `Times: ${zone === "utc" ? "UTC" : `local (${localZone})`}`;
      if (button.textContent !== label) button.textContent = label;
      button.setAttribute("aria-label", `${label}; switch to ${zone === "utc" ? "this browser's zone" : "UTC"}`);
    }
  }

  document.addEventListener("click", (ev) => {
    if (!ev.target.closest || !ev.target.closest("#time-zone")) return;
    zone = zone === "utc" ? "local" : "utc";
    try { localStorage.setItem(ZONE_KEY, zone); } catch (err) { /* private mode: this page only */ }
    tick();
  });

  // -- actions: confirm, then POST (with the form's CSRF token), show the answer ---------------

  function notice(text, kind) {
    const box = document.getElementById("notices");
    const p = document.createElement("p");
    p.className = `flash ${kind}`;
    p.setAttribute("role", kind === "error" ? "alert" : "status");
    p.textContent = text;
    box.replaceChildren(p);
  }

  async function submitAction(form) {
    const data = new FormData(form);
    data.set("confirm", "yes");
    let res;
    try {
      res = await fetch(form.action, { method: "POST", body: data, credentials: "same-origin",
                                       headers: { Accept: "application/json" } });
    } catch (err) {
      notice("The server could not be reached: nothing was changed. Try again.", "error");
      return;
    }
    let answer = {};
    try { answer = await res.json(); } catch (err) { /* not JSON */ }
    if (res.ok && answer.ok) {
      notice(answer.message, "ok");
      const area = form.querySelector("textarea");
      if (area) area.value = "";
      if (window.interlockRefresh) window.interlockRefresh().catch(() => {});
    } else {
      const title = answer.title || res.statusText || "Error";
      notice(`Refused (${res.status} ${title}): ${answer.detail || title}`, "error");
    }
  }

  function confirmThen(form) {
    const dialog = document.getElementById("confirm-dialog");
    const event = form.querySelector("select[name=event]");
    const text = form.dataset.confirm + (event ? ` Event: ${event.value}.` : "");
    const dataField = form.querySelector("textarea[name=data]");
    if (!dialog || typeof dialog.showModal !== "function") {
      if (window.confirm(text)) submitAction(form);
      return;
    }
    document.getElementById("confirm-text").textContent = text;
    const pre = document.getElementById("confirm-data");
    pre.textContent = dataField && dataField.value.trim() ? dataField.value.trim() : "";
    pre.hidden = !pre.textContent;
    dialog.returnValue = "";
    dialog.addEventListener("close", () => {
      if (dialog.returnValue === "ok") submitAction(form);
    }, { once: true });
    dialog.showModal();
  }

  document.addEventListener("submit", (ev) => {
    const form = ev.target;
    if (!(form instanceof HTMLFormElement) || !form.classList.contains("confirm")) return;
    ev.preventDefault();
    confirmThen(form);
  });

  // -- copy buttons, keyboard shortcuts --------------------------------------------------------

  document.addEventListener("click", async (ev) => {
    const button = ev.target.closest && ev.target.closest("button.copy[data-copy]");
    if (!button) return;
    try {
      await navigator.clipboard.writeText(button.dataset.copy);
      button.textContent = "copied";
    } catch (err) {
      button.textContent = "copy failed";
    }
    setTimeout(() => { button.textContent = "copy"; }, 1500);
  });

  // "/" goes to the search box; "j" / "k" move to the next / previous run in a table of runs.
  document.addEventListener("keydown", (ev) => {
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const t = ev.target;
    if (t && (t.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(t.tagName))) return;
    if (ev.key === "/") {
      const search = document.getElementById("search");
      if (search) { ev.preventDefault(); search.focus(); search.select(); }
      return;
    }
    if (ev.key !== "j" && ev.key !== "k") return;
    const links = [...document.querySelectorAll("tr[data-run-id] a.run-link")];
    if (!links.length) return;
    ev.preventDefault();
    const at = links.indexOf(document.activeElement);
    const next = at < 0 ? 0 : Math.max(0, Math.min(links.length - 1, at + (ev.key === "j" ? 1 : -1)));
    for (const tr of document.querySelectorAll("tr.row-current")) tr.classList.remove("row-current");
    links[next].closest("tr").classList.add("row-current");
    links[next].focus();
  });

  // -- start ------------------------------------------------------------------------------

  tick();
  setInterval(tick, 1000);
  if (body.dataset.page === "runs" || body.dataset.page === "run") pauseButton();
  if (body.dataset.page === "runs") runsPage();
  if (body.dataset.page === "run") runPage();
})();
