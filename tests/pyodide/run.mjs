#!/usr/bin/env node
// Run agent_core's tests inside Pyodide under Node: one suite, two runtimes.
//
//   node tests/pyodide/run.mjs [pytest options] [tests/...]   (no tests/ path: DEFAULT_TESTS)
//   node tests/pyodide/run.mjs --python FILE [args...]        (run a script, e.g. a benchmark)
//
// Needs `npm ci` (Pyodide comes from node_modules/pyodide, never a CDN) and the wheels from
// `python tests/pyodide/fetch_wheels.py` (into .cache/pyodide-wheels/, or $KITE_PYODIDE_WHEELS).
// What it does:
//   1. re-executes itself with the Node flags it needs, if they are missing: JSPI (WebAssembly
//      stack switching, so Python can wait on a JS promise synchronously: pyodide.ffi.run_sync)
//      and the WebSocket global (agent_core.transport.ws_browser uses it, as in a browser);
//   2. boots Pyodide offline from node_modules/pyodide, with a timeout (a broken install can
//      make loadPyodide hang rather than fail);
//   3. unpacks the pinned wheels into site-packages and mounts the repository at its own path
//      (NODEFS), so the tests import agent_core and tests.* from the working tree;
//   4. runs pytest (tests/pyodide/bootstrap.py) and exits with pytest's status. pytest's own
//      summary line ("N passed, M skipped in S s") ends stdout; timings go to stderr.
// Environment: KITE_PAIR_URL (a `kite pair --json` URL) enables the cross-runtime bridge test;
// KITE_PYODIDE_BOOT_TIMEOUT (seconds, default 60). All environment variables are passed on to
// Python's os.environ, except HOME. Host directories visible inside: the repository, and the
// Noise test-vector cache ($KITE_TEST_DATA or ~/.cache/kite-test-data) when it exists.
// Bytecode is cached in .cache/pyodide-pycache/ (sys.pycache_prefix), never in the tree.

import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, readFileSync } from "node:fs";
import { constants, homedir } from "node:os";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, "..", "..");
const PYODIDE_DIR = path.join(REPO, "node_modules", "pyodide");
const WHEELS = process.env.KITE_PYODIDE_WHEELS || path.join(REPO, ".cache", "pyodide-wheels");
// Bytecode cache, one directory per pinned wheel set (bootstrap.py explains why).
const PINS_ID = createHash("sha256").update(readFileSync(path.join(HERE, "requirements.txt"))).digest("hex").slice(0, 12);
const PYCACHE = path.join(REPO, ".cache", "pyodide-pycache", PINS_ID);
const TEST_DATA = path.resolve(process.env.KITE_TEST_DATA || path.join(homedir(), ".cache", "kite-test-data"));
const BOOT_TIMEOUT_S = Number(process.env.KITE_PYODIDE_BOOT_TIMEOUT || 60);
const DEFAULT_TESTS = [
  "tests/test_noise.py",
  "tests/test_noise_properties.py",
  "tests/test_noise_vectors.py",
  "tests/test_frames.py",
  "tests/test_pairing_urls.py",
  "tests/test_runtime.py",
  "tests/test_plugins_portable.py",
  "tests/test_webcrypto.py",
  "tests/test_ws_browser.py",
];

const log = (msg) => process.stderr.write(`[pyodide] ${msg}\n`);
const fail = (msg) => {
  log(`error: ${msg}`);
  process.exit(2);
};

// -- 1. Node flags ----------------------------------------------------------------------------

function missingFlags() {
  const flags = [];
  const jspi = typeof WebAssembly.Suspending === "function" || typeof WebAssembly.Suspender === "function";
  if (!jspi) {
    const major = Number(process.versions.node.split(".")[0]);
    // Node 20 has V8's original JSPI behind this flag; later V8s call it --experimental-wasm-jspi.
    // The original gives every call from JS into Python (each resolved promise an await was
    // waiting on) a fresh stack of this size: 984 KB by default, and the cost grows with it.
    // 512 KB ran the suite ~20% faster here; 128 KB overflowed on a 900-deep json.dumps.
    if (major <= 21) flags.push("--experimental-wasm-stack-switching", "--wasm-stack-switching-stack-size=512");
    else flags.push("--experimental-wasm-jspi");
  }
  if (typeof globalThis.WebSocket !== "function") flags.push("--experimental-websocket");
  return flags;
}

const needed = missingFlags();
if (needed.length) {
  if (process.env.KITE_PYODIDE_REEXEC) fail(`Node ${process.version} lacks ${needed.join(" ")} even with the flags`);
  const child = spawn(process.execPath, [...needed, ...process.execArgv, fileURLToPath(import.meta.url), ...process.argv.slice(2)], {
    stdio: "inherit",
    env: { ...process.env, KITE_PYODIDE_REEXEC: "1" },
  });
  for (const sig of ["SIGINT", "SIGTERM"]) process.on(sig, () => child.kill(sig));
  child.on("exit", (code, signal) => process.exit(code ?? 128 + (constants.signals[signal] || 0)));
} else {
  await main();
}

