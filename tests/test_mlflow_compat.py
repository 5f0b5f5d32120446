"""The unmodified MLflow client against `mlflow server` and `tether server`, side by side.

Each test runs the same client calls against a real `mlflow server` (mlflow-skinny's,
on SQLite; Flask, SQLAlchemy and Alembic come with Tether's own dependencies) and a
real `tether server`, and compares what the client got: values, or error codes.
Where Tether refuses on purpose (stages, renames, names it does not allow,
deleting an aliased version), the test says so and checks that the refusal says
what is allowed.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tether.server.mlflow_filter import MODELS, VERSIONS, MlflowError, check, parse_filter

from .conftest import free_port, subprocess_env
from .servers import start_server, stop

mlflow = pytest.importorskip("mlflow")
MlflowException = mlflow.exceptions.MlflowException

_names = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{next(_names)}"


def _mlflow_exe() -> str:
    here = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "mlflow"
    return str(here) if here.exists() else (shutil.which("mlflow") or "mlflow")


@pytest.fixture(scope="module")
def clients(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """{"mlflow": client of `mlflow server`, "tether": client of `tether server`}."""
    tmp = tmp_path_factory.mktemp("compat")
    tether_server = start_server(f"sqlite:///{tmp / 'tether.db'}", f"file://{tmp / 'objects'}", tmp)
    port = free_port()
    log = open(tmp / "mlflow.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [
            _mlflow_exe(),
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp / 'mlflow.db'}",
            "--default-artifact-root",
            str(tmp / "mlruns"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=subprocess_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),
        cwd=tmp,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.3)
        if proc.poll() is not None:
            break
    else:
        proc.kill()
    if proc.poll() is not None:
        stop(tether_server)
        pytest.fail("mlflow server did not start:\n" + (tmp / "mlflow.log").read_text()[-3000:])
    os.environ["MLFLOW_TRACKING_TOKEN"] = tether_server.admin_token  # mlflow server ignores it
    try:
        yield {
            "mlflow": mlflow.MlflowClient(tracking_uri=url, registry_uri=url),
            "tether": mlflow.MlflowClient(
                tracking_uri=tether_server.url, registry_uri=tether_server.url
            ),
        }
    finally:
        os.environ.pop("MLFLOW_TRACKING_TOKEN", None)
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        stop(tether_server)


def outcome(call: Callable[[], Any]) -> Any:
    """What the client got: the value, or ("error", code, message)."""
    try:
        return call()
    except MlflowException as error:
        return ("error", error.error_code, error.message)


def both(clients: dict[str, Any], calls: Callable[[Any], Any]) -> tuple[Any, Any]:
    """``calls(client)`` against MLflow, then Tether; (MLflow's outcome, Tether's)."""
    mine, theirs = (outcome(lambda c=c: calls(c)) for c in (clients["mlflow"], clients["tether"]))
    return mine, theirs


def same(clients: dict[str, Any], calls: Callable[[Any], Any]) -> Any:
    """The outcome, the same on both servers (errors compared by code)."""
    theirs, ours = both(clients, calls)
    if isinstance(theirs, tuple) and theirs[:1] == ("error",):
        assert isinstance(ours, tuple) and ours[:2] == theirs[:2], (theirs, ours)
    else:
        assert ours == theirs
    return ours


def versions(found: Any) -> list[str]:
    return [v.version for v in found]


def model_with_versions(client: Any, name: str, count: int, **tags: str) -> None:
    client.create_registered_model(name, tags=tags or None)
    for i in range(count):
        client.create_model_version(name, f"s3://bucket/{name}/{i}", run_id=f"r{i}")


# -- numbering, aliases, latest versions -------------------------------------------------


def test_deleting_the_newest_version_never_reuses_its_number(clients: dict[str, Any]) -> None:
    name = unique("renumber")

    def calls(c: Any) -> Any:
        model_with_versions(c, name, 3)
        c.delete_model_version(name, "3")
        after = c.create_model_version(name, f"s3://bucket/{name}/x").version
        c.delete_model_version(name, after)
        return [after, c.create_model_version(name, f"s3://bucket/{name}/y").version]

    assert same(clients, calls) == ["4", "5"]


def test_registered_model_aliases_name_their_version(clients: dict[str, Any]) -> None:
    name = unique("aliases")

    def calls(c: Any) -> Any:
        model_with_versions(c, name, 2)
        c.set_registered_model_alias(name, "champion", "1")
        c.set_registered_model_alias(name, "challenger", "2")
        found = c.search_registered_models(f"name = '{name}'")
        return c.get_registered_model(name).aliases, [m.aliases for m in found]

    aliases = {"champion": "1", "challenger": "2"}
    assert same(clients, calls) == (aliases, [aliases])


@pytest.mark.parametrize(
    ("stages", "expected"),
    [
        (None, ["2"]),
        (["None"], ["2"]),
        (["none"], ["2"]),
        (["Production"], []),
        (["Staging", "Archived"], []),
    ],
)
def test_latest_versions_by_stage(
    clients: dict[str, Any], stages: list[str] | None, expected: list[str]
) -> None:
    name = unique("latest")

    def calls(c: Any) -> Any:
        model_with_versions(c, name, 2)
        return versions(c.get_latest_versions(name, stages=stages))

    assert same(clients, calls) == expected


def test_latest_versions_refuses_an_unknown_stage(clients: dict[str, Any]) -> None:
    name = unique("stage")
    refusal = same(
        clients, lambda c: (c.create_registered_model(name), c.get_latest_versions(name, ["Gold"]))
    )
    assert refusal[1] == "INVALID_PARAMETER_VALUE" and "None, Staging" in refusal[2]


# -- the filter language ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("clause", "expected"),
    [
        ("version_number > 3", ["5", "4"]),
        ("version_number >= 4", ["5", "4"]),
        ("version_number <= 2", ["2", "1"]),
        ("version_number < 2", ["1"]),
        ("version_number != 3", ["5", "4", "2", "1"]),
        ("version_number = '2'", ["2"]),
        ("run_id IN ('r1', 'r3')", ["4", "2"]),
        ("run_id NOT IN ('r0')", ["5", "4", "3", "2"]),
        ("source_path LIKE '%/3'", ["4"]),
    ],
)
def test_version_filters(clients: dict[str, Any], clause: str, expected: list[str]) -> None:
    name = unique("filter")

    def calls(c: Any) -> Any:
        model_with_versions(c, name, 5)
        return versions(c.search_model_versions(f"name = '{name}' AND {clause}"))

    assert same(clients, calls) == expected


@pytest.mark.parametrize(
    "clause",
    [
        "version_number IN (1, 2)",
        "source_path IN ('x')",
        "tags.a IN ('x')",
        "version_number LIKE '1'",
        "name > 'a'",
        "version_number > 'a'",
        "tags.a = 3",
        "stage = 'None'",
    ],
)
def test_version_filters_mlflow_refuses(clients: dict[str, Any], clause: str) -> None:
    refusal = same(clients, lambda c: c.search_model_versions(f"name = 'x' AND {clause}"))
    assert refusal[:2] == ("error", "INVALID_PARAMETER_VALUE")


@pytest.mark.parametrize(
    "text", ["name = '{n}' AND", "AND name = '{n}'", "name = '{n}' AND AND run_id = 'r0'"]
)
def test_filters_with_spare_ands_are_answered(clients: dict[str, Any], text: str) -> None:
    name = unique("ands")

    def calls(c: Any) -> Any:
        model_with_versions(c, name, 1)
        found = c.search_registered_models(text.format(n=name).replace("run_id", "tags.x"))
        return versions(c.search_model_versions(text.format(n=name))), len(found)

    assert same(clients, calls)[0] == ["1"]


def test_tag_inequality_never_matches_an_untagged_model(clients: dict[str, Any]) -> None:
    name = unique("untagged")

    def calls(c: Any) -> Any:
        c.create_registered_model(name + "-a", tags={"team": "a"})
        c.create_registered_model(name + "-b", tags={"team": "b"})
        c.create_registered_model(name + "-none")
        c.create_model_version(name + "-a", "s3://bucket/a/1")
        c.create_model_version(name + "-none", "s3://bucket/none/1")
        models = c.search_registered_models(f"name LIKE '{name}%' AND tags.team != 'b'")
        found = c.search_model_versions(f"name LIKE '{name}%' AND tags.k != 'v'")
        return [m.name for m in models], versions(found)

    assert same(clients, calls) == ([name + "-a"], [])


def test_filter_parser_refuses_clearly_and_checks_per_search() -> None:
    with pytest.raises(MlflowError, match="expected AND"):
        parse_filter("name = 'a' x")
    assert parse_filter(" AND name = 'a' AND AND version_number>=3 AND ") == [
        ("name", "=", "a"),
        ("version_number", ">=", 3),
    ]
    assert check(parse_filter("version_number = '7'"), VERSIONS) == [("version_number", "=", 7)]
    with pytest.raises(MlflowError, match="Valid keys are 'name' and tags"):
        check(parse_filter("run_id = 'r'"), MODELS)
    with pytest.raises(MlflowError, match=r"Only \['name', 'run_id'\]"):
        check(parse_filter("version_number IN (1)"), VERSIONS)
    # A number of thousands of digits was a 500 (past Python's int limit); one a float
    # rounds to a whole number matched that version (reviews).
    with pytest.raises(MlflowError, match="a quoted string, a number"):
        parse_filter("version_number = " + "9" * 5000)
    with pytest.raises(MlflowError, match="expected an integer"):
        check(parse_filter("version_number = 1.99999999999999999999"), VERSIONS)
    assert check(parse_filter("version_number = 2.000"), VERSIONS) == [("version_number", "=", 2)]
    # An IN list is a set: a 16 KB filter holds thousands of values, and a list was
    # walked once for every version searched (not counted by the search's budget).
    many = ",".join(f"'{i}'" for i in range(2000))
    [(_key, _op, values)] = check(parse_filter(f"run_id IN ({many})"), VERSIONS)
    assert isinstance(values, frozenset) and len(values) == 2000 and "1999" in values


def test_a_name_repeated_in_a_filter_lists_each_version_once(clients: dict[str, Any]) -> None:
    """Each repeat fetched and listed the model's versions again (a review: 960 repeats,
    86 s and 50 MB of JSON for one request); MLflow lists each version once."""
    name = unique("repeat")

    def calls(c: Any) -> Any:
        model_with_versions(c, name, 2)
        return versions(c.search_model_versions(" AND ".join([f"name = '{name}'"] * 50)))

    assert same(clients, calls) == ["2", "1"]


# -- order, paging, limits -------------------------------------------------------------


def test_version_search_default_order_is_last_updated_first(clients: dict[str, Any]) -> None:
    name = unique("order")

    def calls(c: Any) -> Any:
        model_with_versions(c, name, 3)
        time.sleep(0.02)
        c.update_model_version(name, "1", description="touched")
        found = versions(c.search_model_versions(f"name = '{name}'"))
        by_number = versions(c.search_model_versions(f"name = '{name}'", order_by=["name"]))
        oldest = c.search_model_versions(
            f"name = '{name}'", order_by=["last_updated_timestamp ASC"]
        )
        return found, by_number, versions(oldest)

    assert same(clients, calls) == (["1", "3", "2"], ["3", "2", "1"], ["2", "3", "1"])


def test_update_touches_a_version_and_a_model_tag_touches_nothing(
    clients: dict[str, Any],
) -> None:
    name = unique("touch")

    def calls(c: Any) -> Any:
        model_with_versions(c, name, 1)
        v_before = c.get_model_version(name, "1").last_updated_timestamp
        m_before = c.get_registered_model(name).last_updated_timestamp
        time.sleep(0.02)
        c.set_registered_model_tag(name, "k", "v")
        c.set_model_version_tag(name, "1", "k", "v")
        c.set_registered_model_alias(name, "champion", "1")
        untouched = (
            c.get_model_version(name, "1").last_updated_timestamp == v_before,
            c.get_registered_model(name).last_updated_timestamp == m_before,
        )
        time.sleep(0.02)
        c.update_model_version(name, "1", description="new")
        v_after = c.get_model_version(name, "1").last_updated_timestamp
        time.sleep(0.02)
        c.update_registered_model(name, description="new")
        m_after = c.get_registered_model(name).last_updated_timestamp
        time.sleep(0.02)
        c.create_model_version(name, f"s3://bucket/{name}/2")
        m_created = c.get_registered_model(name).last_updated_timestamp
        return untouched, v_after > v_before, m_after > m_before, m_created > m_after

    assert same(clients, calls) == ((True, True), True, True, True)


@pytest.mark.parametrize(
    ("search", "max_results"),
    [("models", 1001), ("models", 0), ("versions", 0), ("versions", 200_001), ("models", 1000)],
)
def test_max_results_bounds(clients: dict[str, Any], search: str, max_results: int) -> None:
    def calls(c: Any) -> Any:
        if search == "models":
            return len(c.search_registered_models(max_results=max_results)) >= 0
        return len(c.search_model_versions(max_results=max_results)) >= 0

    same(clients, calls)


@pytest.mark.parametrize(
    ("search", "order_by"),
    [
        ("models", "foo"),
        ("models", "name sideways"),
        ("models", "name ASC extra"),
        ("models", "creation_timestamp"),
        ("versions", "run_id"),
        ("versions", "timestamp"),
        ("models", "timestamp DESC"),
        ("versions", "creation_timestamp DESC"),
    ],
)
def test_order_by_validation(clients: dict[str, Any], search: str, order_by: str) -> None:
    name = unique("orderby")

    def calls(c: Any) -> Any:
        model_with_versions(c, name, 2)
        if search == "models":
            return [
                m.name for m in c.search_registered_models(f"name = '{name}'", order_by=[order_by])
            ]
        return versions(c.search_model_versions(f"name = '{name}'", order_by=[order_by]))

    same(clients, calls)


def test_duplicate_order_by_is_refused_by_tether(clients: dict[str, Any]) -> None:
    # MLflow's server answers 500 here; Tether says what is wrong.
    with pytest.raises(MlflowException, match="duplicate") as info:
        clients["tether"].search_registered_models(order_by=["name", "name DESC"])
    assert info.value.error_code == "INVALID_PARAMETER_VALUE"


@pytest.mark.parametrize(
    ("what", "key", "value"),
    [
        ("model", "k" * 251, "v"),
        ("model", "k" * 250, "v"),
        ("model", "k", "v" * 100_001),
        ("version", "k" * 251, "v"),
        ("version", "k", "v" * 100_001),
        ("version", "k", "v" * 100_000),
    ],
)
def test_tag_limits(clients: dict[str, Any], what: str, key: str, value: str) -> None:
    name = unique("limits")

    def calls(c: Any) -> Any:
        model_with_versions(c, name, 1)
        if what == "model":
            c.set_registered_model_tag(name, key, value)
            return len(c.get_registered_model(name).tags[key])
        c.set_model_version_tag(name, "1", key, value)
        return len(c.get_model_version(name, "1").tags[key])

    same(clients, calls)


def test_tag_limits_on_create(clients: dict[str, Any]) -> None:
    name = unique("create-limits")
    same(clients, lambda c: c.create_registered_model(name, tags={"k" * 251: "v"}))


# -- missing things ------------------------------------------------------------------------


def test_deleting_a_missing_tag_or_alias_is_silent(clients: dict[str, Any]) -> None:
    name = unique("silent")

    def calls(c: Any) -> Any:
        model_with_versions(c, name, 1)
        c.delete_registered_model_tag(name, "nope")
        c.delete_model_version_tag(name, "1", "nope")
        c.delete_registered_model_alias(name, "nope")
        return outcome(lambda: c.delete_registered_model_alias(name + "-missing", "nope"))[:2]

    assert same(clients, calls) == ("error", "RESOURCE_DOES_NOT_EXIST")


@pytest.mark.parametrize("version", ["0", "-1", "99", "abc"])
def test_versions_that_do_not_exist(clients: dict[str, Any], version: str) -> None:
    name = unique("missing")

    def calls(c: Any) -> Any:
        model_with_versions(c, name, 1)
        return c.get_model_version(name, version)

    code = "INVALID_PARAMETER_VALUE" if version == "abc" else "RESOURCE_DOES_NOT_EXIST"
    assert same(clients, calls)[:2] == ("error", code)


@pytest.mark.parametrize("alias", ["nope", "latest", "LATEST", "1"])
def test_alias_of_a_missing_model_or_missing_alias(clients: dict[str, Any], alias: str) -> None:
    name = unique("alias-missing")
    missing = same(clients, lambda c: c.get_model_version_by_alias(name, alias))
    assert missing[:2] == ("error", "RESOURCE_DOES_NOT_EXIST")
    same(
        clients,
        lambda c: (c.create_registered_model(name), c.get_model_version_by_alias(name, alias)),
    )

    def calls(c: Any) -> Any:
        model_with_versions(c, name + "-v", 2)
        return c.get_model_version_by_alias(name + "-v", alias).version

    answer = same(clients, calls)
    if alias.lower() == "latest":  # MLflow resolves it to the newest version
        assert answer == "2"
    else:
        assert answer[:2] == ("error", "INVALID_PARAMETER_VALUE")


@pytest.mark.parametrize("alias", ["v1", "V22", "latest", "LATEST", "v", "v1a", "version"])
def test_reserved_alias_names(clients: dict[str, Any], alias: str) -> None:
    name = unique("reserved")

    def calls(c: Any) -> Any:
        model_with_versions(c, name, 1)
        c.set_registered_model_alias(name, alias, "1")
        return c.get_model_version_by_alias(name, alias).version

    result = same(clients, calls)
    if isinstance(result, tuple):
        assert "except 'latest' and v<number>" in result[2]


def test_copied_version_download_uri_is_resolved(clients: dict[str, Any]) -> None:
    name = unique("copy")

    def calls(c: Any) -> Any:
        model_with_versions(c, name, 1)
        c.set_registered_model_alias(name, "champion", "1")
        c.create_registered_model(name + "-copy")
        by_number = c.copy_model_version(f"models:/{name}/1", name + "-copy")
        by_alias = c.create_model_version(name + "-copy", f"models:/{name}@champion")
        return (
            by_number.source,
            c.get_model_version_download_uri(name + "-copy", by_number.version),
            c.get_model_version_download_uri(name + "-copy", by_alias.version),
            outcome(lambda: c.create_model_version(name + "-copy", f"models:/{name}@nope"))[:2],
        )

    source = f"s3://bucket/{name}/0"
    assert same(clients, calls) == (
        f"models:/{name}/1",
        source,
        source,
        ("error", "INVALID_PARAMETER_VALUE"),
    )


# -- deliberate refusals: each says what Tether allows -------------------------------------


def _refused(call: Callable[[], Any]) -> str:
    with pytest.raises(MlflowException) as info:
        call()
    return str(info.value.message)


def test_deliberate_refusals_say_what_is_allowed(clients: dict[str, Any]) -> None:
    tether = clients["tether"]
    name = unique("refusals")
    model_with_versions(tether, name, 2)
    tether.set_registered_model_alias(name, "champion", "1")
    assert "set_registered_model_alias" in _refused(
        lambda: tether.transition_model_version_stage(name, "1", "Production")
    )
    assert "copy_model_version" in _refused(
        lambda: tether.rename_registered_model(name, name + "-new")
    )
    assert "use letters, digits" in _refused(lambda: tether.create_registered_model("a b"))
    refusal = _refused(lambda: tether.delete_model_version(name, "1"))
    assert "champion" in refusal and "delete_registered_model_alias" in refusal
    assert tether.get_model_version(name, "1").aliases == ["champion"]
