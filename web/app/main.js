// The page: starts the Python worker, shows boot progress and connection state, renders the
// chat and the panels (sessions, files, settings with hosts) from the worker's messages. No
// framework: the DOM is small and every update is local. Python (kite_web.py) owns all state;
// the page only draws what it is sent and posts what the user asked for.

import { compileWasm } from "./boot.js";

(window.kiteMarks ||= {}).main_start = Math.round(performance.now());

// Boot gives up (state "error") after this; `?boot_timeout_s=N` overrides it (tests, slow phones).
const BOOT_TIMEOUT_MS = (Number(new URLSearchParams(location.search).get("boot_timeout_s")) || 90) * 1000;
const $ = (id) => document.getElementById(id);
const meta = (name) => document.querySelector(`meta[name="${name}"]`).content;
const root = document.documentElement;

const STATE_TEXT = {
  booting: "Starting…",
  pairing: "Pairing…",
  ready: "Connected",
  offline: "Offline",
  error: "Error",
};

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v === true ? "" : v);
  }
  node.append(...children);
  return node;
}

function setState(state, detail = "") {
  root.dataset.kiteState = state;
  $("status-text").textContent = STATE_TEXT[state] || state;
  $("status").title = detail;
  if (state === "error" && !$("boot").hidden) {
    const box = $("boot-error");
    box.textContent = detail || "Something went wrong.";
    box.hidden = false;
    $("boot-label").textContent = "Kite could not start. Reload to try again.";
  }
  $("send").disabled = state !== "ready";
  // Offline/pairing/error explain themselves in a banner; "ready" needs none.
  const notice = $("notice");
  const show = state === "offline" || state === "pairing" || (state === "error" && $("boot").hidden);
  notice.hidden = !show;
  notice.className = state;
  notice.textContent = show ? `${STATE_TEXT[state]}: ${detail}` : "";
}

let toastTimer = 0;
function toast(text) {
  const t = $("toast");
  t.textContent = text;
  t.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => (t.hidden = true), 8000);
}

// -- pairing link: read it once, then wipe the secret from the address bar and history ------
function takePairingLink() {
  const hash = location.hash;
  if (!hash.includes("pair=")) return null;
  const link = location.href;
  history.replaceState(null, "", location.pathname + location.search);
  return link;
}

// -- chat rendering ----------------------------------------------------------------------------
const log = $("log");
let current = null; // the assistant bubble being streamed
const tools = new Map();

function item(cls, text = "") {
  const li = el("li", { class: cls });
  if (text) li.textContent = text;
  log.append(li);
  li.scrollIntoView({ block: "end" });
  return li;
}

function summarize(args) {
  if (!args) return "";
  const v = args.path || args.file_path || args.command || args.pattern || "";
  return typeof v === "string" ? v : JSON.stringify(args);
}

// A tool call's card: a header (a button that collapses the output) and the output itself.
function toolCard(msg) {
  const li = item("tool");
  const out = el("pre", { class: "tool-out", id: `out-${msg.id}` });
  const head = el("button", {
    type: "button",
    class: "tool-head",
    "aria-expanded": "true",
    "aria-controls": out.id,
    text: `${msg.name} ${summarize(msg.args)}`,
  });
  head.addEventListener("click", () => {
    const open = head.getAttribute("aria-expanded") !== "true";
    head.setAttribute("aria-expanded", String(open));
    out.hidden = !open;
  });
  li.append(head, out);
  const card = { li, head, out };
  tools.set(msg.id, card);
  return card;
}

function finishCard(card, msg) {
  card.li.classList.add(msg.status === "ok" ? "ok" : "failed");
  if (msg.title) card.head.textContent = msg.title;
  card.out.textContent = msg.diff || msg.output || "";
  if (msg.diff) card.out.classList.add("diff");
}

