// Boot path of the Python runtime, shared by the page (main.js) and the worker (worker.js).
//
// Measured on Chromium 156 (docs/architecture.md, "Web runtime"; docs/web.md): Pyodide's wasm compiled by
// `instantiateStreaming` inside a dedicated worker boots ~1.5-2 s slower than the same call on
// the page, while a `WebAssembly.Module` compiled on the page and posted to the worker (modules
// are structured-cloneable; no copy of the code) runs as fast as the bare page. So the page
// compiles the wasm (`compileWasm`, which also gets Chromium's compiled-code cache on later
// visits) while the worker imports Pyodide's JavaScript, and the worker instantiates that module.
// Everything else the agent needs (lock file, wheel) is fetched at the start, in parallel with
// Pyodide's own downloads, and the wheel is copied into site-packages from JS (no micropip, no
// loadPackage round-trip) after its sha256 from the lock file has been checked (fetch
// `integrity`). From the second visit on, a memory snapshot of the interpreter with the agent's
// modules imported replaces CPython's start-up and those imports (see SNAPSHOT_MODULES).

const abs = (path) => new URL(path, self.location.origin + "/").href;

/** Page side: compile Pyodide's wasm and hand it to the worker; null on failure (it falls back). */
export function compileWasm(worker, pyodideDir) {
  WebAssembly.compileStreaming(fetch(abs(pyodideDir + "pyodide.asm.wasm")))
    .then((module) => worker.postMessage({ type: "wasm", module }))
    .catch((err) => {
      console.warn("compiling the runtime on the page failed, the worker will:", err);
      worker.postMessage({ type: "wasm", module: null });
    });
}

let wasmArrived;
const wasmFromPage = new Promise((resolve) => (wasmArrived = resolve));

/** Worker side: take the page's `{type: "wasm"}` message before the app's dispatcher sees it. */
export function listenForWasm() {
  self.addEventListener("message", (e) => {
    if (e.data && e.data.type === "wasm") {
      e.stopImmediatePropagation();
      wasmArrived(e.data.module);
    }
  });
}

function b64(hex) {
  const bytes = hex.match(/../g).map((h) => parseInt(h, 16));
  return btoa(String.fromCharCode(...bytes));
}

/**
 * Fetch the lock file, then the agent wheel with its sha256 enforced by the browser (SRI).
 * Returns both promises: Pyodide needs only the lock, and should not wait for the wheel.
 */
function fetchWheel(pyDir) {
  const lock = fetch(abs(pyDir + "pyodide-lock.json")).then((r) => {
    if (!r.ok) throw new Error(`the lock file: HTTP ${r.status}`);
    return r.json();
  });
  const bytes = lock.then(async (lock) => {
    const entry = lock.packages["kite-agent-core"];
    if (!entry || !/^[0-9a-f]{64}$/.test(entry.sha256 || "")) throw new Error("the lock file has no valid kite-agent-core entry");
    const res = await fetch(abs(pyDir + entry.file_name), { integrity: "sha256-" + b64(entry.sha256) });
    if (!res.ok) throw new Error(`the agent wheel: HTTP ${res.status}`);
    return new Uint8Array(await res.arrayBuffer());
  });
  lock.catch(() => {});
  bytes.catch(() => {}); // both are awaited (and reported) later
  return { lock, bytes };
}

/**
 * Copy a *stored* zip (build.py writes the wheel uncompressed; the transfer is brotli) straight
 * into Pyodide's file system: no Python `zipfile`/`shutil` import, no extraction in wasm.
 * Returns false, having written nothing, if any entry is compressed or its name is unsafe.
 */
