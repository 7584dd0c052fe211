/* echo / noop: what a typical PDK plugin does per call, for the per-call overhead benchmark.
 * echo copies the input into its own memory and back out through a new kernel block. */
#include "kite_pdk.h"

KITE_FN(noop) { return 0; }

KITE_FN(echo) {
  size_t n;
  char *buf = kite_input_all(&n);
  if (!buf) return kite_error("input too large");
  kite_output(buf, n);
  return 0;
}
