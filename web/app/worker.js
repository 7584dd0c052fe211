// The Python runtime, in a Web Worker so the page never freezes while Pyodide boots or works.
// The page posts {type:"boot", pyodide, py, link}; this file loads Pyodide from the vendored
// copy (never a CDN), installs the app's wheel through the lock file (sha256-checked), and hands
// over to kite_web.py. Progress and state go back as {type:"progress"|"state"|...} messages.

const DB_NAME = "kite";
const STORE = "kv";

function idb() {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open(DB_NAME, 1);
    req.onupgradeneeded = () => req.result.createObjectStore(STORE);
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

async function idbOp(mode, fn) {
  const db = await idb();
  return new Promise((resolve, reject) => {
    const tx = db.transaction(STORE, mode);
    const req = fn(tx.objectStore(STORE));
    tx.oncomplete = () => resolve(req.result);
    tx.onerror = () => reject(tx.error);
  });
}

// Exposed to Python (`from js import kiteStore, kiteDeviceKey, kitePost`).
self.kiteStore = {
  get: (key) => idbOp("readonly", (s) => s.get(key)),
  put: (key, value) => idbOp("readwrite", (s) => s.put(value, key)),
  delete: (key) => idbOp("readwrite", (s) => s.delete(key)),
};

// A device X25519 key pair (one per paired host, under `name`): generated once,
// non-extractable, kept in IndexedDB as CryptoKeys.
self.kiteDeviceKey = async (name = "device") => {
  let pair = await self.kiteStore.get(name);
  if (!pair) {
    pair = await crypto.subtle.generateKey({ name: "X25519" }, false, ["deriveBits"]);
    await self.kiteStore.put(name, { privateKey: pair.privateKey, publicKey: pair.publicKey });
  }
  return pair;
};

self.kitePost = (json) => postMessage(JSON.parse(json));

const progress = (value, label) => postMessage({ type: "progress", value, label });

let kite = null;

async function boot({ pyodide: pyodideDir, py: pyDir, link }) {
  const t0 = performance.now();
  progress(0.05, "Loading the Python runtime");
  const { loadPyodide } = await import(new URL(pyodideDir + "pyodide.mjs", self.location.origin + "/").href);
  const base = new URL(pyDir, self.location.origin + "/").href;
  const pyodide = await loadPyodide({
    indexURL: new URL(pyodideDir, self.location.origin + "/").href,
    lockFileURL: base + "pyodide-lock.json",
    packageBaseUrl: base,
    stdout: (s) => console.log(s),
    stderr: (s) => console.warn(s),
  });
  const tRuntime = performance.now();
  progress(0.75, "Loading the agent");
  await pyodide.loadPackage("kite-agent-core", { checkIntegrity: true });
  progress(0.9, "Starting the agent");
  kite = pyodide.pyimport("kite_web");
  const tReady = performance.now();
  postMessage({
    type: "booted",
    timings: { runtime_ms: tRuntime - t0, total_ms: tReady - t0 },
  });
  kite.start(link || null);
}

self.onmessage = async (e) => {
  const msg = e.data;
  try {
    if (msg.type === "boot") await boot(msg);
    else if (msg.type === "submit") kite.submit(msg.text);
    else if (msg.type === "approve") kite.approve(msg.id, msg.ok);
    else if (msg.type === "abort") kite.abort();
    else if (kite) kite.handle(JSON.stringify(msg)); // sessions, files, settings, hosts (kite_web.App.handle)
  } catch (err) {
    postMessage({ type: "state", state: "error", detail: String(err && err.message ? err.message : err) });
  }
};
