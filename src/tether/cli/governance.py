"""Governance commands: policy, approve, role, key, sign, bundle."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from .._policy import ROLES, parse_policy, policy_to_json
from ._common import (
    COUNT,
    console,
    emit_json,
    handle_errors,
    json_option,
    registry_from,
    shown,
    table,
)


@click.group("policy")
def policy_group() -> None:
    """A model's policy: alias rules, required checks, approvals, retention."""


@policy_group.command("set")
@click.argument("name")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@json_option
@click.pass_context
@handle_errors
def policy_set(ctx: click.Context, name: str, file: Path, as_json: bool) -> None:
    """Store FILE (YAML) as the new policy revision of model NAME (admin only)."""
    result = registry_from(ctx).set_policy(name, file.read_text())
    if as_json:
        emit_json(result)
    elif result["changed"]:
        console.print(f"{name} policy is now revision {result['revision']}")
    else:
        console.print(f"{name} policy unchanged (revision {result['revision']})")


@policy_group.command("show")
@click.argument("name")
@click.option("--revision", type=COUNT, help="An older revision (default: the newest).")
@json_option
@click.pass_context
@handle_errors
def policy_show(ctx: click.Context, name: str, revision: int | None, as_json: bool) -> None:
    """Print the policy of model NAME."""
    result = registry_from(ctx).get_policy(name, revision)
    if as_json:
        import json

        result["parsed"] = json.loads(policy_to_json(parse_policy(result["text"])))
        emit_json(result)
        return
    console.print(
        f"# {name} policy revision {result['revision']} by {result['author']} "
        f"at {result['created_at']}",
        markup=False,
    )
    click.echo(result["text"], nl=not result["text"].endswith("\n"))


@policy_group.command("validate")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@json_option
@handle_errors
def policy_validate(file: Path, as_json: bool) -> None:
    """Check a policy file without storing it."""
    import json

    parsed = json.loads(policy_to_json(parse_policy(file.read_text())))
    if as_json:
        emit_json({"file": str(file), "valid": True, "parsed": parsed})
    else:
        console.print(f"{file}: valid")


@click.command()
@click.argument("ref")
@click.argument("alias")
@click.option("--comment", default="", help="Kept with the approval.")
@json_option
@click.pass_context
@handle_errors
def approve(ctx: click.Context, ref: str, alias: str, comment: str, as_json: bool) -> None:
    """Approve version REF for ALIAS (needs role approver; not the version's author)."""
    names = registry_from(ctx).approve(ref, alias, comment=comment)
    if as_json:
        emit_json({"ref": ref, "alias": alias, "approvers": names})
    else:
        console.print(f"approved {ref} for {alias}; approvals so far: {', '.join(names)}")


@click.group("role")
def role_group() -> None:
    """Who may do what: reader < contributor < approver < admin."""


@role_group.command("grant")
@click.argument("principal")
@click.argument("role", type=click.Choice(ROLES))
@click.option("--model", help="Only for this model (default: registry-wide).")
@json_option
@click.pass_context
@handle_errors
def role_grant(
    ctx: click.Context, principal: str, role: str, model: str | None, as_json: bool
) -> None:
    """Give PRINCIPAL (a user, as TETHER_USER or git email names them) ROLE."""
    registry_from(ctx).grant(principal, role, model=model)
    if as_json:
        emit_json({"principal": principal, "role": role, "model": model, "granted": True})
    else:
        console.print(f"{principal} is {role}" + (f" on {model}" if model else " registry-wide"))


@role_group.command("revoke")
@click.argument("principal")
@click.argument("role", type=click.Choice(ROLES))
@click.option("--model", help="The model the grant was for.")
@json_option
@click.pass_context
@handle_errors
def role_revoke(
    ctx: click.Context, principal: str, role: str, model: str | None, as_json: bool
) -> None:
    """Take ROLE away from PRINCIPAL."""
    registry_from(ctx).revoke(principal, role, model=model)
    if as_json:
        emit_json({"principal": principal, "role": role, "model": model, "revoked": True})
    else:
        console.print(f"revoked {role} from {principal}" + (f" on {model}" if model else ""))


@role_group.command("list")
@json_option
@click.pass_context
@handle_errors
def role_list(ctx: click.Context, as_json: bool) -> None:
    """Every grant."""
    rows = registry_from(ctx).grants()
    if as_json:
        emit_json(rows)
        return
    console.print(
        table(
            ["PRINCIPAL", "ROLE", "MODEL", "GRANTED BY"],
            [(r["principal"], r["role"], r["model"] or "*", r["granted_by"]) for r in rows],
        )
    )


@click.group("key")
def key_group() -> None:
    """Ed25519 signing keys."""


@key_group.command("generate")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@json_option
@handle_errors
def key_generate(path: Path, as_json: bool) -> None:
    """Write a new private key to PATH (mode 600) and its public key to PATH.pub."""
    from .._signing import generate_key

    private, public, kid = generate_key(path)
    if as_json:
        emit_json({"private_key": str(private), "public_key": str(public), "key_id": kid})
        return
    console.print(f"private key: {private}\npublic key:  {public}\nkey id:      {kid}")
    console.print(f"Trust it in a registry with: tether key trust NAME {public}")


