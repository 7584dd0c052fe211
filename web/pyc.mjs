#!/usr/bin/env node
// Build helper (not shipped): compile Python sources to bytecode with Pyodide's own CPython, so
// the wheel carries .pyc files for exactly the interpreter that will run them (3.14 here, while
// the build host may run 3.11). Called by build.py:
//
//   node web/pyc.mjs <pyodide dir> <src dir> <out dir> [--boot MODULE...] [--time MODULE...]
//
// Every *.py under <src dir> becomes <out dir>/<rel dir>/__pycache__/<name>.<cache_tag>.pyc,
// written as *unchecked-hash* pycs (PEP 552): valid regardless of the source's mtime, which a
// wheel unpacked in the browser does not preserve. Prints the cache tag. With --boot, it then
// imports the named modules (the worker's globals that `from js import ...` needs are stubbed)
// and prints `BOOT ["rel/path.py", ...]`: the sources a boot actually imports, so the build can
// ship bytecode for those only (bytecode compresses worse than source: bytes on first visit).
// With --time, it imports the named modules and prints the milliseconds it took.
import { readdirSync, readFileSync, mkdirSync, writeFileSync, statSync } from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

const [pyodideDir, srcDir, outDir, ...rest] = process.argv.slice(2);
if (!pyodideDir || !srcDir || !outDir) {
  console.error("usage: node web/pyc.mjs <pyodide dir> <src dir> <out dir> [--time MODULE...]");
  process.exit(2);
}
const opt = (name) => {
  const i = rest.indexOf(name);
  if (i < 0) return [];
  const end = rest.findIndex((a, j) => j > i && a.startsWith("--"));
  return rest.slice(i + 1, end < 0 ? undefined : end);
};
const timeMods = opt("--time");
const bootMods = opt("--boot");
const noPyc = process.env.PYC_TIME_SOURCE === "1"; // time imports from sources only
const { loadPyodide } = await import(pathToFileURL(path.join(path.resolve(pyodideDir), "pyodide.mjs")).href);
const timer = setTimeout(() => { console.error("pyc.mjs: Pyodide did not start in 120 s"); process.exit(2); }, 120000);
const py = await loadPyodide({ indexURL: path.resolve(pyodideDir) + path.sep, stdout: (s) => console.error(s), stderr: (s) => console.error(s) });
clearTimeout(timer);

function walk(dir, rel = "") {
  const out = [];
  for (const name of readdirSync(dir).sort()) {
    const full = path.join(dir, name);
    const r = rel ? `${rel}/${name}` : name;
    if (statSync(full).isDirectory()) { if (name !== "__pycache__") out.push(...walk(full, r)); }
    else if (name.endsWith(".py")) out.push(r);
  }
  return out;
}
const files = walk(srcDir);
py.FS.mkdirTree("/pycsrc");
for (const rel of files) {
  py.FS.mkdirTree(path.posix.dirname(`/pycsrc/${rel}`));
  py.FS.writeFile(`/pycsrc/${rel}`, readFileSync(path.join(srcDir, rel)));
}
py.globals.set("FILES", py.toPy(files));
const result = py.runPython(`
import py_compile, sys, importlib.util
out = {}
for rel in FILES:
    cfile = importlib.util.cache_from_source("/pycsrc/" + rel)
    py_compile.compile("/pycsrc/" + rel, cfile=cfile, dfile=rel, doraise=True,
                       invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    out[rel] = cfile[len("/pycsrc/"):]
sys.implementation.cache_tag + "\\n" + "\\n".join(f"{k}\\t{v}" for k, v in out.items())
`);
const [tag, ...pairs] = result.split("\n");
for (const line of pairs) {
  const [, cfile] = line.split("\t");
  const target = path.join(outDir, cfile);
  mkdirSync(path.dirname(target), { recursive: true });
  writeFileSync(target, py.FS.readFile(`/pycsrc/${cfile}`));
}
console.log(tag);
if (bootMods.length) {
  for (const name of ["kiteDeviceKey", "kitePost", "kiteStore"]) globalThis[name] ??= () => null;
  globalThis.WebSocket ??= class WebSocket {}; // Node 20 has none without a flag; only imported
  py.globals.set("BOOTMODS", py.toPy(bootMods));
  console.log(py.runPython(`
import sys, importlib, json, traceback
sys.path.insert(0, "/pycsrc")
failed = ""
for m in BOOTMODS:
    try:
        importlib.import_module(m)
    except BaseException:
        failed = traceback.format_exc(limit=-3)
"BOOTFAILED " + failed if failed else "BOOT " + json.dumps(sorted(
    f[len("/pycsrc/"):] for f in (getattr(m, "__file__", None) for m in list(sys.modules.values()))
    if f and f.startswith("/pycsrc/")
))
`));
}
if (timeMods.length) {
  py.globals.set("MODS", py.toPy(timeMods));
  py.globals.set("NOPYC", noPyc);
  console.log(py.runPython(`
import sys, time, importlib, shutil, os
if NOPYC:
    for d, dirs, _ in os.walk("/pycsrc"):
        if "__pycache__" in dirs:
            shutil.rmtree(os.path.join(d, "__pycache__"))
    sys.dont_write_bytecode = True
sys.path.insert(0, "/pycsrc")
t = time.perf_counter()
err = ""
for m in MODS:
    try:
        importlib.import_module(m)
    except Exception as exc:
        err += f" {m}: {exc!r}"
f"imports: {(time.perf_counter() - t) * 1000:.0f} ms{err}"
`));
}
process.exit(0);
