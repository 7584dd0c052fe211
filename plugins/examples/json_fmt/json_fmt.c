/* json_fmt: validate and pretty-print JSON (a Kite example plugin).
 *
 * format   {"text": "<json>", "indent": 2}  ->  {"valid": true, "formatted": "..."}
 *                                            or {"valid": false, "error": "...", "line": L, "column": C}
 * validate {"text": "<json>"}               ->  the same without "formatted"
 *
 * Numbers and strings keep their exact spelling; only whitespace changes. indent 0 = compact.
 */
#include "kite_json.h"

static int32_t run(int pretty) {
  size_t n;
  char *args = kite_input_all(&n);
  if (!args) return kite_error("input too large for the plugin's memory");
  kbuf text = {0};
  if (kj_get_string(args, n, "text", &text) != 1)
    return kite_error("expected arguments {\"text\": \"<json>\", \"indent\": 2}");
  int64_t indent = 2;
  int got = kj_get_int(args, n, "indent", &indent);
  if (got < 0 || indent < 0 || indent > 8) return kite_error("\"indent\" must be an integer 0..8");

  kbuf formatted = {0};
  kj state;
  int ok = kj_format(text.data, text.len, (int)indent, pretty ? &formatted : 0, &state);
  kbuf out = {0};
  if (ok) {
    kb_puts(&out, "{\"valid\":true");
    if (pretty) {
      kb_puts(&out, ",\"formatted\":");
      kb_put_json_string(&out, formatted.data, formatted.len);
    }
    kb_putc(&out, '}');
  } else {
    uint64_t line, col;
    kj_position(text.data, state.error_at, &line, &col);
    kb_puts(&out, "{\"valid\":false,\"error\":");
    kb_put_json_string(&out, state.error, kite_strlen(state.error));
    kb_puts(&out, ",\"line\":");
    kb_put_uint(&out, line);
    kb_puts(&out, ",\"column\":");
    kb_put_uint(&out, col);
    kb_putc(&out, '}');
  }
  if (out.oom || formatted.oom) return kite_error("out of memory");
  kite_output(out.data, out.len);
  return 0;
}

KITE_FN(format) { return run(1); }

KITE_FN(validate) { return run(0); }