// -- 2..4 -------------------------------------------------------------------------------------

function readPins() {
  // name==version lines of requirements.txt (hashes are checked by fetch_wheels.py).
  const text = readFileSync(path.join(HERE, "requirements.txt"), "utf8");
  return [...text.matchAll(/^([A-Za-z0-9_.-]+)==([^\s\\]+)/gm)].map(([, name, version]) => [
    name.replace(/[-_.]+/g, "_").toLowerCase(),
    version,
  ]);
}

function wheelFiles() {
  const files = existsSync(WHEELS) ? readdirSync(WHEELS) : [];
  const found = [];
  const missing = [];
  for (const [name, version] of readPins()) {
    const file = files.find((f) => f.startsWith(`${name}-${version}-`) && f.endsWith(".whl"));
    if (file) found.push(path.join(WHEELS, file));
    else missing.push(`${name}==${version}`);
  }
  if (missing.length) fail(`wheels missing in ${WHEELS}: ${missing.join(", ")}; run: python tests/pyodide/fetch_wheels.py`);
  return found;
}

async function boot() {
  if (!existsSync(path.join(PYODIDE_DIR, "pyodide.asm.wasm"))) fail(`no Pyodide in ${PYODIDE_DIR}; run: npm ci`);
  const { loadPyodide } = await import(pathToFileURL(path.join(PYODIDE_DIR, "pyodide.mjs")).href);
  const env = { ...process.env };
  delete env.HOME;
  delete env.KITE_PYODIDE_REEXEC;
  if (existsSync(TEST_DATA)) env.KITE_TEST_DATA = TEST_DATA;
  else delete env.KITE_TEST_DATA;
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`Pyodide did not boot within ${BOOT_TIMEOUT_S} s`)), BOOT_TIMEOUT_S * 1000);
  });
  try {
    return await Promise.race([loadPyodide({ indexURL: PYODIDE_DIR + path.sep, env, enableRunUntilComplete: true }), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

async function main() {
  const args = process.argv.slice(2);
  const wheels = wheelFiles();
  let t = performance.now();
  let pyodide;
  try {
    pyodide = await boot();
  } catch (err) {
    fail(String(err?.stack || err));
  }
  const bootS = (performance.now() - t) / 1000;
  const write = (stream) => ({
    write: (buf) => {
      stream.write(Buffer.from(buf)); // a copy: Pyodide reuses buf once write returns
      return buf.length;
    },
  });
  pyodide.setStdout(write(process.stdout));
  pyodide.setStderr(write(process.stderr));

  t = performance.now();
  const site = pyodide.runPython("import site; site.getsitepackages()[0]");
  for (const file of wheels) {
    pyodide.unpackArchive(new Uint8Array(readFileSync(file)), "wheel", { extractDir: site });
  }
  const mount = (dir) => {
    pyodide.FS.mkdirTree(dir);
    pyodide.FS.mount(pyodide.FS.filesystems.NODEFS, { root: dir }, dir);
  };
  mount(REPO);
  if (existsSync(TEST_DATA) && !TEST_DATA.startsWith(REPO + path.sep)) mount(TEST_DATA);
  mkdirSync(PYCACHE, { recursive: true });
  const installS = (performance.now() - t) / 1000;
  log(`Pyodide ${pyodide.version} (Python ${pyodide.runPython("import sys; sys.version.split()[0]")}) booted in ${bootS.toFixed(2)} s; ${wheels.length} wheels + repo mount in ${installS.toFixed(2)} s`);

  const ns = pyodide.toPy({});
  const bootstrap = path.join(HERE, "bootstrap.py");
  pyodide.runPython(readFileSync(bootstrap, "utf8"), { globals: ns, filename: bootstrap });
  const script = args[0] === "--python";
  const entry = ns.get(script ? "run_script" : "run_pytest");
  const pyArgs = script ? args.slice(1) : args.some((a) => a.startsWith("tests/")) ? args : [...args, ...DEFAULT_TESTS];
  t = performance.now();
  let status;
  try {
    status = await entry.callPromising(REPO, PYCACHE, pyodide.toPy(pyArgs));
  } catch (err) {
    fail(`the Python side crashed: ${err?.message || err}`);
  }
  const what = script ? pyArgs[0] : "pytest";
  log(`${what} inside Pyodide: ${((performance.now() - t) / 1000).toFixed(2)} s, exit status ${status}`);
  process.exit(status);
}
