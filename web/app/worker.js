// The Python runtime, in a Web Worker so the page never freezes while Pyodide boots or works.
// The page posts {type:"boot", pyodide, py, link}; this file loads Pyodide from the vendored
// copy (never a CDN) through boot.js (wheel sha256-checked against the lock file), and hands
// over to kite_web.py. Progress and state go back as {type:"progress"|"state"|...} messages.

import { bootRuntime, listenForWasm, pageWasm } from "./boot.js";

listenForWasm(); // before self.onmessage: the page's compiled wasm never reaches the dispatcher

// Boot milestones for the page's window.kiteMarks, in absolute time (the page converts).
const markAt = (name, at) => postMessage({ type: "mark", name, at });
markAt("worker_start", performance.timeOrigin + performance.now());

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

async function boot({ pyodide: pyodideDir, py: pyDir, link, wasm }) {
  progress(0.05, "Loading the Python runtime");
  const bootStart = performance.timeOrigin + performance.now();
  const booted = await bootRuntime({ pyodideDir, pyDir, wasm, progress });
  kite = booted.kite;
  const t = booted.timings;
  for (const [name, ms] of Object.entries(t)) if (typeof ms === "number") markAt(name, bootStart + ms);
  postMessage({
    type: "booted",
    // runtime_ms/total_ms: kept for older readers; the rest is the per-step breakdown.
    timings: { ...t, runtime_ms: t.pyodide_ready, total_ms: t.agent_imported },
  });
  kite.start(link || null);
  if (booted.snapshotMissing) {
    const module = wasm === "page" ? pageWasm().catch(() => null) : Promise.resolve(null);
    setTimeout(() => startSnapshotWorker(pyodideDir, pyDir, module), SNAPSHOT_DELAY_MS);
  }
}

// The snapshot is made in its own worker, a few seconds after boot so that it does not compete
// with connecting; the next boot restores it (boot.js). Failing only costs the speed-up.
const SNAPSHOT_DELAY_MS = 3000;
function startSnapshotWorker(pyodideDir, pyDir, modulePromise) {
  const w = new Worker(new URL("snapshot.js", import.meta.url), { type: "module" });
  w.onmessage = (e) => {
    if (!e.data.ok) console.warn("no Python snapshot:", e.data.error);
    w.terminate();
  };
  w.onerror = (e) => {
    console.warn("no Python snapshot:", e.message);
    w.terminate();
  };
  // the page's compiled module, when there is one: the snapshot worker need not compile again
  modulePromise.then((module) => w.postMessage({ pyodideDir, pyDir, module: module || null }));
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
