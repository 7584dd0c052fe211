"""Fuzzing in the normal test run: the atheris targets (tests/fuzz/) for a fixed number of inputs
with a fixed seed (deterministic, ~15 s), every saved crash input replayed, the targets shown to
catch a broken decoder, and the bugs fuzzing and review found as regression tests.

Longer runs on demand: `python -m tests.fuzz --seconds 600` (see tests/fuzz/__init__.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent_core.rpc import frames as frames_mod
from agent_core.rpc.frames import FrameDecoder, chunk_payload, parse_envelope
from tests.fuzz import targets

REGRESSIONS = Path(__file__).resolve().parent / "fuzz" / "regressions"
CI_RUNS = 25_000


def test_fuzz_every_target_for_a_fixed_number_of_inputs(tmp_path: Path) -> None:
    pytest.importorskip("atheris", reason="atheris is in the test extra (pyproject.toml)")
    from tests.fuzz.__main__ import fuzz

    res = fuzz("every", runs=CI_RUNS, seed=1, crash_dir=tmp_path)
    tail = "\n".join(res.stderr.splitlines()[-30:])
    assert res.returncode == 0, f"the fuzzer found a crash:\n{tail}"
    executed = [ln for ln in res.stderr.splitlines() if ln.startswith("stat::number_of_executed")]
    assert executed and int(executed[-1].split(":")[-1]) >= CI_RUNS, tail
    assert not list(tmp_path.iterdir())


def _regression_inputs() -> list[tuple[str, Path]]:
    if not REGRESSIONS.is_dir():
        return []
    return [
        (d.name, f)
        for d in sorted(REGRESSIONS.iterdir())
        if d.is_dir()
        for f in sorted(d.iterdir())
    ]


@pytest.mark.parametrize(
    ("target", "path"), _regression_inputs(), ids=lambda v: v if isinstance(v, str) else v.name
)
def test_saved_crash_inputs_replay_cleanly(target: str, path: Path) -> None:
    targets.TARGETS[target](path.read_bytes())


def test_targets_seeds_pass() -> None:
    for name, fn in targets.TARGETS.items():
        for seed in targets.seeds(name):
            fn(seed)


# -- the targets are not blind ------------------------------------------------------------------


def test_chunks_target_catches_a_decoder_that_ignores_sequence_numbers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the seq check disabled, a dropped chunk slips through and the target says so."""
    real_feed = FrameDecoder.feed

    def no_seq_check(self: FrameDecoder, frame: bytes):  # type: ignore[no-untyped-def]
        if frame[:1] == b"\0" and len(frame) >= 10:
            chunk, _ = frames_mod.decode_chunk(frame)
            key = chunk.id if not frame[1] & 2 else -1 - chunk.id
            self._next_seq[key] = chunk.seq  # whatever came is "expected"
        return real_feed(self, frame)

    monkeypatch.setattr(FrameDecoder, "feed", no_seq_check)
    # rid 1, 3 x 700 bytes... 0x80 x 700 = 89,600 bytes: 2 chunks; plan: drop the first.
    data = b"\0\0\0\1\x80" + b"\0"
    assert len(chunk_payload(1, b"x" * (0x80 * 700))) == 2
    with pytest.raises(AssertionError):
        targets.chunks(data)


def test_transport_target_catches_a_channel_that_accepts_replays(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from agent_core.channel.noise import CipherState

    real = CipherState.decrypt_with_ad

    async def forgiving(self: CipherState, ad: bytes, ciphertext: bytes) -> bytes:
        n = self.n
        for candidate in range(max(0, n - 4), n + 1):  # "tolerates" replays and reorders
            self.n = candidate
            try:
                out = await real(self, ad, ciphertext)
            except Exception:
                continue
            self.n = max(n, candidate + 1)
            return out
        self.n = n
        return await real(self, ad, ciphertext)

    monkeypatch.setattr(CipherState, "decrypt_with_ad", forgiving)
    # plan: deliver frame 0, then replay it; then frame 1.
    data = b"\0\2\3\1" + b"\0\1a" + b"\0\1b"
    with pytest.raises(AssertionError):
        targets.transport(data)


# -- bugs found, as regression tests -------------------------------------------------------------

DEEP = b'{"id":1,"op":"sys.ping","args":{"a":' + b"[" * 5000 + b"]" * 5000 + b"}}"


def test_deeply_nested_envelope_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_envelope(DEEP)
    dec = FrameDecoder()
    with pytest.raises(ValueError):
        dec.feed(DEEP)
