;; Sandbox attacks and ABI probes for the conformance suite (tests/test_plugins_conformance.py).
;; Every function is one attempt; the host must refuse it with a clear error and stay healthy.
(module
  (import "extism:host/env" "input_length" (func $input_length (result i64)))
  (import "extism:host/env" "input_offset" (func $input_offset (result i64)))
  (import "extism:host/env" "input_load_u8" (func $input_load_u8 (param i64) (result i32)))
  (import "extism:host/env" "alloc" (func $alloc (param i64) (result i64)))
  (import "extism:host/env" "length" (func $length (param i64) (result i64)))
  (import "extism:host/env" "store_u8" (func $store_u8 (param i64 i32)))
  (import "extism:host/env" "load_u8" (func $load_u8 (param i64) (result i32)))
  (import "extism:host/env" "output_set" (func $output_set (param i64 i64)))
  (import "extism:host/env" "error_set" (func $error_set (param i64)))
  (import "extism:host/env" "http_request" (func $http_request (param i64 i64) (result i64)))
  (import "extism:host/env" "http_status_code" (func $http_status_code (result i32)))
  (import "extism:host/env" "config_get" (func $config_get (param i64) (result i64)))
  (import "extism:host/env" "var_get" (func $var_get (param i64) (result i64)))
  (import "extism:host/env" "var_set" (func $var_set (param i64 i64)))
  (import "extism:host/env" "log_info" (func $log_info (param i64)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close" (func $fd_close (param i32) (result i32)))

  (memory (export "memory") 1)
  ;; 0..15: scratch (iovec, result fd, nread); 64..: messages; 1024..: path; 8192..: file buffer
  (data (i32.const 64) "path_open refused (errno ")  ;; 25 bytes
  (data (i32.const 96) "{\"url\":\"")                ;; 8 bytes
  (data (i32.const 112) "\"}")                        ;; 2 bytes
  (data (i32.const 128) "note.txt")                   ;; 8 bytes
  (data (i32.const 144) "missing")                    ;; 7 bytes
  (data (i32.const 160) "n")                          ;; 1 byte
  (data (i32.const 176) "fill.bin")                   ;; 8 bytes

  ;; A new kernel block with `len` bytes copied from guest memory at `ptr`.
  (func $block (param $ptr i32) (param $len i32) (result i64)
    (local $h i64) (local $i i32)
    (local.set $h (call $alloc (i64.extend_i32_u (local.get $len))))
    (block $done
      (loop $copy
        (br_if $done (i32.ge_u (local.get $i) (local.get $len)))
        (call $store_u8 (i64.add (local.get $h) (i64.extend_i32_u (local.get $i)))
          (i32.load8_u (i32.add (local.get $ptr) (local.get $i))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $copy)))
    (local.get $h))

  ;; Copy the input into guest memory at `ptr` (at most 4096 bytes); returns its length.
  (func $input_to (param $ptr i32) (result i32)
    (local $n i32) (local $i i32)
    (local.set $n (i32.wrap_i64 (call $input_length)))
    (if (i32.gt_u (local.get $n) (i32.const 4096)) (then (local.set $n (i32.const 4096))))
    (block $done
      (loop $copy
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (i32.store8 (i32.add (local.get $ptr) (local.get $i))
          (call $input_load_u8 (i64.extend_i32_u (local.get $i))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $copy)))
    (local.get $n))

  (func $output_guest (param $ptr i32) (param $len i32)
    (call $output_set (call $block (local.get $ptr) (local.get $len))
                      (i64.extend_i32_u (local.get $len))))

  ;; -- attacks -------------------------------------------------------------------------------

  (func (export "loop") (result i32)
    (loop $forever (br $forever))
    (i32.const 0))

  ;; Grow the module's memory 1 MiB at a time until refused, then fail loudly.
  (func (export "grow") (result i32)
    (loop $more
      (br_if $more (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))
    (unreachable))

  ;; Allocate 1 MiB kernel blocks until the kernel's memory is exhausted.
  (func (export "kernel_grow") (result i32)
    (loop $more
      (br_if $more (i64.ne (call $alloc (i64.const 1048576)) (i64.const 0))))
    (unreachable))

  ;; A 5 MiB output (over the host's 4 MiB output cap).
  (func (export "big_output") (result i32)
    (local $h i64)
    (local.set $h (call $alloc (i64.const 5242880)))
    (call $output_set (local.get $h) (i64.const 5242880))
    (i32.const 0))

  (func (export "trap") (result i32) (unreachable))

  (func $recurse (param $n i64) (result i64)
    (i64.add (call $recurse (i64.add (local.get $n) (i64.const 1))) (i64.const 1)))
  (func (export "stack") (result i32)
    (drop (call $recurse (i64.const 0)))
    (i32.const 0))

  ;; GET the URL given as input; output the body.
  (func (export "http") (result i32)
    (local $n i32) (local $resp i64)
    (memory.copy (i32.const 1024) (i32.const 96) (i32.const 8))
    (local.set $n (call $input_to (i32.const 1032)))
    (memory.copy (i32.add (i32.const 1032) (local.get $n)) (i32.const 112) (i32.const 2))
    (local.set $resp
      (call $http_request (call $block (i32.const 1024) (i32.add (local.get $n) (i32.const 10)))
                          (i64.const 0)))
    (call $output_set (local.get $resp) (call $length (local.get $resp)))
    (i32.const 0))

  ;; Open the path given as input, relative to the first preopened directory (fd 3), and
  ;; output the file's first 4 KiB; refusals are reported as errors.
  (func (export "read_file") (result i32)
    (local $n i32) (local $errno i32)
    (local.set $n (call $input_to (i32.const 1024)))
    (local.set $errno
      (call $path_open (i32.const 3) (i32.const 0) (i32.const 1024) (local.get $n)
                       (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 12)))
    (if (local.get $errno) (then (return (call $refused (local.get $errno)))))
    ;; iovec {8192, 4096} at 0; nread at 8
    (i32.store (i32.const 0) (i32.const 8192))
    (i32.store (i32.const 4) (i32.const 4096))
    (local.set $errno (call $fd_read (i32.load (i32.const 12)) (i32.const 0) (i32.const 1) (i32.const 8)))
    (drop (call $fd_close (i32.load (i32.const 12))))
    (if (local.get $errno) (then (return (call $refused (local.get $errno)))))
    (call $output_guest (i32.const 8192) (i32.load (i32.const 8)))
    (i32.const 0))

  ;; Write the input to note.txt in the scratch directory (fd 3).
  (func (export "write_file") (result i32)
    (local $n i32) (local $errno i32) (local $fd i32)
    (local.set $n (call $input_to (i32.const 8192)))
    (local.set $errno
      (call $path_open (i32.const 3) (i32.const 0) (i32.const 128) (i32.const 8)
                       (i32.const 9) (i64.const 64) (i64.const 0) (i32.const 0) (i32.const 12)))
    (if (local.get $errno) (then (return (call $refused (local.get $errno)))))
    (local.set $fd (i32.load (i32.const 12)))
    (i32.store (i32.const 0) (i32.const 8192))
    (i32.store (i32.const 4) (local.get $n))
    (local.set $errno (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8)))
    (drop (call $fd_close (local.get $fd)))
    (if (local.get $errno) (then (return (call $refused (local.get $errno)))))
    (i32.const 0))

  ;; Fill the scratch directory: write 4 KiB blocks to fill.bin, 64 times (256 KiB), unless
  ;; the host refuses one (reported like path_open: "... (errno 51)" for ENOSPC).
  (func (export "fill") (result i32)
    (local $errno i32) (local $fd i32) (local $k i32)
    (local.set $errno
      (call $path_open (i32.const 3) (i32.const 0) (i32.const 176) (i32.const 8)
                       (i32.const 9) (i64.const 64) (i64.const 0) (i32.const 0) (i32.const 12)))
    (if (local.get $errno) (then (return (call $refused (local.get $errno)))))
    (local.set $fd (i32.load (i32.const 12)))
    (block $done
      (loop $more
        (br_if $done (i32.ge_u (local.get $k) (i32.const 64)))
        (i32.store (i32.const 0) (i32.const 8192))
        (i32.store (i32.const 4) (i32.const 4096))
        (local.set $errno
          (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8)))
        (if (local.get $errno)
          (then (drop (call $fd_close (local.get $fd)))
                (return (call $refused (local.get $errno)))))
        (local.set $k (i32.add (local.get $k) (i32.const 1)))
        (br $more)))
    (drop (call $fd_close (local.get $fd)))
    (i32.const 0))

  ;; error: "path_open refused (errno NN)"
  (func $refused (param $errno i32) (result i32)
    (i32.store8 (i32.const 89) (i32.add (i32.const 48) (i32.div_u (local.get $errno) (i32.const 10))))
    (i32.store8 (i32.const 90) (i32.add (i32.const 48) (i32.rem_u (local.get $errno) (i32.const 10))))
    (i32.store8 (i32.const 91) (i32.const 41))
    (call $error_set (call $block (i32.const 64) (i32.const 28)))
    (i32.const 1))

  ;; -- ABI probes ----------------------------------------------------------------------------

  (func (export "echo") (result i32)
    (call $output_set (call $input_offset) (call $input_length))
    (i32.const 0))

  (func (export "noop") (result i32) (i32.const 0))

  ;; Output the config value named by the input, or fail with "missing".
  (func (export "config") (result i32)
    (local $n i32) (local $v i64)
    (local.set $n (call $input_to (i32.const 1024)))
    (local.set $v (call $config_get (call $block (i32.const 1024) (local.get $n))))
    (if (i64.eqz (local.get $v))
      (then (call $error_set (call $block (i32.const 144) (i32.const 7))) (return (i32.const 1))))
    (call $output_set (local.get $v) (call $length (local.get $v)))
    (i32.const 0))

  ;; A counter kept in the host's vars: outputs 1, 2, 3, ... (one byte, '1'..'9').
  (func (export "count") (result i32)
    (local $v i64) (local $c i32) (local $h i64)
    (local.set $v (call $var_get (call $block (i32.const 160) (i32.const 1))))
    (local.set $c (i32.const 48))
    (if (i64.ne (local.get $v) (i64.const 0)) (then (local.set $c (call $load_u8 (local.get $v)))))
    (local.set $c (i32.add (local.get $c) (i32.const 1)))
    (local.set $h (call $alloc (i64.const 1)))
    (call $store_u8 (local.get $h) (local.get $c))
    (call $var_set (call $block (i32.const 160) (i32.const 1)) (local.get $h))
    (local.set $h (call $alloc (i64.const 1)))
    (call $store_u8 (local.get $h) (local.get $c))
    (call $output_set (local.get $h) (i64.const 1))
    (i32.const 0))

  ;; Log the input, then report it as an error with a non-zero return code.
  (func (export "fail") (result i32)
    (local $n i32)
    (local.set $n (call $input_to (i32.const 1024)))
    (call $log_info (call $block (i32.const 1024) (local.get $n)))
    (call $error_set (call $block (i32.const 1024) (local.get $n)))
    (i32.const 1))

  ;; Return a non-zero code without an error message.
  (func (export "rc") (result i32) (i32.const 7))
)
