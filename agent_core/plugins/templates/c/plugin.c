/* {{name}}: a Kite plugin in C.
 *
 *   kite plugin build    compile to {{name}}.wasm and pin its sha256 in kite-plugin.json
 *   kite plugin test     run tests.json on every engine
 *
 * count {"text": "..."} -> {"bytes": 12, "lines": 1, "words": 2}
 */
#include "kite_json.h"

KITE_FN(count) {
  size_t n;
  char *args = kite_input_all(&n);
  if (!args) return kite_error("input too large");
  kbuf text = {0};
  if (kj_get_string(args, n, "text", &text) != 1)
    return kite_error("expected arguments {\"text\": \"...\"}");

  uint64_t lines = 0, words = 0;
  int in_word = 0;
  for (size_t i = 0; i < text.len; i++) {
    char c = text.data[i];
    if (c == '\n') lines++;
    int space = c == ' ' || c == '\n' || c == '\t' || c == '\r';
    if (!space && !in_word) words++;
    in_word = !space;
  }
  if (text.len && text.data[text.len - 1] != '\n') lines++;

  kbuf out = {0};
  kb_puts(&out, "{\"bytes\":");
  kb_put_uint(&out, text.len);
  kb_puts(&out, ",\"lines\":");
  kb_put_uint(&out, lines);
  kb_puts(&out, ",\"words\":");
  kb_put_uint(&out, words);
  kb_putc(&out, '}');
  if (out.oom) return kite_error("out of memory");
  kite_output(out.data, out.len);
  return 0;
}
