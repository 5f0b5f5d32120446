"""On/off switches read the same way everywhere (tether/_envflags.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tether._envflags import env_off, env_on
from tether._lockfile import find_lock

from .conftest import subprocess_env


@pytest.mark.parametrize("value", ["0", "off", "OFF", "no", "false", " False "])
def test_every_off_spelling_turns_a_switch_off(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TETHER_SOME_SWITCH", value)
    assert env_off("TETHER_SOME_SWITCH") and not env_on("TETHER_SOME_SWITCH")


@pytest.mark.parametrize("value", ["", "1", "on", "yes", "anything"])
def test_other_values_leave_it_on(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TETHER_SOME_SWITCH", value)
    assert not env_off("TETHER_SOME_SWITCH")


def test_tether_lock_zero_turns_the_lock_off_rather_than_naming_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TETHER_LOCK=0 was taken as a lock file named "0", so every load failed NotFound."""
    (tmp_path / "tether.lock").write_text("{}")
    monkeypatch.setenv("TETHER_LOCK", "0")
    assert find_lock(tmp_path) is None
    monkeypatch.setenv("TETHER_LOCK", "pins/app.lock")
    assert find_lock(tmp_path) == Path("pins/app.lock")
    monkeypatch.delenv("TETHER_LOCK")
    assert find_lock(tmp_path) == tmp_path / "tether.lock"


def test_tether_native_off_is_understood_at_import() -> None:
    """TETHER_NATIVE knew only "0": "off" left the native module on."""
    code = "from tether._store import native; print(native.available)"
    for value, expected in (("off", "False"), ("0", "False")):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env={**subprocess_env(), "TETHER_NATIVE": value}, check=True)
        assert out.stdout.strip() == expected
