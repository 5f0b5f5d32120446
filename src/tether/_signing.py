"""Ed25519 signatures over a version's digest and metadata.

A signature covers the canonical JSON of what identifies and describes a
version (its content digest, manifest digest, flavor, signature schema,
params, metrics, data digests, lineage), so neither the bytes nor the recorded
facts can change under it. Keys are PEM files; a key's id is a short BLAKE3
fingerprint of its raw public bytes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ._digest import blake3_hex, canonical_json
from ._errors import Conflict, InvalidInput
from ._records import ModelVersion


def signing_payload(version: ModelVersion) -> bytes:
    git = version.lineage.get("git") or {}
    return canonical_json(
        {
            "name": version.name,
            "semver": version.semver,
            "digest": version.digest,
            "files_digest": version.files_digest,
            "flavor": {k: v for k, v in version.flavor.items() if k != "framework_versions"},
            "signature": version.signature,
            "params": version.params,
            "metrics": version.metrics,
            "data": {k: v.get("digest") for k, v in version.data.items()},
            "commit": git.get("commit"),
        }
    ).encode()


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return blake3_hex(raw)[:16]


def public_pem(public: Ed25519PublicKey) -> str:
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def generate_key(path: str | Path) -> tuple[Path, Path, str]:
    """Write a new private key (mode 0600) and its public key beside it (``.pub``)."""
    private_path = Path(path)
    if not private_path.name or private_path.is_dir():
        raise InvalidInput(f"{str(path)!r} is not a file name for a key",
                           hint="name the key's file: tether key generate release.key")
    public_path = private_path.with_name(private_path.name + ".pub")
    if private_path.exists() or public_path.exists():
        raise Conflict(
            f"{private_path} already exists", hint="choose another path; keys are never overwritten"
        )
    key = Ed25519PrivateKey.generate()
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    public_path.write_text(public_pem(key.public_key()))
    return private_path, public_path, key_id(key.public_key())


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except FileNotFoundError as error:
        raise InvalidInput(
            f"no key file at {path}", hint="create one with `tether key generate PATH`"
        ) from error
    except (ValueError, TypeError) as error:
        raise InvalidInput(f"{path} is not an unencrypted PEM private key: {error}") from error
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidInput(f"{path} is not an Ed25519 key", hint="Tether signs with Ed25519 keys")
    return key


def load_public_key(text: str | bytes, *, source: str = "public key") -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(text.encode() if isinstance(text, str) else text)
    except (ValueError, TypeError) as error:
        raise InvalidInput(f"{source} is not a PEM public key: {error}") from error
    if not isinstance(key, Ed25519PublicKey):
        raise InvalidInput(f"{source} is not an Ed25519 public key")
    return key


def sign(key: Ed25519PrivateKey, version: ModelVersion) -> str:
    return key.sign(signing_payload(version)).hex()


def verify(public: Ed25519PublicKey, version: ModelVersion, signature_hex: str) -> bool:
    return verify_bytes(public, signing_payload(version), signature_hex)


def verify_bytes(public: Ed25519PublicKey, data: bytes, signature_hex: Any) -> bool:
    """Whether ``signature_hex`` is ``public``'s signature over ``data``; anything that is
    not a signature in hex (from a database or a server) is simply not one."""
    try:
        public.verify(bytes.fromhex(str(signature_hex)), data)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def describe_signature(row: Any) -> dict[str, Any]:
    return {"key_id": row.key_id, "signer": row.signer, "created_at": row.created_at}
