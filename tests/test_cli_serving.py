"""`tether deploy status`/`reload` and `tether monitor` find the serving process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tether.cli import cli
from tether.cli.serving import serving_url

from .conftest import free_port

DEPLOYMENT = """\
server: {host: 0.0.0.0, port: %d}
endpoints:
  iris:
    routes: [iris@production]
"""



def test_the_url_comes_from_url_then_the_deployment_file_then_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert serving_url(None, None) == (
        "http://127.0.0.1:8000",
        "the default of `tether serve`",
    )
    Path("deploy.yaml").write_text(DEPLOYMENT % 8765)  # found in the current folder
    assert serving_url(None, None)[0] == "http://127.0.0.1:8765"
    other = tmp_path / "other.yaml"
    other.write_text(DEPLOYMENT % 9001)
    assert serving_url(None, str(other)) == (
        "http://127.0.0.1:9001",
        f"the server section of {other}",
    )
    assert serving_url("http://box:1234", str(other))[0] == "http://box:1234"


@pytest.mark.parametrize(
    "args", [["monitor", "iris"], ["deploy", "status"], ["deploy", "reload"]]
)
def test_an_unreachable_process_names_the_url_its_source_and_how_to_point_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TETHER_SERVE_URL", raising=False)
    port = free_port()
    (tmp_path / "prod.yaml").write_text(DEPLOYMENT % port)
    result = CliRunner().invoke(cli, [*args, "--file", "prod.yaml", "--json"])
    assert result.exit_code != 0
    error = json.loads(result.output)
    assert f"http://127.0.0.1:{port}" in error["message"]
    assert "server section of prod.yaml" in error["message"]
    assert "--url" in error["hint"] and "TETHER_SERVE_URL" in error["hint"]
