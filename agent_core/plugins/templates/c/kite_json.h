/*
 * kite_json.h — a small JSON reader/writer for plugins in C (no libc). Tools get their
 * arguments as a JSON object; this reads its members and writes JSON results.
 *
 * - kj_format(): validate a JSON text and pretty-print it in one pass (numbers and strings keep
 *   their exact spelling); errors carry a line, a column and a message.
 * - kj_get_string()/kj_get_int(): read one top-level member of an arguments object.
 * - kbuf: a growable output buffer in the plugin's scratch heap (kite_malloc).
 */
#ifndef KITE_JSON_H
#define KITE_JSON_H

#include "kite_pdk.h"

#define KJ_MAX_DEPTH 256

typedef struct {
  char *data;
  size_t len, cap;
  int oom;
} kbuf;

static inline void kb_grow(kbuf *b, size_t more) {
  if (b->oom) return;
  if (b->len + more <= b->cap) return;
  size_t cap = b->cap ? b->cap * 2 : 256;
  while (cap < b->len + more) cap *= 2;
  char *d = (char *)kite_malloc(cap);
  if (!d) {
    b->oom = 1;
    return;
  }
  if (b->len) __builtin_memcpy(d, b->data, b->len);
  b->data = d;
  b->cap = cap;
}

static inline void kb_put(kbuf *b, const char *s, size_t n) {
  kb_grow(b, n);
  if (b->oom) return;
  __builtin_memcpy(b->data + b->len, s, n);
  b->len += n;
}

static inline void kb_putc(kbuf *b, char c) { kb_put(b, &c, 1); }
static inline void kb_puts(kbuf *b, const char *s) { kb_put(b, s, kite_strlen(s)); }

static inline void kb_put_uint(kbuf *b, uint64_t v) {
  char tmp[24];
  int i = 24;
  do {
    tmp[--i] = (char)('0' + v % 10);
    v /= 10;
  } while (v);
  kb_put(b, tmp + i, (size_t)(24 - i));
}

/* Append `s` as a JSON string literal (quotes and escapes). */
static inline void kb_put_json_string(kbuf *b, const char *s, size_t n) {
  static const char hex[] = "0123456789abcdef";
  kb_putc(b, '"');
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    switch (c) {
      case '"': kb_puts(b, "\\\""); break;
      case '\\': kb_puts(b, "\\\\"); break;
      case '\n': kb_puts(b, "\\n"); break;
      case '\r': kb_puts(b, "\\r"); break;
      case '\t': kb_puts(b, "\\t"); break;
      case '\b': kb_puts(b, "\\b"); break;
      case '\f': kb_puts(b, "\\f"); break;
      default:
        if (c < 0x20) {
          char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
          kb_put(b, e, 6);
        } else {
          kb_putc(b, (char)c);
        }
    }
  }
  kb_putc(b, '"');
}

/* -- parser ------------------------------------------------------------------------------------ */

typedef struct {
  const char *s;
  size_t n, i;
  const char *error; /* first error message, or NULL */
  size_t error_at;
  kbuf *out; /* formatted output, or NULL to only validate/skip */
  int indent;
  int depth;
} kj;

static inline int kj_fail(kj *p, const char *msg) {
  if (!p->error) {
    p->error = msg;
    p->error_at = p->i;
  }
  return 0;
}

static inline void kj_ws(kj *p) {
  while (p->i < p->n) {
    char c = p->s[p->i];
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r') p->i++;
    else break;
  }
}

static inline void kj_newline(kj *p) {
  if (!p->out || p->indent <= 0) return;
  kb_putc(p->out, '\n');
  for (int k = 0; k < p->depth * p->indent; k++) kb_putc(p->out, ' ');
}

