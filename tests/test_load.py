"""Load: 200 concurrent paired devices against one real bridge process (bench/load.py).

Asserted: zero errors, no lost or duplicated write (the oracle), every device finished its plan,
and across rounds the bridge comes back to the same descriptors and children and its RSS stays
within the stated slack. Latencies and throughput are printed (`-s`), never asserted: the
figures belong to `python -m bench.load`.
"""

from __future__ import annotations

from pathlib import Path

from bench.load import PLAN, RSS_SLACK_KIB, LoadConfig, _check_oracle, rows, run_load

CFG = LoadConfig(devices=200, ops_per_device=6, rounds=3, shared_files=25)


def _planned(kind: str, index: int) -> int:
    return sum(PLAN[(index + k) % len(PLAN)] == kind for k in range(CFG.ops_per_device))


def test_200_devices_no_errors_no_lost_or_duplicated_writes_no_growth(tmp_path: Path) -> None:
    report = run_load(CFG, tmp_path)
    for row in rows(report):
        print(f"{row['name']:<50} {row['value']:>10} {row['unit']}  {row.get('note', '')}")

    assert report.errors == []
    devices = _devices_on_disk(tmp_path)
    # Every device ran its whole plan in every round, and its writes are the ones on disk.
    assert len(devices) == CFG.devices
    for i, own in devices.items():
        assert len(own) == _planned("own", i) * CFG.rounds
    total_shared = sum(
        len((tmp_path / "ws" / "shared" / f"{g}.log").read_text().splitlines())
        for g in range(CFG.shared_files)
    )
    assert total_shared == sum(_planned("shared", i) for i in range(CFG.devices)) * CFG.rounds
    assert sum(r.ops for r in report.rounds) >= CFG.devices * CFG.ops_per_device * CFG.rounds

    # Resources: each round ends where the first ended; memory within the slack.
    first = report.rounds[0]
    for r in report.rounds[1:]:
        assert (r.fds, r.children) == (first.fds, first.children)
    assert first.children == 1  # the supervisor, nothing else
    assert report.rss_growth_kib <= RSS_SLACK_KIB, [r.rss_kib for r in report.rounds]

    # The oracle is not blind: a duplicated shared record and a lost own record are reported.
    shared0 = tmp_path / "ws" / "shared" / "0.log"
    lines = shared0.read_text().splitlines()
    shared0.write_text("\n".join([*lines, lines[0]]) + "\n")
    own1 = tmp_path / "ws" / "dev" / "1.log"
    own1.write_text("\n".join(own1.read_text().splitlines()[1:]) + "\n")
    errors = _check_oracle(tmp_path / "ws", report.devices, CFG)
    assert [e.split(":")[0] for e in errors] == ["dev/1.log", "shared/0.log"], errors
    assert "duplicated 1" in errors[1]


def _devices_on_disk(tmp: Path) -> dict[int, list[str]]:
    return {
        i: (tmp / "ws" / "dev" / f"{i}.log").read_text().splitlines() for i in range(CFG.devices)
    }
