;; {{name}}: a Kite plugin in WebAssembly text.
;;
;;   kite plugin build    compile to {{name}}.wasm and pin its sha256 in kite-plugin.json
;;   kite plugin test     run tests.json on every engine
;;
;; length <any input> -> the input's length in bytes, in decimal ("17")
(module
  (import "extism:host/env" "input_length" (func $input_length (result i64)))
  (import "extism:host/env" "alloc" (func $alloc (param i64) (result i64)))
  (import "extism:host/env" "store_u8" (func $store_u8 (param i64 i32)))
  (import "extism:host/env" "output_set" (func $output_set (param i64 i64)))
  (memory (export "memory") 1)

  (func (export "length") (result i32)
    (local $n i64) (local $digits i64) (local $m i64) (local $h i64)
    (local.set $n (call $input_length))
    ;; count the digits
    (local.set $m (local.get $n))
    (local.set $digits (i64.const 1))
    (block $done
      (loop $count
        (br_if $done (i64.lt_u (local.get $m) (i64.const 10)))
        (local.set $m (i64.div_u (local.get $m) (i64.const 10)))
        (local.set $digits (i64.add (local.get $digits) (i64.const 1)))
        (br $count)))
    ;; write them right to left into a new kernel block
    (local.set $h (call $alloc (local.get $digits)))
    (local.set $m (local.get $digits))
    (loop $write
      (local.set $m (i64.sub (local.get $m) (i64.const 1)))
      (call $store_u8 (i64.add (local.get $h) (local.get $m))
        (i32.add (i32.const 48) (i32.wrap_i64 (i64.rem_u (local.get $n) (i64.const 10)))))
      (local.set $n (i64.div_u (local.get $n) (i64.const 10)))
      (br_if $write (i64.gt_u (local.get $m) (i64.const 0))))
    (call $output_set (local.get $h) (local.get $digits))
    (i32.const 0))
)