static inline int kj_hex(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* A string at p->i (which is '"'); copies its exact spelling to the output. If `decoded` is
   given, the unescaped UTF-8 value is appended there. */
static inline int kj_string(kj *p, kbuf *decoded) {
  size_t start = p->i++;
  while (p->i < p->n) {
    unsigned char c = (unsigned char)p->s[p->i];
    if (c == '"') {
      p->i++;
      if (p->out) kb_put(p->out, p->s + start, p->i - start);
      return 1;
    }
    if (c < 0x20) return kj_fail(p, "control character in a string (escape it)");
    if (c == '\\') {
      p->i++;
      if (p->i >= p->n) break;
      char e = p->s[p->i];
      const char *simple = "\"\\/bfnrt";
      const char *repl = "\"\\/\b\f\n\r\t";
      int found = -1;
      for (int k = 0; simple[k]; k++)
        if (simple[k] == e) found = k;
      if (found >= 0) {
        if (decoded) kb_putc(decoded, repl[found]);
        p->i++;
        continue;
      }
      if (e != 'u') return kj_fail(p, "invalid escape in a string");
      uint32_t cp = 0;
      for (int k = 1; k <= 4; k++) {
        int h = p->i + k < p->n ? kj_hex(p->s[p->i + k]) : -1;
        if (h < 0) return kj_fail(p, "invalid \\u escape (four hex digits expected)");
        cp = cp * 16 + (uint32_t)h;
      }
      p->i += 5;
      if (cp >= 0xD800 && cp <= 0xDBFF && p->i + 5 < p->n && p->s[p->i] == '\\' &&
          p->s[p->i + 1] == 'u') {
        uint32_t lo = 0;
        int ok = 1;
        for (int k = 2; k <= 5; k++) {
          int h = kj_hex(p->s[p->i + k]);
          if (h < 0) ok = 0;
          lo = lo * 16 + (uint32_t)(h < 0 ? 0 : h);
        }
        if (ok && lo >= 0xDC00 && lo <= 0xDFFF) {
          cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          p->i += 6;
        }
      }
      if (decoded) {
        char u[4];
        size_t m;
        if (cp < 0x80) { u[0] = (char)cp; m = 1; }
        else if (cp < 0x800) { u[0] = (char)(0xC0 | cp >> 6); u[1] = (char)(0x80 | (cp & 63)); m = 2; }
        else if (cp < 0x10000) {
          u[0] = (char)(0xE0 | cp >> 12); u[1] = (char)(0x80 | ((cp >> 6) & 63));
          u[2] = (char)(0x80 | (cp & 63)); m = 3;
        } else {
          u[0] = (char)(0xF0 | cp >> 18); u[1] = (char)(0x80 | ((cp >> 12) & 63));
          u[2] = (char)(0x80 | ((cp >> 6) & 63)); u[3] = (char)(0x80 | (cp & 63)); m = 4;
        }
        kb_put(decoded, u, m);
      }
      continue;
    }
    if (decoded) kb_putc(decoded, (char)c);
    p->i++;
  }
  return kj_fail(p, "unterminated string");
}

static inline int kj_digits(kj *p) {
  size_t s = p->i;
  while (p->i < p->n && p->s[p->i] >= '0' && p->s[p->i] <= '9') p->i++;
  return p->i > s;
}

static inline int kj_number(kj *p) {
  size_t start = p->i;
  if (p->s[p->i] == '-') p->i++;
  if (p->i < p->n && p->s[p->i] == '0') {
    p->i++;
  } else if (!kj_digits(p)) {
    return kj_fail(p, "invalid number");
  }
  if (p->i < p->n && p->s[p->i] == '.') {
    p->i++;
    if (!kj_digits(p)) return kj_fail(p, "digits expected after the decimal point");
  }
  if (p->i < p->n && (p->s[p->i] == 'e' || p->s[p->i] == 'E')) {
    p->i++;
    if (p->i < p->n && (p->s[p->i] == '+' || p->s[p->i] == '-')) p->i++;
    if (!kj_digits(p)) return kj_fail(p, "digits expected in the exponent");
  }
  if (p->out) kb_put(p->out, p->s + start, p->i - start);
  return 1;
}

static inline int kj_word(kj *p, const char *w) {
  size_t n = kite_strlen(w);
  if (p->n - p->i < n) return kj_fail(p, "unexpected end of input");
  for (size_t k = 0; k < n; k++)
    if (p->s[p->i + k] != w[k]) return kj_fail(p, "invalid literal (true, false or null?)");
  p->i += n;
  if (p->out) kb_put(p->out, w, n);
  return 1;
}

static inline int kj_value(kj *p);

static inline int kj_container(kj *p, char open, char close) {
  if (++p->depth > KJ_MAX_DEPTH) return kj_fail(p, "nesting too deep");
  p->i++;
  if (p->out) kb_putc(p->out, open);
  kj_ws(p);
  if (p->i < p->n && p->s[p->i] == close) {
    p->i++;
    p->depth--;
    if (p->out) kb_putc(p->out, close);
    return 1;
  }
  for (;;) {
    kj_newline(p);
    kj_ws(p);
    if (open == '{') {
      if (p->i >= p->n || p->s[p->i] != '"') return kj_fail(p, "object key (a string) expected");
      if (!kj_string(p, 0)) return 0;
      kj_ws(p);
      if (p->i >= p->n || p->s[p->i] != ':') return kj_fail(p, "':' expected after an object key");
      p->i++;
      if (p->out) kb_puts(p->out, p->indent > 0 ? ": " : ":");
      kj_ws(p);
    }
    if (!kj_value(p)) return 0;
    kj_ws(p);
    if (p->i >= p->n) return kj_fail(p, open == '{' ? "unterminated object" : "unterminated array");
    char c = p->s[p->i];
    if (c == ',') {
      p->i++;
      if (p->out) kb_putc(p->out, ',');
      continue;
    }
    if (c == close) {
      p->i++;
      p->depth--;
      kj_newline(p);
      if (p->out) kb_putc(p->out, close);
      return 1;
    }
    return kj_fail(p, open == '{' ? "',' or '}' expected after an object member"
                                  : "',' or ']' expected after an array element");
  }
}

static inline int kj_value(kj *p) {
  kj_ws(p);
  if (p->i >= p->n) return kj_fail(p, "unexpected end of input (a value was expected)");
  char c = p->s[p->i];
  if (c == '{') return kj_container(p, '{', '}');
  if (c == '[') return kj_container(p, '[', ']');
  if (c == '"') return kj_string(p, 0);
  if (c == '-' || (c >= '0' && c <= '9')) return kj_number(p);
  if (c == 't') return kj_word(p, "true");
  if (c == 'f') return kj_word(p, "false");
  if (c == 'n') return kj_word(p, "null");
  return kj_fail(p, "unexpected character (a value was expected)");
}

/* Validate `s` as one JSON document; pretty-print into `out` (indent 0 = compact). */
static inline int kj_format(const char *s, size_t n, int indent, kbuf *out, kj *state) {
  kj p = {s, n, 0, 0, 0, out, indent, 0};
  if (kj_value(&p)) {
    kj_ws(&p);
    if (p.i < p.n) kj_fail(&p, "unexpected data after the JSON value");
  }
  if (out && out->oom && !p.error) kj_fail(&p, "out of memory");
  *state = p;
  return p.error == 0;
}

/* 1-based line and column (in bytes) of offset `at`. */
static inline void kj_position(const char *s, size_t at, uint64_t *line, uint64_t *col) {
  uint64_t l = 1, c = 1;
  for (size_t k = 0; k < at; k++) {
    if (s[k] == '\n') {
      l++;
      c = 1;
    } else {
      c++;
    }
  }
  *line = l;
  *col = c;
}

/* Find top-level member `key` of the object in `s`; on success p->i is at its value. */
static inline int kj_find(kj *p, const char *key) {
  size_t klen = kite_strlen(key);
  kj_ws(p);
  if (p->i >= p->n || p->s[p->i] != '{') return 0;
  p->i++;
  p->depth = 1;
  for (;;) {
    kj_ws(p);
    if (p->i >= p->n || p->s[p->i] != '"') return 0;
    kbuf name = {0};
    if (!kj_string(p, &name)) return 0;
    kj_ws(p);
    if (p->i >= p->n || p->s[p->i] != ':') return 0;
    p->i++;
    kj_ws(p);
    int same = name.len == klen;
    for (size_t k = 0; same && k < klen; k++) same = name.data[k] == key[k];
    if (same) return 1;
    if (!kj_value(p)) return 0;
    kj_ws(p);
    if (p->i < p->n && p->s[p->i] == ',') {
      p->i++;
      continue;
    }
    return 0;
  }
}

/* The decoded string value of top-level member `key` (1), absent (0) or not a string (-1). */
static inline int kj_get_string(const char *s, size_t n, const char *key, kbuf *value) {
  kj p = {s, n, 0, 0, 0, 0, 0, 0};
  if (!kj_find(&p, key)) return 0;
  if (p.i >= p.n || p.s[p.i] != '"') return -1;
  return kj_string(&p, value) ? 1 : -1;
}

/* The integer value of top-level member `key` (1), absent (0) or not an integer (-1). */
static inline int kj_get_int(const char *s, size_t n, const char *key, int64_t *value) {
  kj p = {s, n, 0, 0, 0, 0, 0, 0};
  if (!kj_find(&p, key)) return 0;
  int neg = 0;
  if (p.i < p.n && p.s[p.i] == '-') {
    neg = 1;
    p.i++;
  }
  if (p.i >= p.n || p.s[p.i] < '0' || p.s[p.i] > '9') return -1;
  int64_t v = 0;
  while (p.i < p.n && p.s[p.i] >= '0' && p.s[p.i] <= '9') {
    if (v > 100000000000000LL) return -1;
    v = v * 10 + (p.s[p.i++] - '0');
  }
  *value = neg ? -v : v;
  return 1;
}

#endif /* KITE_JSON_H */