function approvalPrompt(msg) {
  // Inside the tool call's card when there is one: the question sits next to what it is about.
  const card = tools.get(msg.id);
  const box = el("div", { class: "approve", role: "group", "aria-label": "Approval needed" });
  if (card) card.li.insertBefore(box, card.out);
  else item("tool").append(box);
  const p = el("p", { text: msg.title || `${msg.permission}: ${(msg.patterns || []).join(", ")}` });
  box.append(p);
  if (msg.diff) box.append(el("pre", { class: "diff", text: msg.diff }));
  const buttons = [];
  for (const [label, ok] of [["Approve", true], ["Reject", false]]) {
    const b = el("button", { type: "button", class: ok ? "primary" : "", text: label });
    b.onclick = () => {
      worker.postMessage({ type: "approve", id: msg.id, ok });
      buttons.forEach((x) => x.remove());
      const note = el("span", { class: ok ? "approved" : "rejected", text: ok ? "Approved" : "Rejected" });
      p.append(" — ", note);
      box.removeAttribute("role");
      box.removeAttribute("aria-label");
      box.classList.add("answered");
      $("message").focus();
    };
    buttons.push(b);
    box.append(b);
  }
  buttons[0].focus();
  box.scrollIntoView({ block: "end" });
}

function setTitle(title) {
  $("session-title").textContent = title || "New session";
  document.title = title ? `${title} · Kite` : "Kite";
}

// A session's saved history, drawn the way the live events draw it.
function drawHistory(msg) {
  // A whole history is not news: keep screen readers from reading it all out.
  log.setAttribute("aria-live", "off");
  setTimeout(() => log.setAttribute("aria-live", "polite"), 0);
  log.replaceChildren();
  tools.clear();
  current = null;
  setTitle(msg.session ? msg.session.title : "");
  for (const it of msg.items || []) {
    if (it.kind === "tool") finishCard(toolCard(it), it);
    else item(it.kind, it.text);
  }
}

// -- panels (native <dialog>: focus moves in, Escape closes, focus returns) ------------------
const panels = { sessions: $("sessions"), files: $("files"), settings: $("settings") };
const OP_PANEL = {
  sessions: "sessions", session_new: "sessions", session_open: "sessions",
  session_rename: "sessions", session_delete: "sessions",
  files: "files", file_read: "files",
  settings: "settings", settings_set: "settings", hosts: "settings",
  host_switch: "settings", host_add: "settings", host_remove: "settings",
};

function ask(type, data = {}) {
  const panel = panels[OP_PANEL[type]];
  if (panel) {
    const note = panel.querySelector(".note");
    note.hidden = true;
    note.textContent = "";
  }
  worker.postMessage({ type, ...data });
}

let closeOnHistory = false; // the user opened or started a session: show it
function openPanel(name) {
  for (const [k, d] of Object.entries(panels)) if (k !== name && d.open) d.close();
  const d = panels[name];
  if (!d.open) d.showModal();
  if (name === "sessions") ask("sessions");
  if (name === "files") {
    showBrowser();
    ask("files", { path: filesPath });
  }
  if (name === "settings") {
    $("settings-saved").textContent = "";
    ask("settings");
    ask("hosts");
  }
}

for (const [name, d] of Object.entries(panels)) {
  $(`open-${name}`).addEventListener("click", () => openPanel(name));
  d.querySelector(".close").addEventListener("click", () => d.close());
  // A click on the backdrop (outside the dialog's box) closes it too.
  d.addEventListener("click", (e) => {
    if (e.target === d) {
      const r = d.getBoundingClientRect();
      const inside = e.clientX >= r.left && e.clientX <= r.right && e.clientY >= r.top && e.clientY <= r.bottom;
      if (!inside) d.close();
    }
  });
}

