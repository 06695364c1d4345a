"""Only this user's hpcflow writes what hpcflow unpickles: planted journal frames, result
files and inline results run nothing, whoever planted them; open run folders are not
resumed; the key is private. Every check is a real run and real CLI processes."""

from __future__ import annotations

import os
import pickle
import stat
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import msgpack
import pytest

from hpcflow.store.journal import Event, Journal, read_journal

pytestmark = pytest.mark.timeout(180)

MODULE = """
import os
from pathlib import Path

def _mark(name):
    with open(Path(os.environ["HF_TEST_LOG"]) / name, "a") as fh:
        fh.write(name + "\\n")

def small(x):
    _mark("small")
    return x + 1

def big():
    _mark("big")
    return b"y" * 100_000

def total(s, b):
    if os.environ.get("HF_TEST_FAIL"):
        raise ValueError("total refuses")
    _mark("total")
    return s + len(b)
"""

SPEC = """
name: trusty
tasks:
  - id: small
    python: tasks_mod:small
    args: {x: 41}
  - id: big
    python: tasks_mod:big
  - id: total
    python: tasks_mod:total
    args: {s: "${small}", b: "${big}"}
outputs:
  total: "${total}"
"""


class Planted:
    """A pickle that, once loaded, creates ``marker``: the proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _frame(payload: bytes) -> bytes:
    return struct.pack("<II", len(payload), zlib.crc32(payload)) + payload


@pytest.fixture
def env(tmp_path, monkeypatch):
    (tmp_path / "log").mkdir()
    (tmp_path / "tasks_mod.py").write_text(MODULE)
    (tmp_path / "wf.yaml").write_text(SPEC)
    monkeypatch.setenv("HF_TEST_LOG", str(tmp_path / "log"))
    monkeypatch.setenv("HPCFLOW_KEY_FILE", str(tmp_path / "keys" / "mine"))
    monkeypatch.delenv("HPCFLOW_TRUSTED_KEYS", raising=False)
    monkeypatch.delenv("HF_TEST_FAIL", raising=False)
    return tmp_path


def hpcflow(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hpcflow", *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, **(env_extra or {})})


def _runs(tmp: Path, name: str) -> int:
    path = tmp / "log" / name
    return len(path.read_text().splitlines()) if path.exists() else 0


def _failed_run(tmp: Path) -> Path:
    """A run in which small and big are done and total failed: a resume reads both."""
    run = tmp / "run"
    done = hpcflow("run", str(tmp / "wf.yaml"), "--run-dir", str(run),
                   env_extra={"HF_TEST_FAIL": "1"})
    assert done.returncode == 1, done.stderr
    return run


def _resume(run: Path, **env_extra: str) -> subprocess.CompletedProcess:
    return hpcflow("run", "--resume", str(run), env_extra=env_extra)


def _big_result(run: Path) -> Path:
    files = list((run / "results").glob("*.pkl"))
    assert len(files) == 1
    return files[0]


def _readers(run: Path, tmp: Path) -> list[subprocess.CompletedProcess]:
    return [hpcflow("status", str(run)), hpcflow("report", str(run), "-o", str(tmp / "r.html")),
            hpcflow("trace", str(run)), hpcflow("runs", "--runs-root", str(run.parent))]


def test_a_planted_pickle_frame_is_never_unpickled_by_readers(env):
    run = _failed_run(env)
    marker = env / "pwned"
    with open(run / "journal.bin", "ab") as fh:
        fh.write(_frame(pickle.dumps([("end", Planted(marker), 0.0)])))
    for done in _readers(run, env):
        assert not marker.exists(), done.args
    status = hpcflow("status", str(run))
    assert status.returncode == 2 and "is not hpcflow events" in status.stderr
    assert len(status.stderr.strip().splitlines()) == 1


def test_a_planted_plain_frame_is_only_data(env):
    run = _failed_run(env)
    marker = env / "pwned"
    evil = bytes(32) + pickle.dumps(Planted(marker))
    with open(run / "journal.bin", "ab") as fh:
        fh.write(_frame(msgpack.packb([["done", 0, 0, 0, 1.0, 2.0, ["inline", evil], {}]])))
    for done in _readers(run, env):
        assert done.returncode in (0, 1), done.stderr
        assert not marker.exists(), done.args


def test_a_nonsense_plain_frame_is_one_line(env):
    run = _failed_run(env)
    with open(run / "journal.bin", "ab") as fh:
        fh.write(_frame(msgpack.packb([["done", "x"], ["fail", 10**6, 0, 0]])))
    for done in _readers(run, env)[:3]:
        assert done.returncode == 2, done.args
        assert "is not hpcflow events" in done.stderr and "Traceback" not in done.stderr


def test_an_old_pickle_journal_is_refused_in_one_line(env):
    run = _failed_run(env)
    marker = env / "pwned"
    events = [("run", {"engine": "local"}), ("end", Planted(marker), 0.0)]
    (run / "journal.bin").write_bytes(_frame(pickle.dumps(events, protocol=4)))
    for done in (hpcflow("status", str(run)), _resume(run)):
        assert done.returncode == 2
        assert "older hpcflow (pickle frames)" in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    assert not marker.exists()


@pytest.mark.parametrize("sealed", [False, True], ids=["bare-pickle", "forged-seal"])
def test_a_replaced_result_file_is_not_unpickled_on_resume(env, sealed):
    run = _failed_run(env)
    marker = env / "pwned"
    target = _big_result(run)
    evil = pickle.dumps(Planted(marker))
    target.write_bytes(b"hpcflow\x01" + bytes(32) + evil if sealed else evil)
    dry = hpcflow("run", "--resume", str(run), "--dry-run")
    assert "big: its stored result is unreadable or not sealed with a trusted key" in dry.stdout
    done = _resume(run)
    assert done.returncode == 0, done.stderr
    assert not marker.exists()
    assert f"{target}" in done.stderr and "big runs again" in done.stderr
    assert _runs(env, "big") == 2 and _runs(env, "small") == 1 and _runs(env, "total") == 1


def test_a_planted_inline_result_is_not_unpickled_on_resume(env):
    run = _failed_run(env)
    marker = env / "pwned"
    events = list(read_journal(run / "journal.bin"))
    forged = bytes(32) + pickle.dumps(Planted(marker))
    (run / "journal.bin").unlink()
    with Journal(run / "journal.bin") as journal:
        for event in events:
            if event[0] == Event.DONE and event[6][0] == "inline":
                event = (*event[:6], ("inline", forged), event[7])
            journal.record(*event)
    done = _resume(run)
    assert done.returncode == 0, done.stderr
    assert not marker.exists()
    assert "the journal's result of small" in done.stderr and "small runs again" in done.stderr
    assert _runs(env, "small") == 2 and _runs(env, "big") == 1


@pytest.mark.parametrize("where", ["folder", "journal"])
def test_a_run_others_could_write_is_not_resumed(env, where):
    run = _failed_run(env)
    path = run if where == "folder" else run / "journal.bin"
    os.chmod(path, stat.S_IMODE(path.stat().st_mode) | 0o002)
    done = _resume(run)
    assert done.returncode == 2
    assert "writable by others" in done.stderr and f"chmod -R go-w {run}" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert _runs(env, "total") == 0  # nothing ran
    dry = hpcflow("run", "--resume", str(run), "--dry-run")
    assert dry.returncode == 2 and "writable by others" in dry.stderr


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to give a file to another user")
def test_a_run_another_user_owns_is_not_resumed(env):
    run = _failed_run(env)
    os.chown(run / "journal.bin", 65534, 65534)
    done = _resume(run)
    assert done.returncode == 2 and "belongs to uid 65534" in done.stderr
    assert hpcflow("status", str(run)).returncode == 1  # reading it is fine: plain data


def test_a_colleagues_results_are_reused_only_when_their_key_is_trusted(env):
    run = _failed_run(env)  # sealed with "mine"
    theirs = {"HPCFLOW_KEY_FILE": str(env / "keys" / "colleague")}
    trusting = {**theirs, "HPCFLOW_TRUSTED_KEYS": str(env / "keys" / "mine")}
    assert _resume(run, HF_TEST_FAIL="1", **trusting).returncode == 1
    assert _runs(env, "small") == 1 and _runs(env, "big") == 1  # reused: trusted
    done = _resume(run, **theirs)
    assert done.returncode == 0, done.stderr
    assert "not sealed with your key" in done.stderr
    assert _runs(env, "small") == 2 and _runs(env, "big") == 2 and _runs(env, "total") == 1


def test_the_key_is_private_made_once_and_refused_when_open(env):
    key = env / "keys" / "mine"
    probe = "from hpcflow.store.trust import own_key; print(own_key().hex())"
    procs = [subprocess.Popen([sys.executable, "-c", probe], stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    keys = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert len(keys) == 1 and len(bytes.fromhex(keys.pop())) == 32
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    assert [p.name for p in key.parent.iterdir()] == ["mine"]  # no temporary left
    os.chmod(key, 0o644)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode != 0 and f"chmod 600 {key}" in done.stderr


def test_run_folders_are_private_whatever_the_umask(env):
    script = textwrap.dedent(f"""
        import os, sys
        os.umask(0)
        from hpcflow.cli import main
        sys.exit(main(["run", {str(env / 'wf.yaml')!r}, "--run-dir", {str(env / 'run')!r}]))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    run = env / "run"
    folders = [run, run / "results"]
    files = [run / n for n in ("journal.bin", "run.json", "plan.npz", "groups.json", "lock")]
    files.append(_big_result(run))
    assert {f.name: oct(stat.S_IMODE(f.stat().st_mode)) for f in folders} == \
        {f.name: "0o700" for f in folders}
    assert {f.name: oct(stat.S_IMODE(f.stat().st_mode)) for f in files} == \
        {f.name: "0o600" for f in files}
