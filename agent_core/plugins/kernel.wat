;; Kite's plugin kernel: the memory that plugins and the host exchange data through.
;;
;; It implements the Extism kernel ABI (the functions a guest imports from `extism:host/env`
;; that are not host calls): alloc/free/length/length_unsafe, load/store of u8 and u64, input,
;; output, error and reset. Written for Kite from the ABI's description; the layout is Kite's own.
;;
;; Layout of the kernel's memory (all integers little-endian u64):
;;
;;    0  reserved (offset 0 is the null handle)
;;    8  heap_end        end of the last block (bump pointer), absolute
;;   16  input_offset    handle of the input block
;;   24  input_length
;;   32  output_offset   pointer set by output_set
;;   40  output_length
;;   48  error           handle of the error message, 0 = none
;;   56  free_count      number of blocks marked free (skip the scan when 0)
;;   64  first block
;;
;; A block is a 16-byte header {capacity, used} followed by `capacity` bytes of data; a handle is
;; the address of the data. `used` = 0xFFFF_FFFF_FFFF_FFFF marks a free block. Capacities are
;; multiples of 8 so that every handle is 8-byte aligned. The host (agent_core/plugins/abi.py)
;; reads the root directly and, for the input block, writes it directly: keep kernel.py in step.
(module
  (memory (export "memory") 1)
  (data (i32.const 8) "\40\00\00\00\00\00\00\00")

  (global $HEAP i32 (i32.const 64))
  (global $FREE i64 (i64.const -1))

  (func $heap_end (result i32) (i32.wrap_i64 (i64.load (i32.const 8))))
  (func $mem_bytes (result i64) (i64.shl (i64.extend_i32_u (memory.size)) (i64.const 16)))

  ;; The header address of the active block whose data starts at `p`, or -1. Walks the blocks,
  ;; so it is exact: interior pointers and freed blocks are not handles.
  (func $find (param $p i64) (result i32)
    (local $b i32) (local $end i32) (local $target i32)
    (if (i64.lt_u (local.get $p) (i64.const 80)) (then (return (i32.const -1))))
    (local.set $end (call $heap_end))
    (if (i64.ge_u (local.get $p) (i64.extend_i32_u (local.get $end)))
      (then (return (i32.const -1))))
    (local.set $target (i32.sub (i32.wrap_i64 (local.get $p)) (i32.const 16)))
    (local.set $b (global.get $HEAP))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $b) (local.get $end)))
        (if (i32.eq (local.get $b) (local.get $target))
          (then
            (if (i64.eq (i64.load offset=8 (local.get $b)) (global.get $FREE))
              (then (return (i32.const -1))))
            (return (local.get $b))))
        (br_if $done (i32.gt_u (local.get $b) (local.get $target)))
        (local.set $b
          (i32.add (i32.add (local.get $b) (i32.const 16))
                   (i32.wrap_i64 (i64.load (local.get $b)))))
        (br $next)))
    (i32.const -1))

  (func (export "alloc") (param $n i64) (result i64)
    (local $need i32) (local $b i32) (local $end i32) (local $cap i32) (local $new_end i64)
    (local $rest i32) (local $pages i64)
    (if (i64.eqz (local.get $n)) (then (return (i64.const 0))))
    (if (i64.gt_u (local.get $n) (i64.const 0xFFFF0000)) (then (return (i64.const 0))))
    (local.set $need (i32.and (i32.add (i32.wrap_i64 (local.get $n)) (i32.const 7))
                              (i32.const -8)))
    (local.set $end (call $heap_end))
    ;; First fit among freed blocks, splitting off the tail when it is worth a block.
    (if (i64.ne (i64.load (i32.const 56)) (i64.const 0))
      (then
        (local.set $b (global.get $HEAP))
        (block $done
          (loop $next
            (br_if $done (i32.ge_u (local.get $b) (local.get $end)))
            (local.set $cap (i32.wrap_i64 (i64.load (local.get $b))))
            (if (i32.and (i64.eq (i64.load offset=8 (local.get $b)) (global.get $FREE))
                         (i32.ge_u (local.get $cap) (local.get $need)))
              (then
                (local.set $rest (i32.sub (local.get $cap) (local.get $need)))
                (if (i32.ge_u (local.get $rest) (i32.const 80))
                  (then
                    ;; the tail becomes a new free block; free_count is unchanged
                    (i64.store (i32.add (i32.add (local.get $b) (i32.const 16)) (local.get $need))
                               (i64.extend_i32_u (i32.sub (local.get $rest) (i32.const 16))))
                    (i64.store offset=8
                               (i32.add (i32.add (local.get $b) (i32.const 16)) (local.get $need))
                               (global.get $FREE))
                    (i64.store (local.get $b) (i64.extend_i32_u (local.get $need))))
                  (else
                    (i64.store (i32.const 56)
                               (i64.sub (i64.load (i32.const 56)) (i64.const 1)))))
                (i64.store offset=8 (local.get $b) (local.get $n))
                (return (i64.extend_i32_u (i32.add (local.get $b) (i32.const 16))))))
            (local.set $b (i32.add (i32.add (local.get $b) (i32.const 16)) (local.get $cap)))
            (br $next)))))
    ;; Bump allocation, growing the memory when needed; 0 when the memory cannot grow.
    (local.set $new_end (i64.add (i64.extend_i32_u (local.get $end))
                                 (i64.extend_i32_u (i32.add (local.get $need) (i32.const 16)))))
    (if (i64.gt_u (local.get $new_end) (call $mem_bytes))
      (then
        (local.set $pages
          (i64.shr_u (i64.add (i64.sub (local.get $new_end) (call $mem_bytes)) (i64.const 65535))
                     (i64.const 16)))
        (if (i32.eq (memory.grow (i32.wrap_i64 (local.get $pages))) (i32.const -1))
          (then (return (i64.const 0))))))
    (i64.store (local.get $end) (i64.extend_i32_u (local.get $need)))
    (i64.store offset=8 (local.get $end) (local.get $n))
    (i64.store (i32.const 8) (local.get $new_end))
    (i64.extend_i32_u (i32.add (local.get $end) (i32.const 16))))

  (func (export "free") (param $p i64)
    (local $b i32)
    (local.set $b (call $find (local.get $p)))
    (if (i32.eq (local.get $b) (i32.const -1)) (then (return)))
    (i64.store offset=8 (local.get $b) (global.get $FREE))
    (if (i64.eq (local.get $p) (i64.load (i32.const 16)))
      (then (i64.store (i32.const 24) (i64.const 0))))
    (if (i32.eq (i32.add (i32.add (local.get $b) (i32.const 16))
                         (i32.wrap_i64 (i64.load (local.get $b))))
                (call $heap_end))
      (then (i64.store (i32.const 8) (i64.extend_i32_u (local.get $b))))
      (else (i64.store (i32.const 56) (i64.add (i64.load (i32.const 56)) (i64.const 1))))))

  (func (export "length") (param $p i64) (result i64)
    (local $b i32)
    (local.set $b (call $find (local.get $p)))
    (if (i32.eq (local.get $b) (i32.const -1)) (then (return (i64.const 0))))
    (i64.load offset=8 (local.get $b)))

  ;; O(1): trusts that `p` is a handle, but never reads outside the heap.
  (func (export "length_unsafe") (param $p i64) (result i64)
    (local $used i64)
    (if (i64.lt_u (local.get $p) (i64.const 80)) (then (return (i64.const 0))))
    (if (i64.gt_u (local.get $p) (i64.extend_i32_u (call $heap_end)))
      (then (return (i64.const 0))))
    (local.set $used (i64.load offset=8 (i32.sub (i32.wrap_i64 (local.get $p)) (i32.const 16))))
    (if (i64.eq (local.get $used) (global.get $FREE)) (then (return (i64.const 0))))
    (local.get $used))

  ;; Loads outside the memory read 0 and stores outside it are dropped (no trap).
  (func (export "load_u8") (param $p i64) (result i32)
    (if (i64.ge_u (local.get $p) (call $mem_bytes)) (then (return (i32.const 0))))
    (i32.load8_u (i32.wrap_i64 (local.get $p))))

  (func (export "load_u64") (param $p i64) (result i64)
    (if (i64.gt_u (local.get $p) (i64.sub (call $mem_bytes) (i64.const 8)))
      (then (return (i64.const 0))))
    (i64.load (i32.wrap_i64 (local.get $p))))

  (func (export "store_u8") (param $p i64) (param $v i32)
    (if (i64.ge_u (local.get $p) (call $mem_bytes)) (then (return)))
    (i32.store8 (i32.wrap_i64 (local.get $p)) (local.get $v)))

  (func (export "store_u64") (param $p i64) (param $v i64)
    (if (i64.gt_u (local.get $p) (i64.sub (call $mem_bytes) (i64.const 8))) (then (return)))
    (i64.store (i32.wrap_i64 (local.get $p)) (local.get $v)))

  (func (export "input_set") (param $h i64) (param $n i64)
    (i64.store (i32.const 16) (local.get $h))
    (i64.store (i32.const 24) (local.get $n)))

  (func (export "input_length") (result i64) (i64.load (i32.const 24)))
  (func (export "input_offset") (result i64) (i64.load (i32.const 16)))

  (func (export "input_load_u8") (param $i i64) (result i32)
    (if (i64.ge_u (local.get $i) (i64.load (i32.const 24))) (then (return (i32.const 0))))
    (i32.load8_u (i32.wrap_i64 (i64.add (i64.load (i32.const 16)) (local.get $i)))))

  (func (export "input_load_u64") (param $i i64) (result i64)
    (if (i64.lt_u (i64.load (i32.const 24)) (i64.const 8)) (then (return (i64.const 0))))
    (if (i64.gt_u (local.get $i) (i64.sub (i64.load (i32.const 24)) (i64.const 8)))
      (then (return (i64.const 0))))
    (i64.load (i32.wrap_i64 (i64.add (i64.load (i32.const 16)) (local.get $i)))))

  ;; An output range outside the heap is ignored (the output stays as it was).
  (func (export "output_set") (param $p i64) (param $n i64)
    (if (i32.eqz (i64.eqz (local.get $n)))
      (then
        (if (i64.lt_u (local.get $p) (i64.const 80)) (then (return)))
        (if (i64.gt_u (local.get $n) (i64.extend_i32_u (call $heap_end))) (then (return)))
        (if (i64.gt_u (local.get $p)
                      (i64.sub (i64.extend_i32_u (call $heap_end)) (local.get $n)))
          (then (return)))))
    (i64.store (i32.const 32) (local.get $p))
    (i64.store (i32.const 40) (local.get $n)))

  (func (export "output_length") (result i64) (i64.load (i32.const 40)))
  (func (export "output_offset") (result i64) (i64.load (i32.const 32)))

  (func (export "error_set") (param $h i64)
    (if (i32.eqz (i64.eqz (local.get $h)))
      (then
        (if (i64.lt_u (local.get $h) (i64.const 80)) (then (return)))
        (if (i64.ge_u (local.get $h) (i64.extend_i32_u (call $heap_end))) (then (return)))))
    (i64.store (i32.const 48) (local.get $h)))

  (func (export "error_get") (result i64) (i64.load (i32.const 48)))

  ;; Forget every block and the input, output and error (the host calls this before each call).
  (func (export "reset")
    (i64.store (i32.const 8) (i64.const 64))
    (i64.store (i32.const 16) (i64.const 0))
    (i64.store (i32.const 24) (i64.const 0))
    (i64.store (i32.const 32) (i64.const 0))
    (i64.store (i32.const 40) (i64.const 0))
    (i64.store (i32.const 48) (i64.const 0))
    (i64.store (i32.const 56) (i64.const 0)))

  (func (export "memory_bytes") (result i64) (call $mem_bytes))
)
