"""The command line against input a demanding user (or a slip of the keyboard) gives it:
each case below ended in a traceback, did the wrong thing without a word, or lost
something, until a review swept every command with hostile arguments."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import tether
from tether.cli import cli


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def _clean(result: Result, code: int = 1) -> None:
    assert result.exit_code == code, result.output
    assert ("Traceback" not in result.output and result.exception is None) or isinstance(
        result.exception, SystemExit), result.output


@pytest.fixture
def reg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TETHER_USER", "me@team")  # the registry's creator: its admin
    root = tmp_path / "reg"
    registry = tether.init(root, actor="me@team")
    for i in range(3):
        (tmp_path / f"m{i}").mkdir()
        (tmp_path / f"m{i}" / "w.bin").write_bytes(os.urandom(5000))
        registry.log_model(str(tmp_path / f"m{i}"), "m")
    registry.close()
    return root


def test_a_grace_period_of_nan_is_refused_and_one_of_zero_is_kept(reg: Path) -> None:
    """``nan < 0`` is false: `gc --grace nan` passed every check, made every version old
    enough, and deleted versions logged seconds before. A setting of 0 read as unset."""
    _clean(run("-r", str(reg), "gc", "--keep-last", "1", "--grace", "nan"))
    assert tether.open(reg).verify("m@1") == []
    _clean(run("-r", str(reg), "config", "set", "gc.grace_seconds", "nan"))
    _clean(run("-r", str(reg), "config", "set", "gc.keep_last", "1e400"))
    assert run("-r", str(reg), "config", "set", "gc.grace_seconds", "0").exit_code == 0
    answer = run("-r", str(reg), "gc", "--dry-run", "--json")
    assert json.loads(answer.output)["grace_seconds"] == 0
    # inf is "never by age", as before nan was refused (a review of that refusal).
    assert run("-r", str(reg), "config", "set", "gc.grace_seconds", "inf").exit_code == 0
    assert run("-r", str(reg), "gc", "--keep-last", "1", "--grace", "inf").exit_code == 0
    assert tether.open(reg).verify("m@1") == []
    assert run("-r", str(reg), "audit", "log", "-n", "0", "--json").exit_code == 0  # all


def test_a_damaged_database_or_audit_key_is_a_clear_error(reg: Path, tmp_path: Path) -> None:
    key = reg / "keys" / "audit-key.pem"
    key.write_text("not a key")
    result = run("-r", str(reg), "promote", "m@1", "production", "--create")
    _clean(result)
    assert "is not a usable audit key" in result.output
    assert tether.open(reg).model("m").aliases == {}  # nothing was written
    database = reg / "registry.db"
    database.write_bytes(database.read_bytes()[:4096])
    result = run("-r", str(reg), "versions", "m", "--json")
    _clean(result)
    assert json.loads(result.output)["error"] == "database_error"


@pytest.mark.parametrize("args", [
    ["audit", "log", "-n", "99999999999999999999"],  # 0 is "all"
    ["policy", "show", "m", "--revision", "99999999999999999999"],
    ["serve", "m@1", "--port", "99999"],
    ["ui", "--port", "-1"],
    ["image", "render", "m@1", "--port", "70000"],
])
def test_numbers_out_of_range_are_refused_as_arguments(reg: Path, args: list[str]) -> None:
    """A 20-digit count was SQLite's OverflowError; port 99999 was served on another
    port while the message named 99999; port -1 was uvicorn's own error."""
    result = run("-r", str(reg), *args)
    _clean(result, code=2)
    assert "is not in the range" in result.output


def test_odd_names_urls_and_folders_are_clear_errors(reg: Path, tmp_path: Path) -> None:
    result = run("-r", "https://[::1", "versions", "m")
    _clean(result)
    assert "is not a server's URL" in result.output
    result = run("key", "generate", "")
    _clean(result)
    assert "is not a file name for a key" in result.output
    result = run("init", "--store", "junk://x", str(tmp_path / "new"))
    _clean(result)
    assert not (tmp_path / "new").exists()
    (tmp_path / "newer").mkdir()
    tether.init(tmp_path / "newer" / ".tether").close()
    config = tmp_path / "newer" / ".tether" / "tether.toml"
    config.write_text(config.read_text().replace("format = 1", "format = 999"))
    result = run("-r", str(tmp_path / "newer" / ".tether"), "models")
    _clean(result)
    assert "this Tether reads format 1" in result.output


def test_a_download_never_replaces_a_link_and_reproduce_no_file_of_yours(
        reg: Path, tmp_path: Path) -> None:
    """DEST "must not exist": a dangling link there passed (``exists`` follows links) and
    was replaced; `reproduce -o DIR` wrote over a hand-written Dockerfile."""
    link = tmp_path / "dest"
    link.symlink_to(tmp_path / "elsewhere")
    _clean(run("-r", str(reg), "download", "m@1", str(link)))
    assert link.is_symlink() and not (tmp_path / "elsewhere").exists()
    project = tmp_path / "project"
    project.mkdir()
    (project / "Dockerfile").write_text("MINE\n")
    result = run("-r", str(reg), "reproduce", "m@1", "-o", str(project), "--no-data")
    _clean(result)
    assert "already holds Dockerfile" in result.output
    assert (project / "Dockerfile").read_text() == "MINE\n"
    again = tmp_path / "again"
    for _ in range(2):  # what it wrote itself, unchanged, it writes again
        assert run("-r", str(reg), "reproduce", "m@1", "-o", str(again),
                   "--no-data").exit_code == 0


def test_show_piped_prints_its_header_whole(reg: Path) -> None:
    author = "someone.with.a.very.long.address@users.noreply.example.com"
    registry = tether.open(reg, actor=author)
    (reg.parent / "long").mkdir()
    (reg.parent / "long" / "w.bin").write_bytes(b"x")
    registry.log_model(str(reg.parent / "long"), "longname-model-for-a-wide-header")
    shown: Any = run("-r", str(reg), "show", "longname-model-for-a-wide-header@1")
    assert author in shown.output and "created: " in shown.output


def test_a_retry_time_that_is_not_a_number_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """``TETHER_RETRY_SECONDS=abc`` meant 30 s without a word."""
    from tether import InvalidInput
    from tether._store.blobs import retry_seconds

    for junk in ("abc", "nan"):
        monkeypatch.setenv("TETHER_RETRY_SECONDS", junk)
        with pytest.raises(InvalidInput, match="not a number of seconds"):
            retry_seconds()
    monkeypatch.setenv("TETHER_RETRY_SECONDS", "2.5")
    assert retry_seconds() == 2.5


def test_a_mistake_in_the_arguments_is_json_too_under_json(tmp_path: Path) -> None:
    """The README promises ``{"error": ...}`` on stdout under --json: a mistake in the
    arguments (caught by click before any command runs) left stdout empty."""
    import subprocess

    from .conftest import subprocess_env, tether_exe

    for args in (["data", "add", str(tmp_path / "missing"), "x", "--json"],
                 ["audit", "log", "-n", "abc", "--json"], ["show", "--json"]):
        done = subprocess.run([tether_exe(), *args], capture_output=True, text=True,
                              env=subprocess_env(), cwd=tmp_path, check=False)
        assert done.returncode == 2, done.stderr
        answer = json.loads(done.stdout)
        assert answer["error"] == "usage" and answer["message"], answer
        assert "--help" in answer["hint"]
    done = subprocess.run([tether_exe(), "show", "--help", "--json"], capture_output=True,
                          text=True, env=subprocess_env(), cwd=tmp_path, check=False)
    assert done.returncode == 0 and "Usage:" in done.stdout
