"""The ``tether`` command: a thin shell over the registry use cases."""

from __future__ import annotations

import click

from .. import __version__
from ._common import State
from .aliases import alias_group, promote, rollback
from .audit import audit_group
from .demo import demo
from .env import env_group
from .governance import approve, bundle_group, key_group, policy_group, role_group, sign
from .inspect import diff, models, show, versions
from .k8s import image_group, k8s_group
from .manage import config_group, db_group, deprecate, download, init, verify
from .pinning import check, lock_group, reproduce
from .server import server, server_init, token_group
from .serving import deploy_group, monitor, serve
from .storage import cache_group, gc, store_group


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--registry",
    "-r",
    "registry_uri",
    metavar="PATH",
    envvar="TETHER_URI",
    help="Registry folder (default: $TETHER_URI, else the nearest .tether above the cwd).",
)
@click.version_option(__version__, prog_name="tether")
@click.pass_context
def cli(ctx: click.Context, registry_uri: str | None) -> None:
    """Tether: a model registry that refuses to load what does not match.

    Every version is tied to its bytes, code, data, schema and environment.
    References look like NAME@1.4.0, NAME@~1.4, NAME@7, NAME@sha:ab12,
    NAME@production or NAME@latest.
    """
    state = State(registry_uri)
    ctx.obj = state
    ctx.call_on_close(state.close)


for command in (
    init,
    models,
    versions,
    show,
    diff,
    promote,
    rollback,
    alias_group,
    audit_group,
    env_group,
    gc,
    store_group,
    cache_group,
    verify,
    download,
    deprecate,
    config_group,
    policy_group,
    approve,
    role_group,
    key_group,
    sign,
    bundle_group,
    lock_group,
    check,
    reproduce,
    db_group,
    demo,
    serve,
    deploy_group,
    monitor,
    server_init,
    server,
    token_group,
    k8s_group,
    image_group,
):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="tether")
