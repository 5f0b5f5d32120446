"""Lineage without `data=`: datasets read in a process are linked to the models it logs.

Reading a file of a dataset version (``tether.open_dataset``, ``tether://`` paths,
``Registry.open_dataset``) or naming it with ``tether.use_dataset`` notes it; every
later ``log_model`` of the process links it; ``tether lineage`` shows both
directions; ``tether reproduce -o`` fetches the data. Embedded and through a real
server, including a server that lies and readers scoped to one model.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import tether
from tether import AmbiguousReference, Conflict, NotFound, Registry, UnrecordedReadWarning
from tether._registry import reads
from tether.cli import cli

from .conftest import fit_logreg
from .servers import Server, start_server, stop


@pytest.fixture
def data(tmp_path: Path) -> Path:
    folder = tmp_path / "events"
    folder.mkdir()
    (folder / "events.csv").write_text("amount,label\n" + "".join(
        f"{i % 97}.5,{i % 2}\n" for i in range(2_000)))
    (folder / "notes.txt").write_text("collected in november\n")
    return folder


def _read(ref: str, where: Path | str) -> bytes:
    with tether.open_dataset(ref, "events.csv", registry=where) as handle:
        return bytes(handle.read(10))


def test_a_dataset_read_before_logging_is_linked_once(
    registry: Registry, data: Path, iris: tuple[Any, Any]
) -> None:
    where = registry.location.root
    first = registry.add_dataset(data, "events")
    assert _read("events@1", where) == b"amount,lab"
    model = registry.log_model(fit_logreg(iris), "churn", progress=False)  # no data=
    entry = model.data["events"]
    assert (entry["dataset"], entry["digest"], entry["via"]) == ("events", first.digest, "read")
    used = registry.get_dataset("events@1").used_by
    assert [(u["ref"], u["role"]) for u in used] == [("churn@1.0.0", "events")]
    # A notebook cell run again (the same model, nothing read since) is the same version:
    # a read cleared by the first log made it a new version without lineage.
    again = registry.log_model(fit_logreg(iris), "churn", progress=False)
    assert again.digest == model.digest and again.semver == "1.0.0"
    # Another model trained later in the process may have used the data too: linked.
    other = registry.log_model(fit_logreg(iris, C=0.5), "fraud", progress=False)
    assert other.data["events"]["digest"] == first.digest


def test_reads_beside_declared_data_are_added_not_doubled(
    registry: Registry, data: Path, iris: tuple[Any, Any], tmp_path: Path
) -> None:
    where = registry.location.root
    registry.add_dataset(data, "events")
    (data / "events.csv").write_text("amount,label\n1.5,1\n")
    second = registry.add_dataset(data, "events")
    _read("events@1", where)
    _read("events@2", where)
    model = registry.log_model(fit_logreg(iris), "churn", data={"events": "events@1"},
                               progress=False)
    assert model.data["events"]["seq"] == 1 and "via" not in model.data["events"]  # declared
    assert model.data["events@1.1.0"]["digest"] == second.digest  # read, named apart
    assert model.data["events@1.1.0"]["via"] == "read" and len(model.data) == 2


def test_tether_urls_and_use_dataset_are_noted_too(
    registry: Registry, data: Path, iris: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    pd = pytest.importorskip("pandas")
    where = str(registry.location.root)
    registry.add_dataset(data, "events")
    (data / "events.csv").write_text("amount,label\n1.5,1\n")
    registry.add_dataset(data, "events")
    registry.promote_dataset("events@2", "production")
    frame = pd.read_csv("tether://events@production/events.csv",
                        storage_options={"registry": where})
    assert frame.shape == (1, 2)
    chosen = tether.use_dataset("events@1", registry=where)  # reached the code another way
    model = registry.log_model(fit_logreg(iris), "churn", progress=False)
    assert model.data["events"]["seq"] == 2 and model.data["events"]["via"] == "read"
    assert model.data["events@1.0.0"]["digest"] == chosen.digest
    assert model.data["events@1.0.0"]["via"] == "use_dataset"


def test_record_reads_false_and_the_switch_leave_reads_alone(
    registry: Registry, data: Path, iris: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    where = registry.location.root
    registry.add_dataset(data, "events")
    _read("events@1", where)
    kept = registry.log_model(fit_logreg(iris), "churn", progress=False, record_reads=False)
    assert kept.data == {} and [r.ref for r in reads.noted()] == ["events@1.0.0"]
    tether.forget_reads()
    monkeypatch.setenv("TETHER_RECORD_READS", "off")
    _read("events@1", where)
    assert reads.noted() == []


def test_a_refused_commit_or_a_log_elsewhere_loses_no_read(
    registry: Registry, data: Path, iris: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    registry.add_dataset(data, "events")
    _read("events@1", registry.location.root)

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise Conflict("another writer won")

    with monkeypatch.context() as patch:
        patch.setattr(registry, "commit", refuse)
        with pytest.raises(Conflict):
            registry.log_model(fit_logreg(iris), "churn", progress=False)
    scratch = tether.init(tmp_path / "scratch" / ".tether")  # a quick log somewhere else
    try:
        with pytest.warns(UnrecordedReadWarning):
            assert scratch.log_model(fit_logreg(iris), "churn", progress=False).data == {}
    finally:
        scratch.close()
    model = registry.log_model(fit_logreg(iris), "churn", progress=False)
    assert model.data["events"]["via"] == "read"


def test_a_read_from_another_registry_is_not_linked_and_says_so(
    registry: Registry, data: Path, iris: tuple[Any, Any], tmp_path: Path
) -> None:
    other = tether.init(tmp_path / "other" / ".tether")
    try:
        other.add_dataset(data, "events")
    finally:
        other.close()
    _read("events@1", tmp_path / "other" / ".tether")
    with pytest.warns(UnrecordedReadWarning, match="does not hold it"):
        model = registry.log_model(fit_logreg(iris), "churn", progress=False)
    assert model.data == {}
    with warnings.catch_warnings():  # warned once, not on every log
        warnings.simplefilter("error")
        registry.log_model(fit_logreg(iris, C=0.5), "churn", progress=False)


def _cli(where: Path | str, *args: str, token: str | None = None) -> Any:
    env = {"TETHER_URI": str(where), **({"TETHER_TOKEN": token} if token else {})}
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def test_lineage_shows_both_directions(
    registry: Registry, data: Path, iris: tuple[Any, Any]
) -> None:
    where = registry.location.root
    registry.add_dataset(data, "events")
    _read("events@1", where)
    first = registry.log_model(fit_logreg(iris), "churn", data={"holdout": str(data / "notes.txt")},
                               progress=False)
    tether.use_dataset("events@1", registry=where)
    registry.log_model(fit_logreg(iris), "fraud", progress=False)

    shown = _cli(where, "lineage", first.ref)
    assert shown.exit_code == 0, shown.output
    assert "events@1.0.0" in shown.output and "fraud@1.0.0" in shown.output  # also used by
    assert "digest only" in shown.output and "notes.txt" in shown.output
    graph = json.loads(_cli(where, "lineage", first.ref, "--json").output)
    by_role = {item["role"]: item for item in graph["data"]}
    assert by_role["events"]["via"] == "read" and by_role["events"]["status"] == "ready"
    assert [u["ref"] for u in by_role["events"]["also_used_by"]] == ["fraud@1.0.0"]
    assert by_role["holdout"]["kind"] == "digest"

    back = json.loads(_cli(where, "lineage", "events@1", "--json").output)
    assert back["kind"] == "dataset"
    assert sorted(u["ref"] for u in back["used_by"]) == ["churn@1.0.0", "fraud@1.0.0"]
    missing = _cli(where, "lineage", "nothing@1")
    assert missing.exit_code == 1 and "not a model version or a dataset version" in missing.output


def test_lineage_asks_which_when_a_name_is_both(
    registry: Registry, data: Path, iris: tuple[Any, Any]
) -> None:
    registry.add_dataset(data, "churn")
    registry.log_model(fit_logreg(iris), "churn", progress=False)
    from tether._registry.data_lineage import lineage

    with pytest.raises(AmbiguousReference, match="--model or --dataset"):
        lineage(registry, "churn@1")
    assert lineage(registry, "churn@1", "dataset")["kind"] == "dataset"
    assert lineage(registry, "churn@1", "model")["kind"] == "model"
    with pytest.raises(NotFound):
        lineage(registry, "churn@9", "model")


def test_reproduce_fetches_the_data_and_data_download_writes_a_version(
    registry: Registry, data: Path, iris: tuple[Any, Any], tmp_path: Path
) -> None:
    where = registry.location.root
    registry.add_dataset(data, "events")
    _read("events@1", where)
    model = registry.log_model(fit_logreg(iris), "churn", progress=False)

    out = tmp_path / "rebuild"
    done = _cli(where, "reproduce", model.ref, "-o", str(out), "--json")
    assert done.exit_code == 0, done.output
    fetched = out / "data" / "events" / "events.csv"
    assert fetched.read_bytes() == (data / "events.csv").read_bytes()
    assert "tether data download events@sha:" in (out / "REPRODUCE.md").read_text()
    bare = _cli(where, "reproduce", model.ref, "-o", str(tmp_path / "bare"), "--no-data")
    assert bare.exit_code == 0 and not (tmp_path / "bare" / "data").exists()
    again = _cli(where, "reproduce", model.ref, "-o", str(out))  # data/events is there already
    assert again.exit_code == 1 and "could not fetch data 'events'" in again.output

    copy = tmp_path / "copy"
    got = _cli(where, "data", "download", "events@1", str(copy))
    assert got.exit_code == 0, got.output
    assert sorted(p.name for p in copy.iterdir()) == ["events.csv", "notes.txt"]
    refused = _cli(where, "data", "download", "events@1", str(copy))
    assert refused.exit_code == 1 and "already exists" in refused.output


def test_a_role_cannot_write_outside_the_reproduce_folder(
    registry: Registry, data: Path, iris: tuple[Any, Any], tmp_path: Path
) -> None:
    """Roles are whatever data= was keyed by: "../../x" must stay under DIR/data."""
    where = registry.location.root
    registry.add_dataset(data, "events")
    model = registry.log_model(fit_logreg(iris), "churn", data={"../../escape": "events@1"},
                               progress=False)
    out = tmp_path / "deep" / "rebuild"
    assert _cli(where, "reproduce", model.ref, "-o", str(out)).exit_code == 0
    assert not (tmp_path / "escape").exists() and not (tmp_path / "deep" / "escape").exists()
    [made] = [p.name for p in (out / "data").iterdir()]
    assert made.startswith("_.._escape-")


def test_roles_that_look_alike_or_are_long_get_folders_of_their_own(
    registry: Registry, data: Path, iris: tuple[Any, Any], tmp_path: Path
) -> None:
    """train/eu and train_eu both became data/train_eu: the second fetch failed."""
    from tether._registry.reproduce import data_folder

    where = registry.location.root
    registry.add_dataset(data, "events")
    roles = {"train/eu": "events@1", "train_eu": "events@1", "x" * 300: "events@1"}
    model = registry.log_model(fit_logreg(iris), "churn", data=roles, progress=False)
    assert len({data_folder(role) for role in roles}) == 3
    assert all(len(data_folder(role)) < 100 for role in roles)
    out = tmp_path / "rebuild"
    done = _cli(where, "reproduce", model.ref, "-o", str(out))
    assert done.exit_code == 0, done.output
    assert len(list((out / "data").iterdir())) == 3


def test_errors_of_the_file_system_are_messages_not_tracebacks(
    registry: Registry, data: Path, tmp_path: Path
) -> None:
    registry.add_dataset(data, "events")
    (tmp_path / "afile").write_text("x")
    got = _cli(registry.location.root, "data", "download", "events@1",
               str(tmp_path / "afile" / "sub"))
    assert got.exit_code == 1 and "error:" in got.output and "Traceback" not in got.output


def test_a_table_cell_is_never_read_as_markup(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a terminal a role or tag holding "[/bold]" raised rich's MarkupError."""
    from rich.console import Console

    from tether.cli import _common

    out = Console(force_terminal=True, width=120, record=True)
    monkeypatch.setattr(_common, "console", out)  # table() draws a rich table on a terminal
    out.print(_common.table(["AS", "DATA"], [("[/bold]", "[red]x[/red]")]))
    shown = out.export_text()
    assert "[/bold]" in shown and "[red]x[/red]" in shown


