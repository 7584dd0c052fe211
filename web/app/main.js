// The page: starts the Python worker, shows boot progress and connection state, renders the
// chat from the worker's messages. No framework: the DOM is small and every update is local.

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

function setState(state, detail = "") {
  root.dataset.kiteState = state;
  $("status-text").textContent = STATE_TEXT[state] || state;
  $("status").title = detail;
  if (state === "error") {
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
  const li = document.createElement("li");
  li.className = cls;
  if (text) li.textContent = text;
  log.append(li);
  li.scrollIntoView({ block: "end" });
  return li;
}

function toolCard(msg) {
  const li = item("tool");
  const head = document.createElement("div");
  head.className = "tool-head";
  head.textContent = `${msg.name} ${summarize(msg.args)}`;
  const out = document.createElement("pre");
  out.className = "tool-out";
  li.append(head, out);
  tools.set(msg.id, { li, head, out });
}

function summarize(args) {
  if (!args) return "";
  const v = args.path || args.command || args.pattern || "";
  return typeof v === "string" ? v : JSON.stringify(args);
}

function approvalPrompt(msg) {
  // Inside the tool call's card when there is one: the question sits next to what it is about.
  const card = tools.get(msg.id);
  const box = document.createElement("div");
  box.className = "approve";
  box.setAttribute("role", "group");
  box.setAttribute("aria-label", "Approval needed");
  if (card) card.li.insertBefore(box, card.out);
  else item("tool").append(box);
  const p = document.createElement("p");
  p.textContent = msg.title || `${msg.permission}: ${(msg.patterns || []).join(", ")}`;
  box.append(p);
  if (msg.diff) {
    const pre = document.createElement("pre");
    pre.textContent = msg.diff;
    box.append(pre);
  }
  const buttons = [];
  for (const [label, ok] of [["Approve", true], ["Reject", false]]) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = label;
    if (ok) b.className = "primary";
    b.onclick = () => {
      worker.postMessage({ type: "approve", id: msg.id, ok });
      buttons.forEach((x) => x.remove());
      const note = document.createElement("span");
      note.className = ok ? "approved" : "rejected";
      note.textContent = ok ? "Approved" : "Rejected";
      p.append(" — ", note);
    };
    buttons.push(b);
    box.append(b);
  }
  buttons[0].focus();
  box.scrollIntoView({ block: "end" });
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
    if (!t) return;
    t.li.classList.add(msg.status === "ok" ? "ok" : "failed");
    if (msg.title) t.head.textContent = msg.title;
    t.out.textContent = msg.diff || msg.output;
  },
  approve(msg) {
    approvalPrompt(msg);
  },
  finished(msg) {
    current = null;
    $("stop").hidden = true;
    if (msg.error) item("error", msg.error);
    $("message").disabled = false;
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
worker.postMessage({ type: "boot", pyodide: meta("kite-pyodide"), py: meta("kite-py"), link });

// -- composer --------------------------------------------------------------------------------------
const box = $("message");
$("composer").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = box.value.trim();
  if (!text || root.dataset.kiteState !== "ready") return;
  item("user", text);
  box.value = "";
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
