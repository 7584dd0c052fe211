"""The workspace jail: every escape route is refused, legitimate links still work, no fd leaks."""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_core.rpc.errors import EACCES, EINVAL, ENOENT, ENOTDIR, RpcError
from bridge.jail import MAX_SYMLINKS, Workspace
from bridge.policy import DEFAULT_DENY, Policy


def build_tree(tmp: Path) -> tuple[Path, Path]:
    """A workspace full of traps, next to an `outside` directory with a secret in it."""
    outside = tmp / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("top secret\n")
    (outside / "dir").mkdir()
    (outside / "dir" / "inner.txt").write_text("outside inner\n")
    root = tmp / "ws"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "f.txt").write_text("hello\n")
    (root / "sub").mkdir()
    (root / "sub" / ".env.local").write_text("TOKEN=1\n")
    (root / "keys").mkdir()
    (root / "keys" / "id_rsa").write_text("PRIVATE\n")
    (root / ".env").write_text("SECRET=1\n")
    (root / ".kite").mkdir()
    (root / ".kite" / "bridge.toml").write_text("[policy]\n")
    (root / "back\\slash").write_text("bs\n")
    links = {
        "to_passwd": "/etc/passwd",
        "out_rel": "../outside",
        "out_abs": str(outside),
        "out_file": "../outside/secret.txt",
        "dotdot": "..",
        "in_rel": "a/b",
        "in_abs": str(root / "a"),
        "c1": "c2",
        "c2": "c3",
        "c3": "a/b/f.txt",
        "l1": "l2",
        "l2": "l1",
        "self": "self",
        "devnull": "/dev/null",
        "dangling": "nowhere/x",
        "to_env": ".env",
        "deep_up": "a/b/../../..",
    }
    for name, target in links.items():
        os.symlink(target, root / name)
    os.symlink("../../outside/secret.txt", root / "a" / "up2")
    os.mkfifo(root / "fifo")
    os.link(outside / "secret.txt", root / "hard")
    return root, outside