export function writeStoredZip(FS, zip, dir) {
  const dv = new DataView(zip.buffer, zip.byteOffset, zip.byteLength);
  let eocd = zip.length - 22;
  while (eocd >= 0 && dv.getUint32(eocd, true) !== 0x06054b50) eocd--;
  if (eocd < 0) return false;
  const count = dv.getUint16(eocd + 10, true);
  let p = dv.getUint32(eocd + 16, true);
  const utf8 = new TextDecoder();
  const files = [];
  for (let i = 0; i < count; i++) {
    if (dv.getUint32(p, true) !== 0x02014b50) return false;
    const method = dv.getUint16(p + 10, true);
    const size = dv.getUint32(p + 20, true);
    const nameLen = dv.getUint16(p + 28, true);
    const extraLen = dv.getUint16(p + 30, true);
    const commentLen = dv.getUint16(p + 32, true);
    const local = dv.getUint32(p + 42, true);
    const name = utf8.decode(zip.subarray(p + 46, p + 46 + nameLen));
    p += 46 + nameLen + extraLen + commentLen;
    if (name.endsWith("/")) continue;
    if (method !== 0 || name.startsWith("/") || name.split("/").some((s) => s === ".." || s === "")) return false;
    const start = local + 30 + dv.getUint16(local + 26, true) + dv.getUint16(local + 28, true);
    files.push([name, zip.subarray(start, start + size)]);
  }
  for (const [name, data] of files) {
    const path = `${dir}/${name}`;
    FS.mkdirTree(path.slice(0, path.lastIndexOf("/")));
    FS.writeFile(path, data);
  }
  return true;
}

// A memory snapshot of the interpreter taken on the first boot, once the agent's pure-Python
// modules are imported and before anything touches JavaScript objects (kite_web's `from js
// import ...`, any key or connection): later boots restore it instead of starting CPython and
// importing agent_core again (measured under Node: 1.2 s instead of 13 s on a loaded box). It is
// ~30 MB of this device's Cache Storage, never downloaded, keyed by the Pyodide build and the
// wheel's content hash so a new build never restores an old state; Pyodide also refuses a
// snapshot of another runtime build. Holds no secret: it is taken before the device key, the
// host list or any session is read.
const SNAPSHOT_MODULES = [
  "asyncio",
  "json",
  "agent_core.agent.events",
  "agent_core.agent.local",
  "agent_core.agent.loop",
  "agent_core.agent.permissions",
  "agent_core.agent.session",
  "agent_core.agent.sync",
  "agent_core.channel.handshake",
  "agent_core.client",
  "agent_core.llm.providers",
  "agent_core.pairing",
  "agent_core.rpc.errors",
];
const SNAPSHOT_PREFIX = "kitesnap-"; // not "kite-": the service worker prunes those on update

function snapshotName(pyodideDir, pyDir) {
  const hash = (dir) => dir.split("/").filter(Boolean).pop();
  return `${SNAPSHOT_PREFIX}${hash(pyodideDir)}-${hash(pyDir)}`;
}

async function readSnapshot(name) {
  try {
    if (!self.caches || !(await caches.has(name))) return null;
    const res = await (await caches.open(name)).match(abs("snapshot"));
    return res ? new Uint8Array(await res.arrayBuffer()) : null;
  } catch {
    return null; // no Cache Storage (insecure context): boot without
  }
}

async function saveSnapshot(name, memory) {
  try {
    for (const key of await caches.keys()) {
      if (key.startsWith(SNAPSHOT_PREFIX) && key !== name) await caches.delete(key);
    }
    await (await caches.open(name)).put(abs("snapshot"), new Response(memory));
  } catch (err) {
    console.warn("could not save the Python snapshot:", err);
  }
}

/**
 * Pyodide calls instantiateStreaming(fetch(wasm)) itself: answer the next such call with
 * `modulePromise` (a module compiled elsewhere; null: compile here after all), and keep that
 * fetch from downloading the 9.6 MB file a second time.
 */
function answerWasmWith(modulePromise, pyodideDir, onModule = () => {}) {
  const realFetch = self.fetch;
  const doFetch = realFetch.bind(self);
  const realInstantiate = WebAssembly.instantiateStreaming;
  const wasmUrl = abs(pyodideDir + "pyodide.asm.wasm");
  self.fetch = (input, init) => {
    if (String(input && input.url ? input.url : input) !== wasmUrl) return doFetch(input, init);
    self.fetch = realFetch;
    return Promise.resolve(new Response(new Uint8Array(0), { headers: { "Content-Type": "application/wasm" } }));
  };
  WebAssembly.instantiateStreaming = async (_response, imports) => {
    const module = await modulePromise;
    onModule();
    WebAssembly.instantiateStreaming = realInstantiate;
    self.fetch = realFetch;
    if (!module) return realInstantiate.call(WebAssembly, doFetch(wasmUrl), imports);
    return { module, instance: await WebAssembly.instantiate(module, imports) };
  };
}

