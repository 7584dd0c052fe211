/* todo_scan: find TODO / FIXME / XXX / HACK markers in a text (a Kite example plugin).
 *
 * scan {"text": "...", "max_items": 1000}
 *   -> {"count": N, "truncated": false,
 *       "items": [{"line": 3, "column": 5, "tag": "TODO", "text": "what the note says"}]}
 *
 * A marker is one of the tags as a whole word (not inside an identifier). Its text is the rest
 * of the line after an optional "(author)" and a ':' or '-', trimmed.
 */
#include "kite_json.h"

static const char *TAGS[] = {"TODO", "FIXME", "XXX", "HACK"};

static int ident(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

KITE_FN(scan) {
  size_t n;
  char *args = kite_input_all(&n);
  if (!args) return kite_error("input too large for the plugin's memory");
  kbuf text = {0};
  if (kj_get_string(args, n, "text", &text) != 1)
    return kite_error("expected arguments {\"text\": \"...\"}");
  int64_t max_items = 1000;
  if (kj_get_int(args, n, "max_items", &max_items) < 0 || max_items < 0)
    return kite_error("\"max_items\" must be a non-negative integer");

  const char *s = text.data;
  size_t len = text.len;
  kbuf items = {0};
  uint64_t count = 0, line = 1;
  int truncated = 0;
  size_t line_start = 0;
  for (size_t i = 0; i < len; i++) {
    if (s[i] == '\n') {
      line++;
      line_start = i + 1;
      continue;
    }
    if (i > 0 && ident(s[i - 1])) continue;
    for (unsigned t = 0; t < sizeof TAGS / sizeof TAGS[0]; t++) {
      size_t tl = kite_strlen(TAGS[t]), k = 0;
      while (k < tl && i + k < len && s[i + k] == TAGS[t][k]) k++;
      if (k != tl || (i + tl < len && ident(s[i + tl]))) continue;
      if ((int64_t)count >= max_items) {
        truncated = 1;
        break;
      }
      /* the note: skip "(author)", then ':' / '-' and blanks; up to the end of the line */
      size_t a = i + tl, end = a;
      while (end < len && s[end] != '\n') end++;
      if (a < end && s[a] == '(') {
        size_t close = a;
        while (close < end && s[close] != ')') close++;
        if (close < end) a = close + 1;
      }
      while (a < end && (s[a] == ':' || s[a] == '-' || s[a] == ' ' || s[a] == '\t')) a++;
      while (end > a && (s[end - 1] == ' ' || s[end - 1] == '\t' || s[end - 1] == '\r')) end--;
      if (count) kb_putc(&items, ',');
      kb_puts(&items, "{\"line\":");
      kb_put_uint(&items, line);
      kb_puts(&items, ",\"column\":");
      kb_put_uint(&items, i - line_start + 1);
      kb_puts(&items, ",\"tag\":");
      kb_put_json_string(&items, TAGS[t], tl);
      kb_puts(&items, ",\"text\":");
      kb_put_json_string(&items, s + a, end - a);
      kb_putc(&items, '}');
      count++;
      i += tl - 1;
      break;
    }
  }
  kbuf out = {0};
  kb_puts(&out, "{\"count\":");
  kb_put_uint(&out, count);
  kb_puts(&out, truncated ? ",\"truncated\":true,\"items\":[" : ",\"truncated\":false,\"items\":[");
  kb_put(&out, items.data, items.len);
  kb_puts(&out, "]}");
  if (out.oom || items.oom) return kite_error("out of memory");
  kite_output(out.data, out.len);
  return 0;
}