def test_lineage_lists_another_model_with_the_same_digest(
    registry: Registry, data: Path, iris: tuple[Any, Any]
) -> None:
    """also_used_by left out every model whose digest equalled this one's."""
    registry.add_dataset(data, "events")
    model = fit_logreg(iris)
    first = registry.log_model(model, "churn", data={"train": "events@1"}, progress=False)
    shadow = registry.log_model(model, "churn-shadow", data={"train": "events@1"},
                                progress=False)
    assert shadow.digest == first.digest
    from tether._registry.data_lineage import lineage

    [item] = lineage(registry, first.ref)["data"]
    assert [u["ref"] for u in item["also_used_by"]] == ["churn-shadow@1.0.0"]


# -- through a server --------------------------------------------------------------------


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Server]:
    running = start_server(f"sqlite:///{tmp_path / 'meta.db'}", f"file://{tmp_path / 'objects'}",
                           tmp_path)
    try:
        yield running
    finally:
        stop(running)


def test_lineage_through_a_server(
    served: Server, data: Path, iris: tuple[Any, Any], tmp_path: Path
) -> None:
    client = served.client()
    client.add_dataset(data, "events")
    # data= naming a dataset failed through a server: the client had no read().
    declared = client.log_model(fit_logreg(iris), "churn", data={"train": "events@1"})
    assert declared.data["train"]["dataset"] == "events"
    with client.open_dataset("events@1", "events.csv") as handle:
        handle.read(5)
    model = client.log_model(fit_logreg(iris, C=0.3), "churn")
    assert model.data["events"]["via"] == "read"
    assert sorted(u["ref"] for u in client.get_dataset("events@1").used_by) == [
        "churn@1.0.0", "churn@1.1.0"]

    token = served.admin_token
    graph = json.loads(_cli(served.url, "lineage", model.ref, "--json", token=token).output)
    assert [item["role"] for item in graph["data"]] == ["events"]
    out = tmp_path / "rebuild"
    done = _cli(served.url, "reproduce", model.ref, "-o", str(out), token=token)
    assert done.exit_code == 0, done.output
    fetched = out / "data" / "events" / "events.csv"
    assert fetched.read_bytes() == (data / "events.csv").read_bytes()


