/*
 * kite_pdk.h — write Kite (and Extism) plugins in C. One header, no libc needed.
 *
 * A plugin is a WebAssembly module that imports its host functions from "extism:host/env" and
 * exports functions taking no arguments and returning an int32 (0 = success). Input, output and
 * error messages live in the host's kernel memory and are moved with the functions below.
 * Any host implementing the Extism guest ABI can run the result.
 *
 *     #include "kite_pdk.h"
 *
 *     KITE_FN(greet) {
 *         char buf[256];
 *         size_t n = kite_input(buf, sizeof buf);   // the JSON arguments from the agent
 *         kite_output(buf, n);                       // echo them back
 *         return 0;
 *     }
 *
 * Build: kite plugin build   (zig cc --target=wasm32-freestanding -O2 -nostdlib -Wl,--no-entry)
 */
#ifndef KITE_PDK_H
#define KITE_PDK_H

#include <stddef.h>
#include <stdint.h>

typedef uint64_t kite_handle; /* a block of kernel memory; 0 means none */

#define KITE_ENV(name) __attribute__((import_module("extism:host/env"), import_name(name)))
#define KITE_USER(name) __attribute__((import_module("extism:host/user"), import_name(name)))
#define KITE_EXPORT(name) __attribute__((export_name(name)))

/* -- the ABI (imports) ---------------------------------------------------------------------- */

KITE_ENV("input_length") uint64_t kite_input_length(void);
KITE_ENV("input_load_u8") uint8_t kite_input_load_u8(uint64_t offset);
KITE_ENV("input_load_u64") uint64_t kite_input_load_u64(uint64_t offset);
KITE_ENV("alloc") kite_handle kite_alloc(uint64_t length);
KITE_ENV("free") void kite_free(kite_handle h);
KITE_ENV("length") uint64_t kite_length(kite_handle h);
KITE_ENV("load_u8") uint8_t kite_load_u8(uint64_t address);
KITE_ENV("load_u64") uint64_t kite_load_u64(uint64_t address);
KITE_ENV("store_u8") void kite_store_u8(uint64_t address, uint8_t value);
KITE_ENV("store_u64") void kite_store_u64(uint64_t address, uint64_t value);
KITE_ENV("output_set") void kite_output_set(kite_handle h, uint64_t length);
KITE_ENV("error_set") void kite_error_set(kite_handle h);
/* The host takes ownership of the handles passed to the functions below (do not free them). */
KITE_ENV("config_get") kite_handle kite_config_get(kite_handle key);
KITE_ENV("var_get") kite_handle kite_var_get(kite_handle key);
KITE_ENV("var_set") void kite_var_set(kite_handle key, kite_handle value);
KITE_ENV("http_request") kite_handle kite_http_request(kite_handle request_json, kite_handle body);
KITE_ENV("http_status_code") int32_t kite_http_status_code(void);
KITE_ENV("log_info") void kite_log_info(kite_handle message);
KITE_ENV("log_debug") void kite_log_debug(kite_handle message);
KITE_ENV("log_warn") void kite_log_warn(kite_handle message);
KITE_ENV("log_error") void kite_log_error(kite_handle message);

/* -- an exported plugin function -------------------------------------------------------------- */

static inline void kite_heap_reset(void);

/* KITE_FN(name) { ... return 0; } exports `name`; the scratch heap is emptied before each call. */
#define KITE_FN(name)                                                                             \
  static int32_t name##__impl(void);                                                              \
  KITE_EXPORT(#name) int32_t name(void) {                                                         \
    kite_heap_reset();                                                                            \
    return name##__impl();                                                                        \
  }                                                                                               \
  static int32_t name##__impl(void)

/* -- a scratch heap (bump allocator over the module's own memory) ---------------------------- */

extern unsigned char __heap_base;
static uintptr_t kite__heap_top;

static inline void kite_heap_reset(void) { kite__heap_top = (uintptr_t)&__heap_base; }

