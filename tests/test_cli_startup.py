"""Start-up cost of the `tether` command: help loads no heavy library."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest

from tether.cli import COMMANDS, cli

from .conftest import subprocess_env

HEAVY = ("numpy", "sqlalchemy", "httpx", "cryptography", "uvicorn", "sklearn")

PROBE = """
import json, sys
from tether.cli import cli
try:
    cli(ARGS, prog_name="tether")
except SystemExit:
    pass
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})), file=sys.stderr)
"""


def _modules_after(args: list[str]) -> set[str]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE.replace("ARGS", repr(args))],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=120,
    )
    return set(json.loads(proc.stderr.strip().splitlines()[-1]))


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["versions", "--help"]])
def test_help_imports_no_heavy_library(args: list[str]) -> None:
    loaded = _modules_after(args)
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_import_tether_is_lazy_and_keeps_its_api() -> None:
    code = (
        "import sys, tether;"
        f"heavy = sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r});"
        "missing = [n for n in tether.__all__ if not hasattr(tether, n)];"
        "print(heavy, missing)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env()
    )
    assert out.stdout.strip() == "[] []", out.stdout + out.stderr


def test_help_table_matches_each_commands_own_help() -> None:
    ctx = click.Context(cli)
    for name, (_, _, line) in COMMANDS.items():
        command = cli.get_command(ctx, name)
        assert command is not None and command.name == name
        stand_in = click.Command(name, help=line)
        assert stand_in.get_short_help_str(200) == command.get_short_help_str(200), name


def _leaves(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    ctx = click.Context(group)
    found: list[tuple[str, ...]] = []
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if isinstance(command, click.Group):
            found += _leaves(command, (*prefix, name))
        elif command is not None and not any(p.name == "as_json" for p in command.params):
            found.append((*prefix, name))
    return found


def test_every_command_that_reports_takes_json() -> None:
    # Long-running or interactive ones print no result to parse.
    assert set(_leaves(cli)) <= {
        ("demo",),
        ("serve",),
        ("server",),
        ("ui",),
        ("image", "serve"),  # the container's long-running server
        ("audit", "checkpoint"),  # writes the checkpoint itself as JSON
    }


def test_reading_versions_imports_no_numpy_or_framework(tmp_path: Path) -> None:
    """`tether versions` reads rows and prints them: numpy (schemas, drift baselines,
    flavors) was a fifth of its start-up, and nothing on that path needs it."""
    import tether

    model = tmp_path / "m.bin"
    model.write_bytes(b"weights")
    registry = tether.init(tmp_path / ".tether")
    registry.log_model(model, "wine", progress=False)
    registry.close()
    probe = PROBE.replace("ARGS", repr(["versions", "wine"]))
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True,
        env=subprocess_env(TETHER_URI=str(tmp_path / ".tether")), timeout=120, cwd=tmp_path,
    )
    loaded = set(json.loads(proc.stderr.strip().splitlines()[-1]))
    assert "sqlalchemy" in loaded  # it did read the registry
    assert not loaded & {"numpy", "pandas", "sklearn", "onnxruntime", "xgboost"}, loaded
    # Nor an HTTP or S3 client: a local registry talks to neither (the S3 deadline
    # guard, imported with the store's blobs, once loaded httpx: 130 ms on every open).
    assert not loaded & {"httpx", "httpcore", "boto3", "botocore"}, loaded