function fmtTime(sec) {
  if (!sec) return "";
  return new Date(sec * 1000).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

$("session-new").addEventListener("click", () => {
  closeOnHistory = true;
  ask("session_new");
});

// Sessions: each row opens its session; Rename edits the title in place; Delete asks first.
function drawSessions(msg) {
  const list = $("session-list");
  list.replaceChildren();
  if (!msg.sessions.length) list.append(el("li", { class: "muted", text: "No saved sessions yet." }));
  for (const s of msg.sessions) {
    const title = s.title || "Untitled session";
    const isCurrent = s.id === msg.current;
    const open = el(
      "button",
      { type: "button", class: "row-main", "aria-current": isCurrent ? "true" : null, onclick: () => { closeOnHistory = true; ask("session_open", { id: s.id }); } },
      el("span", { class: "row-title", id: `st-${s.id}`, text: title }),
      el("span", { class: "muted small", id: `sm-${s.id}`, text: `${s.messages || 0} messages · ${fmtTime(s.updated_at)}${isCurrent ? " · current" : ""}` }),
    );
    // Named by its title, described by the details: a screen reader hears both, once each.
    open.setAttribute("aria-labelledby", `st-${s.id}`);
    open.setAttribute("aria-describedby", `sm-${s.id}`);
    const rename = el("button", { type: "button", text: "Rename", "aria-label": `Rename ${title}` });
    const del = el("button", { type: "button", class: "danger", text: "Delete", "aria-label": `Delete ${title}` });
    const li = el("li", { class: isCurrent ? "current" : "" }, open, rename, del);
    rename.addEventListener("click", () => {
      const input = el("input", { value: s.title || "", "aria-label": "New title", maxlength: "200" });
      const save = el("button", { type: "submit", class: "primary", text: "Save" });
      const cancel = el("button", { type: "button", text: "Cancel", onclick: () => ask("sessions") });
      const form = el("form", { class: "inline" }, input, save, cancel);
      form.addEventListener("submit", (e) => {
        e.preventDefault();
        ask("session_rename", { id: s.id, title: input.value });
      });
      li.replaceChildren(form);
      input.focus();
      input.select();
    });
    del.addEventListener("click", () => {
      if (confirm(`Delete “${title}”? This cannot be undone.`)) ask("session_delete", { id: s.id });
    });
    list.append(li);
  }
  if (msg.offline) list.prepend(el("li", { class: "muted", text: "Offline: the list as last seen." }));
}

// Files: a folder listing (buttons) and a read-only viewer.
let filesPath = ".";
const joinPath = (dir, name) => (dir === "." ? name : `${dir}/${name}`);
const parentPath = (p) => (p.includes("/") ? p.slice(0, p.lastIndexOf("/")) : ".");

function showBrowser() {
  $("viewer").hidden = true;
  $("browser").hidden = false;
}

function drawFiles(msg) {
  filesPath = msg.path;
  $("files-path").textContent = msg.path === "." ? "Workspace" : msg.path;
  $("files-up").disabled = msg.path === ".";
  const list = $("file-list");
  list.replaceChildren();
  const entries = [...msg.entries];
  entries.sort((a, b) => (b.type === "dir") - (a.type === "dir") || a.name.localeCompare(b.name));
  if (!entries.length) list.append(el("li", { class: "muted", text: "Empty folder." }));
  for (const e of entries) {
    const isDir = e.type === "dir";
    const path = joinPath(msg.path, e.name);
    const b = el(
      "button",
      { type: "button", class: `row-main ${isDir ? "dir" : "file"}`, onclick: () => (isDir ? ask("files", { path }) : ask("file_read", { path })) },
      el("span", { class: "row-title", text: isDir ? `${e.name}/` : e.name }),
      el("span", { class: "muted small", text: isDir ? "folder" : `${e.size ?? ""} bytes` }),
    );
    list.append(el("li", {}, b));
  }
  if (msg.truncated) list.append(el("li", { class: "muted", text: "More entries not shown." }));
  const first = list.querySelector("button");
  if (first && panels.files.open) first.focus();
}

function drawFile(msg) {
  $("browser").hidden = true;
  $("viewer").hidden = false;
  $("viewer-h").textContent = msg.path;
  const text = $("viewer-text");
  if (msg.binary) {
    text.textContent = "";
    $("viewer-meta").textContent = "A binary file: not shown.";
  } else {
    text.textContent = msg.content;
    const lines = msg.total_lines ?? "";
    $("viewer-meta").textContent = `${msg.size ?? ""} bytes · ${lines} lines${msg.truncated ? " · only the start is shown" : ""}`;
  }
  $("viewer-back").focus();
}

$("files-up").addEventListener("click", () => ask("files", { path: parentPath(filesPath) }));
$("viewer-back").addEventListener("click", () => {
  showBrowser();
  const first = $("file-list").querySelector("button");
  if (first) first.focus();
});

// Settings: route + model (+ a device-held key for the direct route) and permissions.
const ACTIONS = ["default", "allow", "ask", "deny"];
function drawSettings(msg) {
  const form = $("settings-form");
  for (const r of form.elements.route) r.checked = r.value === msg.route;
  $("model").value = msg.model || "";
  $("base-url").value = msg.base_url || "";
  $("api-key").value = "";
  $("key-state").textContent = msg.key_set ? "A key is stored on this device. Leave empty to keep it." : "No key stored.";
  $("forget-key").hidden = !msg.key_set;
  const rows = $("perm-rows");
  rows.replaceChildren();
  for (const tool of msg.tools) {
    const id = `perm-${tool}`;
    const select = el("select", { id, name: tool });
    for (const a of ACTIONS) select.append(el("option", { value: a, text: a === "default" ? "Default" : a[0].toUpperCase() + a.slice(1) }));
    select.value = msg.permissions[tool] || "default";
    rows.append(el("div", { class: "perm" }, el("label", { for: id, text: tool }), select));
  }
  syncRoute();
  if (msg.saved) $("settings-saved").textContent = "Settings saved on this device.";
}

function syncRoute() {
  const route = $("settings-form").elements.route.value;
  $("direct-fields").hidden = route !== "direct";
  $("model").disabled = route === "local";
}
$("settings-form").addEventListener("change", (e) => {
  if (e.target.name === "route") syncRoute();
});
function saveSettings(extra = {}) {
  const form = $("settings-form");
  const permissions = {};
  for (const s of $("perm-rows").querySelectorAll("select")) permissions[s.name] = s.value;
  $("settings-saved").textContent = "";
  ask("settings_set", {
    route: form.elements.route.value || "local",
    model: $("model").value,
    api_key: $("api-key").value,
    base_url: $("base-url").value,
    permissions,
    ...extra,
  });
}
$("settings-form").addEventListener("submit", (e) => {
  e.preventDefault();
  saveSettings();
});
$("forget-key").addEventListener("click", () => saveSettings({ clear_key: true, api_key: "" }));

function drawHosts(msg) {
  const list = $("host-list");
  list.replaceChildren();
  if (!msg.hosts.length) list.append(el("li", { class: "muted", text: "No host paired yet." }));
  for (const h of msg.hosts) {
    const isCurrent = h.id === msg.current;
    const info = el("div", { class: "row-main" }, el("span", { class: "row-title", text: h.name }), el("span", { class: "muted small", text: isCurrent ? `${h.url} · current` : h.url }));
    const li = el("li", { class: isCurrent ? "current" : "", "aria-current": isCurrent ? "true" : null }, info);
    if (!isCurrent) {
      li.append(
        el("button", { type: "button", text: "Switch", "aria-label": `Switch to ${h.name}`, onclick: () => ask("host_switch", { id: h.id }) }),
        el("button", {
          type: "button",
          class: "danger",
          text: "Remove",
          "aria-label": `Remove ${h.name}`,
          onclick: () => confirm(`Forget ${h.name} and this device's key for it?`) && ask("host_remove", { id: h.id }),
        }),
      );
    }
    list.append(li);
  }
}
$("host-add").addEventListener("submit", (e) => {
  e.preventDefault();
  const link = $("host-link").value.trim();
  if (!link) return;
  $("host-link").value = "";
  ask("host_add", { link });
});

// Undo/redo of a step: the buttons sit in the card of the step's last file change.
function drawUndo(msg) {
  for (const b of log.querySelectorAll(".step-actions")) b.remove();
  for (const [id, card] of tools) card.li.classList.toggle("undone", (msg.undone || []).includes(id));
  for (const [kind, label] of [["undo", "Undo"], ["redo", "Redo"]]) {
    const target = msg[kind];
    const card = target && tools.get(target.call);
    if (!card) continue;
    const files = target.paths.join(", ");
    const b = el("button", {
      type: "button",
      text: label,
      "aria-label": `${label} this step (${files})`,
      title: `${label}: ${files}`,
      onclick: () => {
        b.disabled = true;
        worker.postMessage({ type: kind });
      },
    });
    card.li.append(el("div", { class: "step-actions" }, b));
  }
}

const handlers = {
  progress(msg) {
    $("boot-progress").value = msg.value;
    $("boot-label").textContent = msg.label;
  },
  booted(msg) {
    clearTimeout(bootTimer);
    $("boot-progress").value = 1;
    $("boot").hidden = true;
    window.kiteTimings = msg.timings;
    registerServiceWorker();
    console.info("kite boot", msg.timings);
  },
  state(msg) {
    setState(msg.state, msg.detail);
  },
  mark(msg) {
    // Python-side boot milestones (kite_web.mark), first occurrence of each, navigation-relative.
    const marks = (window.kiteMarks ||= {});
    if (!(msg.name in marks)) marks[msg.name] = Math.round(msg.at - performance.timeOrigin);
  },
  delta(msg) {
    if (!current) current = item("assistant");
    current.textContent += msg.text;
  },
  assistant(msg) {
    if (!current && msg.text) item("assistant", msg.text);
    current = null;
  },
  tool(msg) {
    current = null;
    toolCard(msg);
  },
  tool_output(msg) {
    const t = tools.get(msg.id);
    if (t) t.out.textContent += msg.text;
  },
  tool_done(msg) {
    const t = tools.get(msg.id);
    if (t) finishCard(t, msg);
  },
  approve(msg) {
    approvalPrompt(msg);
  },
  finished(msg) {
    current = null;
    log.setAttribute("aria-busy", "false");
    $("stop").hidden = true;
    if (msg.error) item("error", msg.error);
    $("message").disabled = false;
  },
  history(msg) {
    drawHistory(msg);
    if (closeOnHistory && panels.sessions.open) panels.sessions.close();
    closeOnHistory = false;
  },
  session(msg) {
    setTitle(msg.title);
  },
  sessions: drawSessions,
  files: drawFiles,
  file: drawFile,
  settings: drawSettings,
  hosts: drawHosts,
  notice(msg) {
    toast(msg.text);
  },
  undo_state: drawUndo,
  op_error(msg) {
    const panel = panels[OP_PANEL[msg.op]];
    if (panel && panel.open) {
      const note = panel.querySelector(".note");
      note.textContent = msg.error;
      note.hidden = false;
    } else toast(msg.error);
  },
};

// -- boot ------------------------------------------------------------------------------------------
setState("booting");
const link = takePairingLink();
// The service worker is registered once Python is up: its precache then reads the big files
// from the HTTP cache (they are immutable) instead of downloading them a second time in parallel.
function registerServiceWorker() {
  if ("serviceWorker" in navigator) {
    navigator.serviceWorker.register("sw.js").catch((err) => console.warn("service worker:", err));
  }
}

const worker = new Worker(new URL("worker.js", import.meta.url), { type: "module" });
worker.onmessage = (e) => (handlers[e.data.type] || (() => {}))(e.data);
worker.onerror = (e) => setState("error", `the Python runtime failed: ${e.message || "worker error"}`);
const bootTimer = setTimeout(() => {
  if (root.dataset.kiteState === "booting") {
    setState("error", `the Python runtime did not start within ${BOOT_TIMEOUT_MS / 1000} s`);
    worker.terminate();
  }
}, BOOT_TIMEOUT_MS);
// Creep the bar while Pyodide downloads and compiles (it reports no byte progress of its own).
const creep = setInterval(() => {
  const bar = $("boot-progress");
  if (root.dataset.kiteState !== "booting" || bar.value >= 0.7) return clearInterval(creep);
  bar.value = Math.min(0.7, bar.value + 0.01);
}, 200);
worker.postMessage({ type: "boot", pyodide: meta("kite-pyodide"), py: meta("kite-py"), link, wasm: "page" });
compileWasm(worker, meta("kite-pyodide")); // boot.js: compiled here, run in the worker (faster)

// -- composer --------------------------------------------------------------------------------------
const box = $("message");
$("composer").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = box.value.trim();
  if (!text || root.dataset.kiteState !== "ready") return;
  item("user", text);
  if ($("session-title").textContent === "New session") setTitle(text.split("\n")[0].slice(0, 80));
  box.value = "";
  log.setAttribute("aria-busy", "true");
  worker.postMessage({ type: "submit", text });
  $("stop").hidden = false;
});
// Stop aborts the running turn: in-flight bridge requests are cancelled, the session stays valid.
$("stop").addEventListener("click", () => worker.postMessage({ type: "abort" }));
box.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) {
    e.preventDefault();
    $("composer").requestSubmit();
  }
});
