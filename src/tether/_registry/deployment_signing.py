"""Signed deployments: which versions a trusted endpoint may run, vouched for by a key.

``trusted: true`` makes every replica of an endpoint unpickle its targets. A replica
following a deployment stored on a server took the server's word for that flag and
for what the targets named: a compromised server, or anyone between it and the
replicas over http, chose the code every replica ran. Storing the flag takes an
admin (``deployments._check_trust``), but that rule lives on the server.

So an admin signs, with a key whose private half stays on their machine, the content
digests that each trusted endpoint's targets name now (and any versions named with
``--version``): ``tether deploy sign NAME --key KEY``. A replica of a remote registry
honours ``trusted`` only for a version whose digest a signature it checks itself, by a
key it pins in ``TETHER_LOAD_KEYS``, lists for that endpoint and deployment; other
versions load as untrusted (safe formats, or pickles signed themselves). A replica of
an embedded registry reads its own database, which also holds the keys it would
check with, and keeps the rule it always had.

A signature names its deployment and may expire; a server can withhold one, or offer
an older one (versions an admin vouched for once) to a replica that has not seen the
newer, never one of its own making.
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from .._digest import canonical_json
from .._errors import InvalidInput, PermissionDenied
from .._humanize import short_repr
from .._identity import require_intact
from .._metadata.audit_log import append_event
from .._metadata.clock import iso, now_iso, parse_iso
from .._metadata.schema import deployment_signatures, trusted_keys
from .._records import ModelVersion
from .._reference import parse_reference
from .roles import require_role
from .trust import KEY_ID, own_database, pinned_load_keys

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from .._contract import RegistryAPI
    from .registry import Registry

#: The kind tag in every payload, so a signature over anything else is never read as one.
KIND = "tether.deployment-trust/v1"
_DIGEST = re.compile(r"[0-9a-f]{64}")


def payload_bytes(payload: Mapping[str, Any]) -> bytes:
    return canonical_json(dict(payload)).encode()


def trusted_endpoints(spec: Mapping[str, Any]) -> dict[str, list[str]]:
    """The targets (routes and shadows) of each trusted endpoint of ``spec``."""
    return {
        endpoint: [r["target"] for r in body["routes"]]
        + [s["target"] for s in body.get("shadow", [])]
        for endpoint, body in spec["endpoints"].items() if body.get("trusted")
    }


# -- the signer's side (any registry: the private key never leaves this process) -------


#: A signature's life when the signer gives none: a server can offer a signature it
#: holds (one listing a version since withdrawn) until then.
DEFAULT_LIFETIME = "90d"
#: ``expires_in`` for a signature that never expires.
NEVER = "never"


@dataclass(frozen=True)
class Vouching:
    """One version a signature is about to vouch for, as the signer is shown it."""

    endpoint: str
    target: str
    ref: str
    digest: str
    author: str
    created_at: str
    #: Whether the registry's answers chose it (the record's target, and what that names)
    #: rather than a whole digest the signer typed.
    chosen_by_registry: bool


def sign_deployment(registry: RegistryAPI, name: str, key_path: str, *,
                    versions: Iterable[str] = (), expires_in: str | None = None,
                    confirm: Callable[[list[Vouching]], bool] | None = None,
                    ) -> dict[str, Any]:
    """Sign the digests each trusted endpoint of deployment ``name`` may load: what its
    targets name now, and ``versions`` (e.g. the next release before a protected alias
    moves to it). ``expires_in``: a duration, ``"never"``, or None for 90 days.

    Through a server (or over a database whose replicas pin keys), the deployment's
    targets and what an alias or a version number names are its answers: a hostile one
    named its own pickle, and the signer signed it (a review). So then ``confirm`` is
    shown every version to be signed and must agree, unless each is named by a whole
    digest in ``versions`` (which the answer is checked against)."""
    from .. import _signing as signing
    from .tokens import parse_duration

    key = signing.load_private_key(key_path)
    chosen = expires_in or DEFAULT_LIFETIME
    lifetime = None if chosen == NEVER else parse_duration(chosen)
    record = registry.deployment(name)
    endpoints = trusted_endpoints(record["spec"])
    if not endpoints:
        raise InvalidInput(
            f"deployment {name} has no trusted endpoint: there is nothing to sign",
            hint="`trusted: true` on an endpoint lets its targets' pickles load; replicas of "
            "a server honour it for the versions a signature lists")
    # Whose answers decide: a server's, or a database a replica pins keys against (a
    # review: an edited alias row got its version signed without a question).
    answered = not own_database(registry) or bool(pinned_load_keys())
    extra = list(versions)
    named = {ref for ref in extra if parse_reference(ref).whole_digest}
    resolved: dict[str, ModelVersion] = {}  # each reference asked once
    shown: list[Vouching] = []
    for endpoint, targets in endpoints.items():
        for target in [*targets, *extra]:
            if target not in resolved:
                resolved[target] = require_intact(registry.get(target))
            version = resolved[target]
            # A target is the record's answer too, even a whole digest (a review: the
            # server rewrote the route to its own version's digest): only a digest the
            # signer typed names a version by itself.
            shown.append(Vouching(endpoint, target, version.ref, version.digest,
                                  version.author, version.created_at,
                                  answered and target not in named))
    if any(v.chosen_by_registry for v in shown):
        if confirm is None:
            first = next(v for v in shown if v.chosen_by_registry)
            raise InvalidInput(
                f"the registry's answers name the versions to sign ({first.endpoint}: "
                f"{first.target}): review them before signing",
                hint="pass confirm= (`tether deploy sign` shows them and asks), having "
                "compared each digest with the one you checked")
        if not confirm(shown):
            raise InvalidInput("nothing signed", hint="sign when the versions are the ones "
                               "you checked")
    digests = {endpoint: sorted({v.digest for v in shown if v.endpoint == endpoint})
               for endpoint in endpoints}
    signed_at = datetime.now(UTC)
    payload = {
        "kind": KIND,
        "deployment": name,
        "endpoints": digests,
        "signed_at": iso(signed_at),
        "expires_at": iso(signed_at + lifetime) if lifetime else None,
    }
    signature = key.sign(payload_bytes(payload)).hex()
    return registry.record_deployment_signature(
        name, payload, signing.key_id(key.public_key()), signature)


# -- the registry's side ----------------------------------------------------------------


#: Most versions one signature lists for one endpoint.
MAX_DIGESTS = 1000
_SIGNATURE = re.compile(r"[0-9a-f]{128}")  # an Ed25519 signature, in hex


def _check_payload(payload: Any, name: str, spec: Mapping[str, Any]) -> str | None:
    """What is wrong with ``payload`` as a signature of deployment ``name`` now, or None."""
    if not isinstance(payload, dict) or payload.get("kind") != KIND:
        return f"the payload is not a {KIND} statement"
    if set(payload) != {"kind", "deployment", "endpoints", "signed_at", "expires_at"}:
        return "the payload's fields are not kind, deployment, endpoints, signed_at, expires_at"
    if payload["deployment"] != name:
        return f"the payload names deployment {short_repr(payload['deployment'])}, not {name!r}"
    endpoints = payload["endpoints"]
    trusted = trusted_endpoints(spec)
    if not isinstance(endpoints, dict) or not endpoints:
        return "the payload lists no endpoint"
    for endpoint, digests in endpoints.items():
        if endpoint not in trusted:
            return f"{short_repr(endpoint)} is not a trusted endpoint of deployment {name}"
        if not isinstance(digests, list) or not digests or not all(
                isinstance(d, str) and _DIGEST.fullmatch(d) for d in digests):
            return f"endpoint {endpoint}'s digests are not whole content digests"
        if len(digests) > MAX_DIGESTS or len(set(digests)) != len(digests):
            return (f"endpoint {endpoint} lists {len(digests)} digests, some twice or more "
                    f"than {MAX_DIGESTS}")
    for field in ("signed_at", "expires_at"):
        value = payload[field]
        if value is None and field == "expires_at":
            continue
        try:
            parse_iso(value)
        except (TypeError, ValueError):
            return f"{field} is not a time as Tether writes it"
    return None


def record_deployment_signature(registry: Registry, name: str, payload: Any, key_id: str,
                                signature: str) -> dict[str, Any]:
    """Store a deployment signature after checking it (admin, a trusted key, a valid
    signature over a well-formed statement about this deployment's trusted endpoints).

    It replaces that key's earlier signature, and is a new revision (action ``sign``)
    so replicas re-read the record; a refused one is an audit event."""
    from .. import _signing as signing
    from . import deployments

    actor = registry.actor
    with registry.read() as conn:
        require_role(conn, actor, "admin", None)
        row = deployments._row(conn, name)
    if not isinstance(key_id, str) or not KEY_ID.fullmatch(key_id):
        raise InvalidInput(f"key id {short_repr(key_id)} is not a key id (16 hex digits)")
    if not isinstance(signature, str) or not _SIGNATURE.fullmatch(signature):
        raise InvalidInput("the signature is not an Ed25519 signature in 128 hex digits")
    with registry.read() as conn:
        key = conn.execute(sa.select(trusted_keys).where(trusted_keys.c.key_id == key_id)).first()
    problem = _check_payload(payload, name, json.loads(row.spec))
    hint = "sign again: tether deploy sign NAME --key FILE"
    if problem is None and key is None:
        problem = f"key {key_id} is not trusted by this registry"
        hint = "an admin trusts it first: tether key trust NAME KEY.pub"
    if problem is None:
        assert key is not None
        public = signing.load_public_key(key.public_key, source=key.name)
        if not _verifies(public, payload, signature):
            problem = f"the signature is not a valid signature by {key.name} over it"
    if problem is not None:
        with registry.write() as conn:
            append_event(conn, actor=actor, action="deployment.signature_refused",
                         subject=f"deployment:{name}", after=key_id,
                         details={"deployment": name, "reason": problem})
        raise PermissionDenied(f"deployment signature refused: {problem}", hint=hint)
    assert key is not None
    with registry.write() as conn:
        row = deployments._row(conn, name, lock=True)
        conn.execute(deployment_signatures.delete().where(
            deployment_signatures.c.deployment == name,
            deployment_signatures.c.key_id == key_id))
        conn.execute(deployment_signatures.insert().values(
            deployment=name, key_id=key_id, payload=canonical_json(payload),
            signature=signature, signer=actor, created_at=now_iso()))
        revision = deployments._save(
            conn, row, name, json.loads(row.spec), json.loads(row.paused), action="sign",
            actor=actor, reason=f"signed by {key.name}")
        append_event(conn, actor=actor, action="deployment.sign", subject=f"deployment:{name}",
                     before=row.revision, after=revision,
                     details={"deployment": name, "key": key.name, "key_id": key_id,
                              "endpoints": {e: len(d) for e, d in payload["endpoints"].items()},
                              "expires_at": payload["expires_at"]})
        return {**deployments._record(conn, deployments._row(conn, name)), "changed": True}


def stored_signatures(conn: sa.Connection, name: str) -> list[dict[str, Any]]:
    """A deployment's signatures as its record carries them."""
    rows = conn.execute(sa.select(deployment_signatures).where(
        deployment_signatures.c.deployment == name).order_by(deployment_signatures.c.key_id))
    names = dict(conn.execute(sa.select(trusted_keys.c.key_id, trusted_keys.c.name)).all())
    # ``key``: the registry's name for the key, None once it no longer trusts it (a
    # removed key's signature looked as good as any: a review). Replicas decide by the
    # keys they pin, not by this.
    return [{"key_id": r.key_id, "key": names.get(r.key_id), "signer": r.signer,
             "created_at": r.created_at, "payload": json.loads(r.payload),
             "signature": r.signature} for r in rows]


# -- the replica's side -----------------------------------------------------------------


def _verifies(public: Ed25519PublicKey, payload: Mapping[str, Any], signature: Any) -> bool:
    """Whether ``signature`` is ``public``'s over ``payload``; a payload that has no
    canonical bytes (a lone surrogate in a string: a review's stored signature made a
    replica exit with a traceback at start) is signed by no one."""
    from .._signing import verify_bytes

    try:
        signed = payload_bytes(payload)
    except (UnicodeEncodeError, ValueError, TypeError, RecursionError):
        return False
    return verify_bytes(public, signed, signature)


#: The newest ``signed_at`` this process has checked, per (deployment, key id): a server
#: that withholds a newer signature and offers an older one (versions since withdrawn)
#: is not believed by a replica that saw the newer one.
_NEWEST_SEEN: dict[tuple[str, str], float] = {}
_SEEN_LOCK = threading.Lock()


def vouched_digests(name: str, record: Mapping[str, Any],
                    pinned: Mapping[str, Ed25519PublicKey], *,
                    now: datetime | None = None,
                    seen: dict[tuple[str, str], float] | None = None,
                    ) -> dict[str, dict[str, float]]:
    """Per trusted endpoint, the digests that signatures over deployment ``name`` (the
    one this replica follows, whatever the record says), checked here by ``pinned``
    keys, let load as trusted, each with when that ends (seconds since the epoch;
    infinity: never). Anything the record says itself counts for nothing.

    Of each key only its newest signature counts: a key's earlier statement listing a
    version since withdrawn is not added back. ``seen`` (this process's memory unless
    given) keeps the newest signing time checked per key: a record offering an older
    signature than one seen before (the newest withheld) gets nothing from that key. A
    process that never saw the newer one cannot tell, until the older one expires."""
    moment = (now or datetime.now(UTC)).timestamp()
    memory = _NEWEST_SEEN if seen is None else seen
    newest: dict[str, tuple[float, dict[str, Any]]] = {}
    entries = record.get("signatures")
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict):
            continue
        key = str(entry.get("key_id"))
        public = pinned.get(key)
        payload = entry.get("payload")
        if public is None or not isinstance(payload, dict) or not _verifies(
                public, payload, entry.get("signature")):
            continue
        if payload.get("kind") != KIND or payload.get("deployment") != name:
            continue
        try:
            signed_at = parse_iso(payload["signed_at"]).timestamp()
            expires = payload.get("expires_at")
            until = math.inf if expires is None else parse_iso(expires).timestamp()
        except (KeyError, TypeError, ValueError):
            continue
        if key not in newest or signed_at > newest[key][0]:
            newest[key] = (signed_at, {**payload, "_until": until})
    with _SEEN_LOCK:
        for key, (signed_at, _) in list(newest.items()):
            if memory.get((name, key), -math.inf) > signed_at:
                del newest[key]  # withheld: a newer one of this key was checked before
            else:
                memory[(name, key)] = signed_at
    vouched: dict[str, dict[str, float]] = {}
    for _, payload in newest.values():
        until = payload["_until"]
        endpoints = payload.get("endpoints")
        if until <= moment or not isinstance(endpoints, dict):
            continue
        for endpoint, digests in endpoints.items():
            if not isinstance(digests, list):
                continue
            held = vouched.setdefault(str(endpoint), {})
            for digest in digests:
                if isinstance(digest, str) and _DIGEST.fullmatch(digest):
                    held[digest] = max(held.get(digest, 0.0), until)
    return vouched


def sign_hint(name: str) -> str:
    """What to do when a trusted endpoint's version carries no signature a replica pins."""
    return (f"an admin signs the versions it may run: tether deploy sign {name} --key KEY; "
            "pin KEY.pub on the replicas in TETHER_LOAD_KEYS")

