"""`tether lineage REF`: the data a model version used, or the models a dataset version fed."""

from __future__ import annotations

from typing import Any

import click

from ._common import console, emit_json, handle_errors, json_option, registry_from, table

#: Other models named per dataset before "and N more".
_SHOWN_USERS = 3


@click.command()
@click.argument("ref")
@click.option("--model", "kind", flag_value="model", help="REF is a model version.")
@click.option("--dataset", "kind", flag_value="dataset", help="REF is a dataset version.")
@json_option
@click.pass_context
@handle_errors
def lineage(ctx: click.Context, ref: str, kind: str | None, as_json: bool) -> None:
    """The lineage of REF: the data a model version used, or the models a dataset fed.

    Both directions. For a model version: each input it recorded (dataset versions, with how they
    were recorded, their status now, and the other models trained on them; and
    digests of data Tether does not hold). For a dataset version: the model
    versions trained on it. A name that is both a model and a dataset needs
    --model or --dataset.
    """
    from .._registry.data_lineage import lineage as lineage_of

    graph = lineage_of(registry_from(ctx), ref, kind)
    if as_json:
        emit_json(graph)
        return
    head = f"{graph['ref']}  {graph['digest'][:16]}  status={graph['status']}"
    if graph["kind"] == "dataset":
        console.print(f"dataset {head}", markup=False)
        users = graph["used_by"]
        if users:
            console.print(table(["MODEL VERSION", "AS", "DIGEST", "STATUS"],
                                [(u["ref"], u["role"], u["digest"][:16], u["status"])
                                 for u in users], title="models trained on it"))
        else:
            console.print("models trained on it: none recorded")
        return
    console.print(f"model {head}", markup=False)
    if not graph["data"]:
        console.print("data: none recorded (log with data=..., or read datasets through "
                      "tether.open_dataset before logging)")
        return
    console.print(table(["AS", "DATA", "DIGEST", "RECORDED", "STATUS", "ALSO USED BY"],
                        [_row(item) for item in graph["data"]], title="trained on"))


def _row(item: dict[str, Any]) -> tuple[str, ...]:
    digest = str(item.get("digest") or "")
    short = (digest if digest.startswith("sha:") else f"sha:{digest}")[:16]
    if item["kind"] == "digest":
        return (item["role"], str(item["what"]), short, "digest only", "-", "-")
    users = [u["ref"] for u in item.get("also_used_by", [])]
    shown = ", ".join(users[:_SHOWN_USERS]) + (
        f" and {len(users) - _SHOWN_USERS} more" if len(users) > _SHOWN_USERS else "")
    return (item["role"], str(item["ref"]), short, str(item["via"]), str(item["status"]),
            shown or "-")
