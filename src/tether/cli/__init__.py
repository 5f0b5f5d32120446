"""The ``tether`` command: a thin shell over the registry use cases.

Commands are imported when they run, not at start-up: ``tether --help`` loads
click and this file only, and ``tether versions`` never imports the serving
stack. The table below names each command's module and its one-line help
(tests/test_cli_startup.py checks the lines match the commands' own help).
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from collections.abc import Iterator
from importlib import import_module
from typing import Any

import click

from .. import __version__

#: name -> (module under tether.cli, attribute, one-line help shown by `tether --help`)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "init": (
        "manage",
        "init",
        "Create a registry in PATH (default: --registry, $TETHER_URI, else ./.tether).",
    ),
    "models": ("inspect", "models", "List the models in the registry."),
    "versions": ("inspect", "versions", "List the versions of model NAME, oldest first."),
    "show": (
        "inspect",
        "show",
        "Show everything recorded about version REF (e.g. fraud@production).",
    ),
    "diff": (
        "inspect",
        "diff",
        "Compare two versions: params, metrics, signature, data, environment, files.",
    ),
    "delete": (
        "inspect",
        "delete",
        "Delete version REF: it no longer resolves; its record and audit trail stay.",
    ),
    "promote": (
        "aliases",
        "promote",
        "Point ALIAS of the model at version REF, after the policy's checks.",
    ),
    "rollback": ("aliases", "rollback", "Move NAME@ALIAS back to its previous target."),
    "alias": (
        "aliases",
        "alias_group",
        "Inspect and delete aliases (use promote/rollback to move them).",
    ),
    "audit": (
        "audit",
        "audit_group",
        "The append-only, hash-chained log of everything that changed.",
    ),
    "env": ("env", "env_group", "Compare and export the environment a version was logged in."),
    "gc": ("storage", "gc", "Remove stored bytes that no kept version references, and repack."),
    "store": ("storage", "store_group", "The artifact store."),
    "cache": ("storage", "cache_group", "The local chunk cache: stats, and prune to a size."),
    "verify": (
        "manage",
        "verify",
        "Re-read every stored byte of REF in the store (not a cached copy) against its digest.",
    ),
    "download": (
        "manage",
        "download",
        "Write REF's files (every byte verified) into the new folder DEST.",
    ),
    "deprecate": (
        "manage",
        "deprecate",
        "Deprecate REF: loading it warns and it cannot be promoted.",
    ),
    "config": (
        "manage",
        "config_group",
        "Registry settings (kept in the registry, changes are audited).",
    ),
    "policy": (
        "governance",
        "policy_group",
        "A model's policy: alias rules, required checks, approvals, retention.",
    ),
    "approve": (
        "governance",
        "approve",
        "Approve version REF for ALIAS (needs role approver; not the version's author).",
    ),
    "role": (
        "governance",
        "role_group",
        "Who may do what: reader < contributor < approver < admin.",
    ),
    "key": ("governance", "key_group", "Ed25519 signing keys."),
    "sign": (
        "governance",
        "sign",
        "Sign version REF: the signature covers its digest and metadata.",
    ),
    "bundle": (
        "governance",
        "bundle_group",
        "OpenSSF model-signing bundles (see `tether sign --bundle`).",
    ),
    "lock": ("pinning", "lock_group", "Pin the model versions an application uses in tether.lock."),
    "check": (
        "pinning",
        "check",
        "CI gate: refuse to ship models that do not match the application.",
    ),
    "lineage": (
        "lineage",
        "lineage",
        "The lineage of REF: the data a model version used, or the models a dataset fed.",
    ),
    "reproduce": (
        "pinning",
        "reproduce",
        "What it takes to rebuild REF: commit, data digests, pinned environment, params.",
    ),
    "data": (
        "data",
        "data_group",
        "Versioned datasets: add, list, show, diff, promote, download, track in git.",
    ),
    "push": (
        "data",
        "push",
        "Add each tracked path whose bytes changed as a new version; rewrite its pointer.",
    ),
    "pull": (
        "data",
        "pull",
        "Write every tracked path that is missing or stale from the version its pointer names.",
    ),
    "hooks": (
        "hooks",
        "hooks_group",
        "Git hooks: refuse large untracked files on commit, run `tether check` on push.",
    ),
    "db": ("manage", "db_group", "The metadata database's schema."),
    "import": (
        "importer",
        "import_group",
        "Import models from another registry (MLflow), and data from a DVC repository.",
    ),
    "demo": ("demo", "demo", "Run Tether's main job end to end on scikit-learn's bundled data."),
    "serve": (
        "serving",
        "serve",
        "Serve TARGET over HTTP: a version (iris@production) or a deployment file "
        "(deploy.yaml), or (--deployment NAME) a deployment stored in the registry.",
    ),
    "deploy": (
        "serving",
        "deploy_group",
        "Deployments stored in the registry (apply, weights, pause, resume, rollback, status, "
        "history), and a running serving process (--url).",
    ),
    "monitor": (
        "serving",
        "monitor",
        "Input drift of ENDPOINT: PSI and KS per feature against the reference statistics.",
    ),
    "server-init": (
        "server",
        "server_init",
        "Create a shared registry's schema and its first admin; prints the admin's token once.",
    ),
    "server": (
        "server",
        "server",
        "Serve the registry over HTTP (/api/v1, plus MLflow's /api/2.0/mlflow).",
    ),
    "token": ("server", "token_group", "API tokens for a shared registry (admin only)."),
    "k8s": ("k8s", "k8s_group", "Kubernetes manifests: serving replicas, registry server, KServe."),
    "image": ("k8s", "image_group", "Container build contexts that serve registered versions."),
    "build": (
        "k8s",
        "build",
        "Write an OCI build context with REF's verified bytes baked in, and build it.",
    ),
    "ui": (
        "ui",
        "ui",
        "Serve the web UI (models, versions, compare, audit, actions) in a browser.",
    ),
}


class LazyGroup(click.Group):
    """A group that imports a command's module only when that command is asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMANDS, *self.commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands or cmd_name not in COMMANDS:
            return self.commands.get(cmd_name)
        module, attribute, _ = COMMANDS[cmd_name]
        command = getattr(import_module(f"{__name__}.{module}"), attribute)
        assert isinstance(command, click.Command)
        self.commands[cmd_name] = command
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # The listing comes from the table, so `--help` imports no command module.
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows: list[tuple[str, str]] = []
        for name in names:
            loaded = self.commands.get(name)
            if loaded is not None:
                rows.append((name, loaded.get_short_help_str(limit)))
            else:
                # A stand-in command shortens the line exactly as the real one would.
                stand_in = click.Command(name, help=COMMANDS[name][2])
                rows.append((name, stand_in.get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _print_version(ctx: click.Context) -> None:
    # Imported here: the native core's module loads pyfastcdc's tables, which no
    # other command needs at start-up.
    from .._store import native

    built = ("built" if native.available
             else "built, turned off by TETHER_NATIVE=0" if native.built
             else "not built: large files are cut on worker processes, slower")
    click.echo(f"tether, version {__version__} (native core: {built})")
    ctx.exit()


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--registry",
    "-r",
    "registry_uri",
    metavar="PATH",
    envvar="TETHER_URI",
    help="Registry folder, server URL (http(s)://...) or, on a server's host, its database "
    "URL (default: $TETHER_URI, else the nearest .tether above the cwd).",
)
@click.option("--version", is_flag=True, expose_value=False, is_eager=True,
              callback=lambda ctx, _param, value: _print_version(ctx) if value else None,
              help="Show the version (and whether the native core is built) and exit.")
@click.pass_context
def cli(ctx: click.Context, registry_uri: str | None) -> None:
    """Tether: a model registry that refuses to load what does not match.

    Every version is tied to its bytes, code, data, schema and environment.
    References look like NAME@1.4.0, NAME@~1.4, NAME@7, NAME@sha:ab12,
    NAME@production or NAME@latest.
    """
    from ._common import State

    state = State(registry_uri)
    ctx.obj = state
    ctx.call_on_close(state.close)


def main() -> None:
    with _no_workflow_commands(), _warnings_as_text():
        if "--json" not in sys.argv[1:]:
            cli(prog_name="tether")
            return
        _main_answering_json()


def _main_answering_json() -> None:
    """``cli`` for a command line asking for ``--json``: a mistake in the arguments is
    the README's ``{"error": ...}`` object on stdout too (exit 2), where click printed
    its usage text on stderr and left stdout empty (a review). The rest is what click's
    own standalone mode does."""
    from ._common import emit_json

    try:
        code = cli.main(prog_name="tether", standalone_mode=False)
        if isinstance(code, int) and not isinstance(code, bool) and code:
            sys.exit(code)  # ctx.exit(N): click answers N here rather than exiting
    except click.UsageError as error:
        command = error.ctx.command_path if error.ctx is not None else "tether"
        emit_json({"error": "usage", "message": error.format_message(),
                   "hint": f"`{command} --help` says what it takes"})
        sys.exit(error.exit_code)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except click.exceptions.Abort:
        click.echo("Aborted!", err=True)
        sys.exit(1)
    except OSError as error:  # a reader that went away (`| head`): quietly, as click does
        if error.errno != errno.EPIPE:
            raise
        # Python's own recipe: what is left to flush goes nowhere, not into a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


@contextlib.contextmanager
def _warnings_as_text() -> Iterator[None]:
    """Tether's own warnings read as one line for the person at the terminal
    (``warning: ...``), not as Python's report of a file and line inside the library
    (``contextlib.py:144: UnsignedAuditEvents: ...`` and the source line after it)."""
    import warnings

    shown = warnings.showwarning

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: Any = None, line: str | None = None) -> None:
        if category.__module__.partition(".")[0] != "tether":
            shown(message, category, filename, lineno, file, line)
            return
        (file or sys.stderr).write(f"warning: {message}\n")

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown


@contextlib.contextmanager
def _no_workflow_commands() -> Iterator[None]:
    """In a GitHub Actions job, the runner reads any output line starting with ``::``
    (and ``##[`` anywhere in a line) as a command: a model's notes or a param's name
    then masked words in the log, forged error annotations or stopped command
    processing (a review). What Tether prints is text, never commands: between a
    ``stop-commands`` line and the token that resumes them (on standard error, so that
    --json output stays JSON)."""
    if os.environ.get("GITHUB_ACTIONS") != "true":
        yield
        return
    import secrets

    token = secrets.token_hex(16)
    sys.stderr.write(f"::stop-commands::{token}\n")
    sys.stderr.flush()
    try:
        yield
    except Exception:  # its traceback printed inside the window, not after it
        import traceback

        traceback.print_exc()
        sys.exit(1)
    finally:
        sys.stdout.flush()
        sys.stderr.write(f"::{token}::\n")
        sys.stderr.flush()
