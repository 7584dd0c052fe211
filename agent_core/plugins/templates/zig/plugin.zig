//! {{name}}: a Kite plugin in Zig.
//!
//!   kite plugin build    compile to {{name}}.wasm and pin its sha256 in kite-plugin.json
//!   kite plugin test     run tests.json on every engine
//!
//! count {"text": "..."} -> {"bytes": 12, "lines": 1, "words": 2}

const std = @import("std");

/// The Extism guest ABI (what Kite's host provides).
const env = struct {
    extern "extism:host/env" fn input_length() u64;
    extern "extism:host/env" fn input_load_u8(offset: u64) u8;
    extern "extism:host/env" fn alloc(n: u64) u64;
    extern "extism:host/env" fn store_u8(address: u64, value: u8) void;
    extern "extism:host/env" fn output_set(handle: u64, length: u64) void;
    extern "extism:host/env" fn error_set(handle: u64) void;
};

fn output(bytes: []const u8) void {
    const h = env.alloc(bytes.len);
    for (bytes, 0..) |c, i| env.store_u8(h + i, c);
    env.output_set(h, bytes.len);
}

fn fail(message: []const u8) i32 {
    const h = env.alloc(message.len);
    for (message, 0..) |c, i| env.store_u8(h + i, c);
    env.error_set(h);
    return 1;
}

export fn count() i32 {
    const allocator = std.heap.wasm_allocator;
    const n: usize = @intCast(env.input_length());
    const input = allocator.alloc(u8, n) catch return fail("out of memory");
    defer allocator.free(input);
    for (input, 0..) |*c, i| c.* = env.input_load_u8(i);

    const Args = struct { text: []const u8 };
    const parsed = std.json.parseFromSlice(Args, allocator, input, .{ .ignore_unknown_fields = true }) catch
        return fail("expected arguments {\"text\": \"...\"}");
    defer parsed.deinit();
    const text = parsed.value.text;

    var lines: usize = 0;
    var words: usize = 0;
    var in_word = false;
    for (text) |c| {
        if (c == '\n') lines += 1;
        const space = c == ' ' or c == '\n' or c == '\t' or c == '\r';
        if (!space and !in_word) words += 1;
        in_word = !space;
    }
    if (text.len > 0 and text[text.len - 1] != '\n') lines += 1;

    var buf: [96]u8 = undefined;
    const out = std.fmt.bufPrint(&buf, "{{\"bytes\":{d},\"lines\":{d},\"words\":{d}}}", .{ text.len, lines, words }) catch
        return fail("output too long");
    output(out);
    return 0;
}