@key_group.command("trust")
@click.argument("name")
@click.argument("public_key", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@json_option
@click.pass_context
@handle_errors
def key_trust(ctx: click.Context, name: str, public_key: Path, as_json: bool) -> None:
    """Trust PUBLIC_KEY under NAME (policies name keys in signed_by)."""
    kid = registry_from(ctx).trust_key(name, public_key.read_text())
    if as_json:
        emit_json({"name": name, "key_id": kid})
    else:
        console.print(f"trusted {name} ({kid})")


@key_group.command("remove")
@click.argument("name")
@json_option
@click.pass_context
@handle_errors
def key_remove(ctx: click.Context, name: str, as_json: bool) -> None:
    """Stop trusting the key NAME (a leaked or retired one).

    Every signature by it counts for nothing from now on: policies that require it
    refuse, loads it vouched for need another signature, replicas that pin it keep
    their own copy (take it out of TETHER_LOAD_KEYS there). The signatures stay
    stored, shown as by an untrusted key. Needs an admin; an audit event.
    """
    removed = registry_from(ctx).remove_key(name)
    if as_json:
        emit_json(removed)
    else:
        console.print(f"no longer trusted: {shown(name)} ({shown(removed['key_id'])})")


@key_group.command("list")
@json_option
@click.pass_context
@handle_errors
def key_list(ctx: click.Context, as_json: bool) -> None:
    """Trusted keys."""
    rows = registry_from(ctx).keys()
    if as_json:
        emit_json(rows)
        return
    console.print(
        table(
            ["NAME", "KEY ID", "ADDED BY", "ADDED"],
            [(r["name"], r["key_id"], r["added_by"], r["created_at"]) for r in rows],
        )
    )


@key_group.command("openssf-public")
@click.argument("key_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the PEM here (default: print it).",
)
@json_option
@handle_errors
def key_openssf_public(key_file: Path, out: Path | None, as_json: bool) -> None:
    """The public key that verifies OpenSSF bundles signed with private KEY_FILE.

    model-signing verifies ECDSA only, so an Ed25519 Tether key signs bundles
    with a P-256 key derived from it; this prints that key's public half
    (an EC key file gives its own public key).
    """
    from .._openssf_bundle import bundle_signing_key, public_pem

    pem = public_pem(bundle_signing_key(key_file))
    if out is not None:
        out.write_bytes(pem)
    if as_json:
        emit_json({"public_key": pem.decode(), "out": str(out) if out else None})
    elif out is None:
        click.echo(pem.decode(), nl=False)
    else:
        console.print(f"wrote {out}")


@click.command()
@click.argument("ref")
@click.option(
    "--key",
    "key_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Private key file (from `tether key generate`).",
)
@click.option(
    "--bundle",
    "bundle_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write an OpenSSF model-signing bundle (Sigstore bundle, DSSE, in-toto) here.",
)
@click.option(
    "--bundle-key",
    "bundle_key_path",
    type=click.Path(exists=True, dir_okay=False),
    help="EC private key (P-256/384/521) for the bundle "
    "(default: the P-256 key derived from --key).",
)
@json_option
@click.pass_context
@handle_errors
def sign(
    ctx: click.Context,
    ref: str,
    key_path: str,
    bundle_path: Path | None,
    bundle_key_path: str | None,
    as_json: bool,
) -> None:
    """Sign version REF: the signature covers its digest and metadata.

    With --bundle, also sign REF's files in the OpenSSF model-signing format,
    so that `model_signing verify key` checks a downloaded copy without Tether.
    """
    if bundle_key_path and not bundle_path:
        raise click.UsageError("--bundle-key needs --bundle")
    registry = registry_from(ctx)
    result: dict[str, Any] = registry.sign(ref, key_path)
    if bundle_path is not None:
        from .._openssf_bundle import write_bundle

        result["openssf_bundle"] = write_bundle(
            registry, result["ref"], bundle_key_path or key_path, bundle_path
        )
    if as_json:
        emit_json(result)
        return
    trusted = (
        f"trusted as {shown(result['trusted_as'])}"
        if result["trusted_as"]
        else "NOT a trusted key in this registry (tether key trust)"
    )
    console.print(f"signed {shown(result['ref'])} with key {shown(result['key_id'])} "
                  f"({trusted})")
    bundle = result.get("openssf_bundle")
    if bundle:
        console.print(
            f"wrote OpenSSF model-signing bundle {bundle['bundle']}: {bundle['files']} file(s), "
            f"sha256, subject {bundle['subject']}, key sha256:{bundle['key_hint'][:16]}"
        )
        if bundle["uncovered"]:
            console.print(
                "  not covered (model-signing never signs git metadata files): "
                + ", ".join(bundle["uncovered"])
            )
        key_hint = bundle_key_path or key_path
        console.print(
            f"  its public key: tether key openssf-public {key_hint} --out KEY.pub; "
            "verify a copy: model_signing verify key DIR --signature BUNDLE --public_key KEY.pub"
        )


@click.group("bundle")
def bundle_group() -> None:
    """OpenSSF model-signing bundles (see `tether sign --bundle`)."""


@bundle_group.command("verify")
@click.argument("ref")
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--public-key",
    "public_key",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="PEM EC public key the bundle must be signed by (tether key openssf-public).",
)
@json_option
@click.pass_context
@handle_errors
def bundle_verify(
    ctx: click.Context, ref: str, bundle: Path, public_key: Path, as_json: bool
) -> None:
    """Check BUNDLE against version REF's recorded files and their verified bytes."""
    from .._openssf_bundle import verify_bundle

    report = verify_bundle(registry_from(ctx), ref, bundle, public_key)
    if as_json:
        emit_json(report)
    elif report["ok"]:
        console.print(
            f"{report['ref']}: OpenSSF bundle {bundle} verified: signed by key "
            f"sha256:{report['key_hint'][:16]}, {report['files_checked']} file(s) match "
            f"(subject {report['subject']})"
        )
        if report["uncovered"]:
            console.print("  not covered (git metadata files): " + ", ".join(report["uncovered"]))
    else:
        console.print(f"[red]{report['ref']}: OpenSSF bundle {bundle} REFUSED[/]")
        for problem in report["problems"]:
            console.print(f"  - {problem}", markup=False)
    if not report["ok"]:
        sys.exit(1)
