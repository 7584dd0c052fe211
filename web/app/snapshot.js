// A short-lived module worker that makes the Python memory snapshot later boots restore (see
// boot.js: makeSnapshot). Started by worker.js after the app is up, when none exists yet; it
// posts {ok, bytes | error} and closes.
import { makeSnapshot } from "./boot.js";

self.onmessage = async (e) => {
  try {
    postMessage({ ok: true, bytes: await makeSnapshot(e.data) });
  } catch (err) {
    postMessage({ ok: false, error: String(err && err.message ? err.message : err) });
  }
  self.close();
};