/** The page's compiled module, once it has arrived (null if the page could not compile it). */
export const pageWasm = () => wasmFromPage;

/**
 * Worker side: Pyodide up, the agent wheel installed. `wasm: "page"` means the page is compiling
 * the wasm module and will post it. Returns `{pyodide, timings}` (ms since `t0`).
 */
export async function bootRuntime({ pyodideDir, pyDir, wasm, progress }) {
  const t0 = performance.now();
  const timings = {};
  const mark = (name) => (timings[name] = Math.round(performance.now() - t0));
  const wheel = fetchWheel(pyDir);
  wheel.bytes.then(() => mark("wheel_fetched"), () => {});
  const snapName = snapshotName(pyodideDir, pyDir);
  const snapshotRead = readSnapshot(snapName); // in parallel too

  const { loadPyodide } = await import(abs(pyodideDir + "pyodide.mjs"));
  mark("pyodide_js");
  if (wasm === "page") answerWasmWith(wasmFromPage, pyodideDir, () => mark("wasm_module"));
  const lockContents = wheel.lock; // a failed fetch fails loadPyodide, loudly
  const options = {
    indexURL: abs(pyodideDir),
    lockFileContents: lockContents,
    packageBaseUrl: abs(pyDir),
    stdout: (s) => console.log(s),
    stderr: (s) => console.warn(s),
  };
  const snapshot = await snapshotRead;
  let pyodide;
  if (snapshot) {
    try {
      pyodide = await loadPyodide({ ...options, _loadSnapshot: snapshot });
      timings.snapshot = "used";
    } catch (err) {
      console.warn("the saved Python snapshot did not load; booting without it:", err);
      await caches.delete(snapName).catch(() => {});
    }
  }
  if (!pyodide) {
    pyodide = await loadPyodide(options);
    timings.snapshot = "none";
  }
  mark("pyodide_ready");
  progress(0.8, "Loading the agent");
  const bytes = await wheel.bytes;
  // Always: a snapshot holds imported modules, not the files later imports read.
  installWheel(pyodide, bytes);
  mark("wheel_installed");
  progress(0.9, "Starting the agent");
  const kite = pyodide.pyimport("kite_web");
  mark("agent_imported");
  return { pyodide, kite, timings, snapshotMissing: !snapshot };
}

function installWheel(pyodide, bytes) {
  const sitePackages = pyodide.runPython(
    "import sys; f'/lib/python{sys.version_info[0]}.{sys.version_info[1]}/site-packages'",
  );
  if (!writeStoredZip(pyodide.FS, bytes, sitePackages)) {
    pyodide.unpackArchive(bytes, "wheel", { extractDir: sitePackages }); // a deflated wheel
  }
  // Only site-packages' finder forgets its directory listing: importlib.invalidate_caches()
  // would also import importlib.metadata (~45 ms of a boot) to clear a cache nothing uses yet.
  pyodide.runPython(`import sys\nf = sys.path_importer_cache.get(${JSON.stringify(sitePackages)})\nif f is not None: f.invalidate_caches()`);
}

/**
 * Snapshot worker (snapshot.js), started by the app's worker once the app is up and only when
 * no snapshot exists: a separate interpreter in "make snapshot" mode (where `from js import`
 * of some globals breaks, so the app's own interpreter must not run in it) imports the agent's
 * modules, and its memory is saved for the next boots.
 */
export async function makeSnapshot({ pyodideDir, pyDir, module }) {
  const name = snapshotName(pyodideDir, pyDir);
  const wheel = fetchWheel(pyDir);
  const [lock, bytes] = [await wheel.lock, await wheel.bytes];
  const { loadPyodide } = await import(abs(pyodideDir + "pyodide.mjs"));
  if (module) answerWasmWith(Promise.resolve(module), pyodideDir); // the page's: no recompile
  const pyodide = await loadPyodide({
    indexURL: abs(pyodideDir),
    lockFileContents: lock,
    packageBaseUrl: abs(pyDir),
    _makeSnapshot: true,
  });
  installWheel(pyodide, bytes);
  pyodide.runPython(`import importlib\nfor m in ${JSON.stringify(SNAPSHOT_MODULES)}: importlib.import_module(m)`);
  const memory = pyodide.makeMemorySnapshot();
  await saveSnapshot(name, memory);
  return memory.length;
}
