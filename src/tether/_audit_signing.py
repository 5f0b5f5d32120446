"""Signed audit heads and checkpoints: history that a database writer cannot rewrite.

The hash chain alone has no key: whoever can write the database can edit an
event and recompute every hash after it. So the registry signs the head of the
chain (event id and hash) with an Ed25519 key that lives outside the database
(in the registry folder, or in the server's key file) after every transaction
that appends events. A rewritten chain no longer matches its signed heads.

Deleting the newest events together with their signed heads cannot be seen
from inside the database; a *checkpoint* (a signed head exported with
`tether audit checkpoint` and kept elsewhere: a git repository, an object-locked
bucket) catches that and any rewrite of the history before it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ._bounded_read import read_regular
from ._digest import canonical_json
from ._errors import InvalidInput
from ._signing import key_id, load_public_key, public_pem, verify_bytes

#: The kind tag inside every checkpoint file, so another JSON file is refused.
CHECKPOINT_KIND = "tether.audit-checkpoint/v1"


def head_payload(event_id: int, event_hash: str) -> bytes:
    """What the registry key signs for a head: the event id and its chain hash."""
    payload = {"kind": "tether.audit-head/v1", "id": event_id, "hash": event_hash}
    return canonical_json(payload).encode()


@dataclass(frozen=True)
class SignedHead:
    event_id: int
    hash: str
    key_id: str
    signature: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class AuditKey:
    """The registry's audit key, loaded from (or created at) a path outside the database."""

    def __init__(self, private: Ed25519PrivateKey, path: Path) -> None:
        self.private = private
        self.path = path

    @classmethod
    def load_or_create(cls, path: Path) -> AuditKey:
        """The key at ``path``; a new one (mode 0600) when the file does not exist yet."""
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            key = Ed25519PrivateKey.generate()
            data = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass  # another process made it first: use theirs
            else:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
        try:
            loaded = serialization.load_pem_private_key(
                read_regular(path, 1 << 20, error=InvalidInput), password=None)
        except (ValueError, TypeError) as error:  # not a PEM key, or one with a password
            raise InvalidInput(
                f"{path} is not a usable audit key: {str(error).splitlines()[0][:200]}",
                hint="point TETHER_AUDIT_KEY at the registry's Ed25519 audit key (PEM, no "
                "password); nothing was written") from None
        if not isinstance(loaded, Ed25519PrivateKey):
            raise InvalidInput(f"{path} is not an Ed25519 key", hint="the audit key is Ed25519")
        return cls(loaded, path)

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

    @property
    def key_id(self) -> str:
        return key_id(self.public)

    @property
    def public_pem(self) -> str:
        return public_pem(self.public)

    def sign_head(self, event_id: int, event_hash: str) -> SignedHead:
        signature = self.private.sign(head_payload(event_id, event_hash)).hex()
        return SignedHead(event_id, event_hash, self.key_id, signature)


def head_is_valid(head: SignedHead, public: Ed25519PublicKey) -> bool:
    return (verify_bytes(public, head_payload(head.event_id, head.hash), head.signature)
            and key_id(public) == head.key_id)


def make_checkpoint(
    head: SignedHead, public: str, *, registry: str, taken_at: str
) -> dict[str, Any]:
    """The JSON a user keeps outside the registry."""
    return {
        "kind": CHECKPOINT_KIND,
        "registry": registry,
        "taken_at": taken_at,
        "event_id": head.event_id,
        "hash": head.hash,
        "key_id": head.key_id,
        "public_key": public,
        "signature": head.signature,
    }


def read_checkpoint(text: str, *, source: str) -> tuple[SignedHead, Ed25519PublicKey]:
    """Parse and check a checkpoint file: its head must be signed by the key it names."""
    try:
        data = json.loads(text)
        if data.get("kind") != CHECKPOINT_KIND:
            raise ValueError(f"kind is {data.get('kind')!r}, not {CHECKPOINT_KIND!r}")
        head = SignedHead(int(data["event_id"]), str(data["hash"]), str(data["key_id"]),
                          str(data["signature"]))
        public = load_public_key(str(data["public_key"]), source=f"{source}'s public key")
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError,
            RecursionError) as error:
        raise InvalidInput(
            f"{source} is not a Tether audit checkpoint: {error}",
            hint="make one with `tether audit checkpoint > FILE`",
        ) from error
    if not head_is_valid(head, public):
        raise InvalidInput(
            f"{source}'s signature does not match its head",
            hint="the checkpoint file was edited; use an untouched copy",
        )
    return head, public


def check_against_checkpoint(
    checkpoint: SignedHead, stored_hashes: dict[int, str]
) -> list[str]:
    """Problems if the chain no longer holds the event the checkpoint signed, unchanged.

    The chain links every event to the one before, so an unchanged event at
    the checkpoint proves every event up to it is unchanged too (the caller
    verifies the links).
    """
    stored = stored_hashes.get(checkpoint.event_id)
    if stored is None:
        return [
            f"event {checkpoint.event_id}, signed in the checkpoint, is gone: history was "
            "deleted or rewound after the checkpoint was taken"
        ]
    if stored != checkpoint.hash:
        return [
            f"event {checkpoint.event_id} does not match the checkpoint: history up to it was "
            "rewritten (the chain was recomputed after an edit)"
        ]
    return []