def tree_state(base: Path) -> dict[str, object]:
    """Everything on disk under base (without following links), to prove nothing changed."""
    out: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st_ = p.lstat()
            rel = str(p.relative_to(base))
            if stat.S_ISLNK(st_.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISREG(st_.st_mode):
                out[rel] = ("file", st_.st_mode, p.read_bytes())
            elif stat.S_ISDIR(st_.st_mode):
                out[rel] = ("dir", st_.st_mode)
            else:
                out[rel] = ("other", st_.st_mode)
    return out


def open_fds() -> frozenset[tuple[str, str]]:
    """The process's open fds with what each points at.

    Compared with ``<=`` (no new fd appeared) rather than ``==``: a finalizer
    from an earlier test may close an unrelated fd while these run.
    """
    out = set()
    for name in os.listdir("/proc/self/fd"):
        # the listdir fd itself is gone by now, or another was closed meanwhile
        with contextlib.suppress(FileNotFoundError):
            out.add((name, os.readlink(f"/proc/self/fd/{name}")))
    return frozenset(out)


def fd_path(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


@pytest.fixture
def jail(tmp_path: Path):
    root, outside = build_tree(tmp_path)
    ws = Workspace(root, Policy())
    yield ws, root, outside, tmp_path
    ws.close()


def inside(path: str, root: Path) -> bool:
    real = os.path.realpath(root)
    return path == real or path.startswith(real + os.sep)


# -- escapes ----------------------------------------------------------------------------------

ESCAPES = [
    ("../x", EACCES),
    ("a/../../x", EACCES),
    ("a/b/../../../outside/secret.txt", EACCES),
    ("/etc/passwd", EACCES),
    ("//etc/passwd", EACCES),
    ("to_passwd", EACCES),
    ("out_rel/secret.txt", EACCES),
    ("out_rel", EACCES),
    ("out_abs/secret.txt", EACCES),
    ("out_abs/dir/inner.txt", EACCES),
    ("out_file", EACCES),
    ("dotdot/outside/secret.txt", EACCES),
    ("dotdot", EACCES),
    ("a/up2", EACCES),
    ("deep_up/outside/secret.txt", EACCES),
    ("l1", EINVAL),
    ("self", EINVAL),
    ("l1/x", EINVAL),
    ("hard", EACCES),
    ("fifo", EACCES),
    ("devnull", EACCES),
    ("a\x00b", EINVAL),
    ("a/b/f.txt\x00", EINVAL),
    (".env", EACCES),
    ("to_env", EACCES),
    ("sub/.env.local", EACCES),
    ("keys/id_rsa", EACCES),
    ("KEYS/ID_RSA", EACCES),  # deny globs are case-insensitive (missing here, still refused)
    (".kite/bridge.toml", EACCES),
    ("dangling", ENOENT),
    ("a/b/f.txt/x", ENOTDIR),
]


@pytest.mark.parametrize(("path", "code"), ESCAPES)
def test_open_refuses_escapes(jail, path: str, code: str) -> None:
    ws, _root, _outside, tmp = jail
    before = tree_state(tmp)
    fds = open_fds()
    with pytest.raises(RpcError) as ei:
        ws.open(path)
    assert ei.value.code == code, ei.value
    assert str(tmp) not in ei.value.message  # no host paths in messages
    assert open_fds() <= fds
    assert tree_state(tmp) == before


@pytest.mark.parametrize(
    ("path", "code"),
    [(p, c) for p, c in ESCAPES if c == EACCES and p not in ("hard", "fifo", "devnull")],
)
def test_open_parent_refuses_escapes(jail, path: str, code: str) -> None:
    ws, _root, _outside, tmp = jail
    before = tree_state(tmp)
    fds = open_fds()
    with pytest.raises(RpcError) as ei:
        ws.open_parent(path, follow_final=True, create_parents=True)
    assert ei.value.code == code
    assert open_fds() <= fds
    assert tree_state(tmp) == before


def test_fifo_never_blocks(jail) -> None:
    ws, *_ = jail
    done = threading.Event()
    errors: list[RpcError] = []

    def attempt() -> None:
        for flags in (os.O_RDONLY, os.O_WRONLY, os.O_RDWR):
            try:
                ws.open("fifo", flags)
            except RpcError as exc:
                errors.append(exc)
        done.set()

    threading.Thread(target=attempt, daemon=True).start()
    assert done.wait(5), "opening a FIFO blocked"
    assert [e.code for e in errors] == [EACCES] * 3


def test_socket_refused(jail) -> None:
    ws, root, *_ = jail
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind(str(root / "sock"))
        with pytest.raises(RpcError) as ei:
            ws.open("sock")
        assert ei.value.code == EACCES
    finally:
        s.close()


def test_hard_link_refused_for_read_and_write(jail) -> None:
    ws, _root, outside, _tmp = jail
    for flags in (os.O_RDONLY, os.O_WRONLY):
        with pytest.raises(RpcError) as ei:
            ws.open("hard", flags)
        assert ei.value.code == EACCES
    assert (outside / "secret.txt").read_text() == "top secret\n"


def test_policy_file_is_read_denied_and_never_writable(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    (root / ".kite").mkdir(parents=True)
    (root / ".kite" / "bridge.toml").write_text("[policy]\n")
    ws = Workspace(root, Policy(deny=()))  # even with an empty deny list
    os.close(ws.open(".kite/bridge.toml").fd)
    for path in (".kite/bridge.toml", ".kite", ".KITE/Bridge.toml"):
        with pytest.raises(RpcError) as ei:
            ws.open_parent(path)
        assert ei.value.code == EACCES
    with pytest.raises(RpcError):
        ws.open(".kite/bridge.toml", os.O_WRONLY)


# -- legitimate paths -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "rel"),
    [
        ("a/b/f.txt", "a/b/f.txt"),
        ("./a//b/./f.txt", "a/b/f.txt"),
        ("a/b/../b/f.txt", "a/b/f.txt"),
        ("in_rel/f.txt", "a/b/f.txt"),
        ("in_rel/../b/f.txt", "a/b/f.txt"),  # `..` after a link is physical, as in POSIX
        ("in_abs/b/f.txt", "a/b/f.txt"),
        ("c1", "a/b/f.txt"),
        ("back\\slash", "back\\slash"),
        (".", ""),
        ("a/b/..", "a"),
    ],
)
def test_open_resolves_inside(jail, path: str, rel: str) -> None:
    ws, root, *_ = jail
    o = ws.open(path)
    try:
        assert o.rel == rel
        assert fd_path(o.fd) == os.path.realpath(root / rel)
        fl = __import__("fcntl").fcntl(o.fd, __import__("fcntl").F_GETFL)
        assert not fl & os.O_NONBLOCK
    finally:
        os.close(o.fd)


def test_symlink_depth_limit(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    root.mkdir()
    (root / "target").write_text("t")
    prev = "target"
    for i in range(MAX_SYMLINKS + 1):
        os.symlink(prev, root / f"s{i}")
        prev = f"s{i}"
    ws = Workspace(root)
    assert ws.open(f"s{MAX_SYMLINKS - 1}").rel == "target"  # 40 links: fine
    with pytest.raises(RpcError) as ei:
        ws.open(f"s{MAX_SYMLINKS}")  # 41: too many
    assert ei.value.code == EINVAL


def test_open_parent_follows_or_not(jail) -> None:
    ws, *_ = jail
    with ws.parent("c1", follow_final=True) as p:
        assert (p.rel, p.name) == ("a/b/f.txt", "f.txt")
    with ws.parent("c1") as p:
        assert (p.rel, p.name) == ("c1", "c1")
    with ws.parent("in_rel/new.txt") as p:
        assert p.rel == "a/b/new.txt"
    with pytest.raises(RpcError) as ei:
        ws.open_parent(".")
    assert ei.value.code == EACCES


def test_open_parent_creates_parents_inside_only(jail) -> None:
    ws, root, *_ = jail
    with ws.parent("n1/n2/file.txt", create_parents=True) as p:
        assert p.rel == "n1/n2/file.txt"
    assert (root / "n1" / "n2").is_dir()
    with pytest.raises(RpcError) as ei:
        ws.open_parent("m1/file.txt")
    assert ei.value.code == ENOENT
    with pytest.raises(RpcError) as ei:
        ws.open_parent(".ssh/x/y", create_parents=True)
    assert ei.value.code == EACCES
    assert not (root / ".ssh").exists()


def test_resolve_dir_path_and_relpath(jail) -> None:
    ws, root, *_ = jail
    real = os.path.realpath(root)
    assert ws.resolve_dir_path("in_rel") == real + "/a/b"
    assert ws.resolve_dir_path(".") == real
    with pytest.raises(RpcError) as ei:
        ws.resolve_dir_path("a/b/f.txt")
    assert ei.value.code == ENOTDIR
    with pytest.raises(RpcError):
        ws.resolve_dir_path("out_rel")
    assert ws.relpath(root / "a" / "b") == "a/b"
    assert ws.relpath(real + "/a/../a") == "a"
    assert ws.relpath(root) == ""
    with pytest.raises(RpcError) as ei:
        ws.relpath("/etc/passwd")
    assert ei.value.code == EACCES
    with pytest.raises(RpcError):
        ws.relpath(str(root) + "/../outside")


def test_stat_any_type_without_opening(jail) -> None:
    ws, *_ = jail
    st_, rel = ws.stat("fifo")
    assert stat.S_ISFIFO(st_.st_mode) and rel == "fifo"
    st_, rel = ws.stat("c1")
    assert stat.S_ISREG(st_.st_mode) and rel == "a/b/f.txt"
    st_, rel = ws.stat("c1", follow=False)
    assert stat.S_ISLNK(st_.st_mode) and rel == "c1"
    st_, rel = ws.stat("to_passwd", follow=False)  # the link itself lives inside
    assert stat.S_ISLNK(st_.st_mode)
    for bad in ("to_passwd", ".env", "../x"):
        with pytest.raises(RpcError) as ei:
            ws.stat(bad)
        assert ei.value.code == EACCES


def test_deny_matcher_agrees_with_pathspec() -> None:
    import pathspec

    ws = Workspace(Path("/"), Policy())
    spec = pathspec.GitIgnoreSpec.from_lines(list(DEFAULT_DENY))
    samples = [
        ".env",
        "a/.env",
        ".env.local",
        "x/y/.env.prod",
        "env",
        "a.env",
        "cert.pem",
        "a/b/cert.pem",
        "id_rsa",
        "x/id_rsa.pub",
        "x/id_ed25519",
        ".ssh/config",
        "a/.ssh/known_hosts",
        ".ssh",
        ".ssh/",
        "a/.aws/credentials",
        ".kite/bridge.toml",
        "x/.kite/bridge.toml",
        "src/main.py",
        "README.md",
        ".netrc",
        "z/.git-credentials",
        "keyboard.py",
        "a.key",
        "monkey",
    ]
    for s in samples:
        assert ws.is_denied(s) == spec.match_file(s), s
    ws.close()


def test_no_fd_leak_over_many_calls(jail) -> None:
    ws, *_ = jail
    fds = open_fds()
    for _ in range(50):
        for path, _code in ESCAPES:
            with contextlib.suppress(RpcError):
                os.close(ws.open(path).fd)
        os.close(ws.open("c1").fd)
        ws.open_parent("in_rel/x").close()
        ws.stat("in_rel")
    assert open_fds() <= fds


# -- property: nothing outside the root is ever opened ----------------------------------------

COMPONENTS = [
    "a",
    "b",
    "f.txt",
    "..",
    ".",
    "",
    "out_rel",
    "out_abs",
    "out_file",
    "to_passwd",
    "dotdot",
    "deep_up",
    "in_rel",
    "in_abs",
    "c1",
    "l1",
    "self",
    "devnull",
    "fifo",
    "hard",
    "dangling",
    "up2",
    ".env",
    "to_env",
    "sub",
    "keys",
    "id_rsa",
    "back\\slash",
    "outside",
    "secret.txt",
    "ws",
    "\x00",
    "\ud800",
    "\udcff",
    "é",
]

paths = st.one_of(
    st.lists(st.sampled_from(COMPONENTS), max_size=8).map("/".join),
    st.lists(st.sampled_from(COMPONENTS), max_size=8).map(lambda c: "/" + "/".join(c)),
    st.text(max_size=40),
)


@pytest.fixture(scope="module")
def prop_jail(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("prop")
    root, _outside = build_tree(tmp)
    ws = Workspace(root, Policy())
    yield ws, root, tmp
    ws.close()


@settings(
    max_examples=600,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(path=paths, flags=st.sampled_from([os.O_RDONLY, os.O_WRONLY]))
def test_property_never_outside(prop_jail, path: str, flags: int) -> None:
    ws, root, _tmp = prop_jail
    fds = open_fds()
    try:
        o = ws.open(path, flags)
    except RpcError as exc:
        assert exc.code in {EACCES, EINVAL, ENOENT, ENOTDIR, "EISDIR"}
    else:
        try:
            where = fd_path(o.fd)
            assert inside(where, root), (path, where)
            st_ = os.fstat(o.fd)
            assert stat.S_ISREG(st_.st_mode) or stat.S_ISDIR(st_.st_mode)
            assert not ws.is_denied(o.rel)
        finally:
            os.close(o.fd)
    try:
        p = ws.open_parent(path, follow_final=True)
    except RpcError:
        pass
    else:
        try:
            assert inside(fd_path(p.dir_fd), root)
            assert "/" not in p.name and p.name not in ("", ".", "..")
            assert not ws.is_protected(p.rel)
        finally:
            p.close()
    assert open_fds() <= fds


def test_create_parents_deep(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    root.mkdir()
    ws = Workspace(root)
    deep = "/".join(f"d{i}" for i in range(60)) + "/f.txt"
    with ws.parent(deep, create_parents=True) as p:
        assert p.rel == deep
    assert (root / deep).parent.is_dir()
    ws.close()
