"""Policy files: schema checks with clear errors, and a merge where the most restrictive wins."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.jail import Workspace
from bridge.policy import DEFAULT_DENY, DEFAULT_ENV_DENY, Policy, PolicyError, load_policy


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    ws = tmp_path / "ws"
    cfg = tmp_path / "cfg"
    ws.mkdir()
    cfg.mkdir()
    return ws, cfg


def test_no_files_gives_defaults(dirs: tuple[Path, Path]) -> None:
    ws, cfg = dirs
    assert load_policy(ws, cfg) == Policy()
    assert load_policy(ws, None) == Policy()


def test_user_file_sets_the_baseline(dirs: tuple[Path, Path]) -> None:
    ws, cfg = dirs
    write(cfg / "bridge.toml", "[policy]\nread_max_bytes = 1073741824\nexec_timeout_max_s = 60\n")
    p = load_policy(ws, cfg)
    assert p.read_max_bytes == 1 << 30  # the host owner may raise a default
    assert p.exec_timeout_max_s == 60.0
    assert p.exec_timeout_default_s == 60.0  # clamped to the max
    assert p.sources == [str(cfg / "bridge.toml")]


def test_workspace_file_can_only_tighten(dirs: tuple[Path, Path]) -> None:
    ws, _cfg = dirs
    write(
        ws / ".kite" / "bridge.toml",
        "[policy]\nread_max_bytes = 1073741824\ntext_max_bytes = 1000\nexec_enabled = true\n"
        "read_only = false\n",
    )
    p = load_policy(ws, None)
    assert p.read_max_bytes == Policy().read_max_bytes  # cannot loosen the default
    assert p.text_max_bytes == 1000  # can tighten
    assert p.exec_enabled is True and p.read_only is False


def test_most_restrictive_wins(dirs: tuple[Path, Path]) -> None:
    ws, cfg = dirs
    write(
        cfg / "bridge.toml",
        """
[policy]
read_only = true
exec_enabled = true
deny = ["private/**"]
env_deny = ["MY_*"]
grep_max_results = 50
exec_kill_grace_s = 5
""",
    )
    write(
        ws / ".kite" / "bridge.toml",
        """
[policy]
read_only = false
exec_enabled = false
deny = ["*.sqlite", "private/**"]
grep_max_results = 500
exec_kill_grace_s = 1.5
""",
    )
    p = load_policy(ws, cfg)
    assert p.read_only is True  # any true
    assert p.exec_enabled is False  # all true
    assert p.deny == (*DEFAULT_DENY, "private/**", "*.sqlite")  # union, defaults kept
    assert p.env_deny == (*DEFAULT_ENV_DENY, "MY_*")
    assert p.grep_max_results == 50  # min
    assert p.exec_kill_grace_s == 1.5  # min
    assert p.sources == [str(cfg / "bridge.toml"), str(ws / ".kite" / "bridge.toml")]
    w = Workspace(ws, p)
    assert w.is_denied("private/x.txt") and w.is_denied("a/db.sqlite") and w.is_denied(".env")
    w.close()


def test_other_tables_are_left_to_their_owners(dirs: tuple[Path, Path]) -> None:
    ws, cfg = dirs
    write(cfg / "bridge.toml", "[server]\nport = 9999\n\n[policy]\nread_only = true\n")
    assert load_policy(ws, cfg).read_only is True


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[policy]\nread_onyl = true\n", "read_onyl"),
        ("[policy]\nread_only = 1\n", "read_only"),
        ('[policy]\nexec_enabled = "no"\n', "exec_enabled"),
        ("[policy]\nread_max_bytes = 1.5\n", "read_max_bytes"),
        ("[policy]\nread_max_bytes = true\n", "read_max_bytes"),
        ("[policy]\nread_max_bytes = 0\n", "read_max_bytes"),
        ("[policy]\nexec_timeout_max_s = -1\n", "exec_timeout_max_s"),
        ("[policy]\nexec_timeout_max_s = nan\n", "exec_timeout_max_s"),
        ('[policy]\ndeny = ".env"\n', "deny"),
        ("[policy]\ndeny = [1]\n", "deny"),
        ('[policy]\ndeny = ["!.env"]\n', "!.env"),
        ('[policy]\ndeny = [""]\n', "deny"),
        ("read_only = true\n", "read_only"),  # outside [policy]: would be silently ignored
        ("[policy\n", "invalid TOML"),
        ("[policy]\npolicy = 3\n", "policy"),
    ],
)
def test_bad_files_name_file_and_key(dirs: tuple[Path, Path], text: str, needle: str) -> None:
    ws, cfg = dirs
    for path, args in (
        (cfg / "bridge.toml", (ws, cfg)),
        (ws / ".kite" / "bridge.toml", (ws, None)),
    ):
        write(path, text)
        with pytest.raises(PolicyError) as ei:
            load_policy(*args)
        assert str(path) in str(ei.value) and needle in str(ei.value)
        path.unlink()


def test_non_utf8_file(dirs: tuple[Path, Path]) -> None:
    ws, cfg = dirs
    (cfg / "bridge.toml").write_bytes(b"[policy]\nread_only = \xff\n")
    with pytest.raises(PolicyError, match="UTF-8"):
        load_policy(ws, cfg)
