/* http_get: a test plugin for `http_request` in every engine (the browser's included).
 * The tool's arguments, {"url": "...", "method"?: "...", "headers"?: {...}}, are exactly an
 * Extism HTTP request, so they go to the host as they are; the output is
 * "status <code>\n" followed by the response body. */
#include "kite_pdk.h"

KITE_FN(get) {
  size_t n;
  char *args = kite_input_all(&n);
  if (!args) return kite_error("out of memory");
  kite_handle resp = kite_http_request(kite_alloc_bytes(args, n), 0);
  int32_t status = kite_http_status_code();
  size_t body = resp ? (size_t)kite_length(resp) : 0;
  char *out = (char *)kite_malloc(16 + body);
  if (!out) return kite_error("out of memory");
  const char *p = "status ";
  size_t i = 0;
  while (*p) out[i++] = *p++;
  char digits[12];
  int d = 0;
  uint32_t v = status < 0 ? 0 : (uint32_t)status;
  do { digits[d++] = (char)('0' + v % 10); v /= 10; } while (v);
  while (d) out[i++] = digits[--d];
  out[i++] = '\n';
  if (body) kite_load(resp, out + i, body);
  kite_output(out, i + body);
  return 0;
}