/* Memory that lives until the current call returns; NULL when the plugin's memory cap is hit. */
static inline void *kite_malloc(size_t n) {
  if (kite__heap_top == 0) kite_heap_reset();
  uintptr_t p = (kite__heap_top + 7) & ~(uintptr_t)7;
  if (n > SIZE_MAX - p) return NULL;
  uintptr_t end = p + n;
  uintptr_t have = __builtin_wasm_memory_size(0) * 65536u;
  if (end > have) {
    size_t pages = (end - have + 65535u) / 65536u;
    if (__builtin_wasm_memory_grow(0, pages) == (size_t)-1) return NULL;
  }
  kite__heap_top = end;
  return (void *)p;
}

/* -- copying between the plugin's memory and kernel memory ------------------------------------ */

static inline void kite_load(kite_handle h, void *dst, size_t n) {
  unsigned char *d = (unsigned char *)dst;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w = kite_load_u64(h + i);
    __builtin_memcpy(d + i, &w, 8);
  }
  for (; i < n; i++) d[i] = kite_load_u8(h + i);
}

static inline void kite_store(kite_handle h, const void *src, size_t n) {
  const unsigned char *s = (const unsigned char *)src;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    __builtin_memcpy(&w, s + i, 8);
    kite_store_u64(h + i, w);
  }
  for (; i < n; i++) kite_store_u8(h + i, s[i]);
}

static inline size_t kite_strlen(const char *s) {
  size_t n = 0;
  while (s[n]) n++;
  return n;
}

/* A new kernel block holding a copy of `src` (0 for n == 0 or when out of memory). */
static inline kite_handle kite_alloc_bytes(const void *src, size_t n) {
  if (n == 0) return 0;
  kite_handle h = kite_alloc(n);
  if (h) kite_store(h, src, n);
  return h;
}

static inline kite_handle kite_alloc_str(const char *s) { return kite_alloc_bytes(s, kite_strlen(s)); }

/* -- input, output, errors, logs, config -------------------------------------------------------- */

/* Copy up to `cap` bytes of the input into `dst`; returns the number of bytes copied. */
static inline size_t kite_input(void *dst, size_t cap) {
  uint64_t n = kite_input_length();
  if (n > cap) n = cap;
  unsigned char *d = (unsigned char *)dst;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w = kite_input_load_u64(i);
    __builtin_memcpy(d + i, &w, 8);
  }
  for (; i < n; i++) d[i] = kite_input_load_u8(i);
  return (size_t)n;
}

/* The whole input in scratch memory (NUL-terminated; *len gets its length). NULL if too big. */
static inline char *kite_input_all(size_t *len) {
  size_t n = (size_t)kite_input_length();
  char *buf = (char *)kite_malloc(n + 1);
  if (!buf) return NULL;
  kite_input(buf, n);
  buf[n] = 0;
  if (len) *len = n;
  return buf;
}

static inline void kite_output(const void *src, size_t n) {
  kite_handle h = kite_alloc_bytes(src, n);
  kite_output_set(h, h ? n : 0);
}

static inline void kite_output_str(const char *s) { kite_output(s, kite_strlen(s)); }

/* Report an error to the host; return its result from a KITE_FN (non-zero). */
static inline int32_t kite_error(const char *message) {
  kite_error_set(kite_alloc_str(message));
  return 1;
}

static inline void kite_log(const char *message) { kite_log_info(kite_alloc_str(message)); }

/* The config value for `key` in scratch memory (NUL-terminated), or NULL when unset. */
static inline char *kite_config(const char *key) {
  kite_handle h = kite_config_get(kite_alloc_str(key));
  if (!h) return NULL;
  size_t n = (size_t)kite_length(h);
  char *buf = (char *)kite_malloc(n + 1);
  if (!buf) return NULL;
  kite_load(h, buf, n);
  buf[n] = 0;
  kite_free(h);
  return buf;
}

#endif /* KITE_PDK_H */