def test_a_server_answering_another_version_is_refused(
    served: Server, data: Path, tmp_path: Path
) -> None:
    """Every version a server holds is intact on its own, so a server answering events@2
    when asked for events@sha:<v1> passed the manifest check: reproduce wrote v2's bytes
    and said "every byte verified". The client now checks the answer is what it asked."""
    from tether import IntegrityError

    client = served.client()
    first = client.add_dataset(data, "events")
    (data / "events.csv").write_text("amount,label\n3.5,0\n")
    client.add_dataset(data, "events")
    honest = client._request

    def lying(method: str, path: str, **kwargs: Any) -> Any:
        return honest(method, path.replace(f"sha%3A{first.digest}", "2"), **kwargs)

    client._request = lying  # type: ignore[method-assign]
    with pytest.raises(IntegrityError, match=r"it answered events@1\.1\.0"):
        client.get_dataset(f"events@sha:{first.digest}")
    with pytest.raises(IntegrityError):
        client.download_dataset(f"events@sha:{first.digest}", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert client.get_dataset("events@2").seq == 2  # what was asked for passes


def test_readers_scoped_to_one_name_see_no_more_than_they_may(
    served: Server, data: Path, iris: tuple[Any, Any]
) -> None:
    admin = served.client()
    admin.add_dataset(data, "events")
    admin.log_model(fit_logreg(iris), "churn", data={"train": "events@1"})
    admin.log_model(fit_logreg(iris, C=0.2), "secret", data={"train": "events@1"})
    rita = admin.create_token("rita", role="reader", model="churn")["token"]
    dan = admin.create_token("dan", role="reader", model="events")["token"]

    # A reader of churn only: the model's lineage says "no access" for the dataset.
    graph = json.loads(_cli(served.url, "lineage", "churn@1", "--json", token=rita).output)
    assert [(i["role"], i["status"]) for i in graph["data"]] == [("train", "no access")]
    # A reader of the dataset only is not told which models it fed.
    assert served.client(dan).get_dataset("events@1").used_by == ()
    assert sorted(u["ref"] for u in admin.get_dataset("events@1").used_by) == [
        "churn@1.0.0", "secret@1.0.0"]
