"""OpenSSF model-signing bundles for Tether versions.

Tether's own signature (``_signing``) is Ed25519 over a version's digest and
metadata; only Tether can check it. This module writes, next to it, the bundle
the OpenSSF ``model-signing`` tool reads and checks: a Sigstore bundle
(``application/vnd.dev.sigstore.bundle.v0.3+json``) holding a DSSE envelope
over an in-toto statement (predicate ``https://model_signing/signature/v1.0``)
whose resources are the SHA-256 of every file of the version. Anyone can then
verify a downloaded copy with ``model_signing verify key`` and no Tether.

Keys. model-signing 1.1.1 signs and verifies only with elliptic-curve keys
(P-256, P-384, P-521), never Ed25519. So the bundle is signed with either an
EC key the user passes, or an ECDSA P-256 key derived from the Tether Ed25519
key: HKDF-SHA256 over the Ed25519 seed with a label of its own, reduced to a
P-256 scalar (FIPS 186-5 A.2.1 style). One secret file therefore signs both, and
``tether key openssf-public KEY`` prints the public half that outside verifiers
need. The derived key is as secret as the Ed25519 key and is only ever written
to a private temporary folder while model-signing's signer reads it.

Bytes. The bundle is produced by model-signing's own signer over the version's
files as ``Registry.download`` writes them, i.e. after every byte was checked
against the BLAKE3 digests the registry records; model-signing hashes those
files itself. Verification (``verify_bundle``) is Tether's own code: it checks
the signature, the statement, that the resources name exactly the version's
files as recorded in the registry, and that their digests match a fresh,
verified download.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Final, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ._errors import InvalidInput
from ._records import ModelVersion

BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
HASH_TYPE: Final = "sha256"
# model-signing's verifier always skips these (relative to the model folder), whatever
# the bundle says, so a bundle can never cover them.
GIT_PATHS = (".git", ".gitattributes", ".github", ".gitignore")
DERIVATION_INFO = b"tether openssf-model-signing ecdsa-p256 v1"
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_CURVE_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "secp256r1": hashes.SHA256,
    "secp384r1": hashes.SHA384,
    "secp521r1": hashes.SHA512,
}


class VersionSource(Protocol):
    """What this module needs of a registry (embedded or remote)."""

    def get(self, ref: str) -> ModelVersion: ...

    def download(self, ref: str, dest: str | Path, *, progress: bool = True) -> Path: ...


# -- keys -------------------------------------------------------------------------


def derive_p256_key(key: Ed25519PrivateKey) -> ec.EllipticCurvePrivateKey:
    """The ECDSA P-256 key that signs bundles for an Ed25519 Tether key (deterministic)."""
    seed = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    # 48 bytes (128 more bits than the order) make the reduction's bias negligible.
    okm = HKDF(algorithm=hashes.SHA256(), length=48, salt=None, info=DERIVATION_INFO).derive(seed)
    scalar = int.from_bytes(okm, "big") % (_P256_ORDER - 1) + 1
    return ec.derive_private_key(scalar, ec.SECP256R1())


def _check_curve(key: ec.EllipticCurvePublicKey, source: str) -> None:
    if key.curve.name not in _CURVE_HASHES:
        raise InvalidInput(
            f"{source} is an EC key on {key.curve.name}; model-signing supports only "
            "P-256, P-384 and P-521"
        )


def bundle_signing_key(path: str | Path) -> ec.EllipticCurvePrivateKey:
    """The EC key that signs a bundle: an EC key as is, an Ed25519 key's derived P-256 key."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except FileNotFoundError as error:
        raise InvalidInput(f"no key file at {path}") from error
    except (ValueError, TypeError) as error:
        raise InvalidInput(f"{path} is not an unencrypted PEM private key: {error}") from error
    if isinstance(key, Ed25519PrivateKey):
        return derive_p256_key(key)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        _check_curve(key.public_key(), str(path))
        return key
    raise InvalidInput(
        f"{path} is neither an Ed25519 nor an EC private key",
        hint="OpenSSF model-signing verifies ECDSA P-256/P-384/P-521 signatures",
    )


def public_pem(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> bytes:
    public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_hint(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> str:
    """How model-signing names a key in a bundle: SHA-256 of its PEM public key."""
    return hashlib.sha256(public_pem(key)).hexdigest()


def load_verification_key(path: str | Path) -> ec.EllipticCurvePublicKey:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError as error:
        raise InvalidInput(f"no public key file at {path}") from error
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as error:
        raise InvalidInput(f"{path} is not a PEM public key: {error}") from error
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise InvalidInput(
            f"{path} is not an EC public key (model-signing bundles are ECDSA-signed)",
            hint="for a Tether Ed25519 key, get its bundle key with "
            "`tether key openssf-public KEYFILE`",
        )
    _check_curve(key, str(path))
    return key


# -- signing ----------------------------------------------------------------------


def _ignored(path: str, ignore_paths: tuple[str, ...]) -> bool:
    return any(path == p or path.startswith(p + "/") for p in ignore_paths)


def _model_dir_name(version: ModelVersion) -> str:
    # model-signing names the statement's subject after the folder it hashed.
    return version.ref.replace("/", "_")


def write_bundle(
    source: VersionSource, ref: str, key_path: str | Path, out: str | Path
) -> dict[str, Any]:
    """Sign REF's files with model-signing's own signer and write the bundle to ``out``."""
    from model_signing import hashing
    from model_signing import signing as ms_signing

    version = source.get(ref)
    key = bundle_signing_key(key_path)
    out_path = Path(out)
    if out_path.is_dir():
        raise InvalidInput(f"{out_path} is a folder", hint="give the bundle's file name")
    uncovered = sorted(f.path for f in version.files if _ignored(f.path, GIT_PATHS))
    with tempfile.TemporaryDirectory(prefix="tether-openssf-") as tmp:  # mode 0700
        model_dir = source.download(
            version.ref, Path(tmp) / "model" / _model_dir_name(version), progress=False
        )
        key_file = Path(tmp) / "bundle-key.pem"
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
        staged = Path(tmp) / "bundle.json"
        hashing_config = hashing.Config()  # type: ignore[no-untyped-call]
        hashing_config.use_file_serialization(hashing_algorithm=HASH_TYPE)
        config = ms_signing.Config()  # type: ignore[no-untyped-call]
        config.set_hashing_config(hashing_config)
        config.use_elliptic_key_signer(private_key=key_file)
        config.sign(model_dir, staged)
        statement = _statement(json.loads(staged.read_text()))
        out_path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename so a failed run never leaves half a bundle behind.
        partial = out_path.with_name(out_path.name + ".partial")
        partial.write_bytes(staged.read_bytes())
        partial.replace(out_path)
    return {
        "ref": version.ref,
        "bundle": str(out_path),
        "files": len(statement["predicate"]["resources"]),
        "hash": HASH_TYPE,
        "subject": statement["subject"][0]["name"],
        "root_digest": statement["subject"][0]["digest"]["sha256"],
        "key_hint": key_hint(key),
        "public_key": public_pem(key).decode(),
        "uncovered": uncovered,
    }


# -- verification -----------------------------------------------------------------


def _b64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"{what} is missing")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ValueError(f"{what} is not base64") from error


def _pae(payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: what the signature covers."""
    head = f"DSSEv1 {len(PAYLOAD_TYPE)} {PAYLOAD_TYPE} {len(payload)} "
    return head.encode() + payload


def _statement(bundle: dict[str, Any]) -> dict[str, Any]:
    payload = _b64(bundle["dsseEnvelope"]["payload"], "the DSSE payload")
    statement = json.loads(payload)
    if not isinstance(statement, dict):
        raise ValueError("the DSSE payload is not a JSON object")
    return statement


def open_bundle(data: bytes, public: ec.EllipticCurvePublicKey) -> dict[str, Any]:
    """Check a bundle's envelope and signature; return its in-toto statement.

    Raises ValueError naming what is wrong.
    """
    try:
        bundle = json.loads(data)
    except ValueError as error:
        raise ValueError(f"not JSON: {error}") from error
    except RecursionError:
        raise ValueError("JSON nested too deeply to read") from None
    if not isinstance(bundle, dict):
        raise ValueError("not a Sigstore bundle (a JSON object)")
    if bundle.get("mediaType") != BUNDLE_MEDIA_TYPE:
        raise ValueError(f"media type {bundle.get('mediaType')!r}, expected {BUNDLE_MEDIA_TYPE!r}")
    envelope = bundle.get("dsseEnvelope")
    if not isinstance(envelope, dict):
        raise ValueError("the bundle holds no DSSE envelope")
    if envelope.get("payloadType") != PAYLOAD_TYPE:
        raise ValueError(f"DSSE payload type {envelope.get('payloadType')!r}")
    material = bundle.get("verificationMaterial") or {}
    public_key = material.get("publicKey") if isinstance(material, dict) else None
    if not isinstance(material, dict) or not isinstance(public_key or {}, dict):
        raise ValueError("its verificationMaterial is not an object with a publicKey object")
    hint = (public_key or {}).get("hint")
    if hint and hint != key_hint(public):
        raise ValueError("the bundle names another public key than the one given")
    signatures = envelope.get("signatures") or []
    if len(signatures) != 1 or not isinstance(signatures[0], dict):
        raise ValueError(f"expected one DSSE signature, found {len(signatures)}")
    payload = _b64(envelope.get("payload"), "the DSSE payload")
    signature = _b64(signatures[0].get("sig"), "the DSSE signature")
    algorithm = _CURVE_HASHES[public.curve.name]()
    try:
        public.verify(signature, _pae(payload), ec.ECDSA(algorithm))
    except InvalidSignature as error:
        raise ValueError("the signature does not verify with the given public key") from error
    try:
        statement = json.loads(payload)
    except RecursionError:
        raise ValueError("the signed payload is nested too deeply to read") from None
    if not isinstance(statement, dict):
        raise ValueError("the signed payload is not a JSON object")
    return statement


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_bundle(
    source: VersionSource, ref: str, bundle_path: str | Path, public_key_path: str | Path
) -> dict[str, Any]:
    """Check an OpenSSF model-signing bundle against version REF.

    The bundle must be signed by the given key, carry a model-signing v1.0
    statement whose subject digest matches its resources, name exactly the
    version's files as the registry records them (git metadata files, which
    model-signing never covers, excepted), and give each the SHA-256 of the
    version's verified bytes. Returns a report; ``ok`` is False with
    ``problems`` listing every failure.
    """
    version = source.get(ref)
    public = load_verification_key(public_key_path)
    try:
        data = Path(bundle_path).read_bytes()
    except FileNotFoundError as error:
        raise InvalidInput(f"no bundle at {bundle_path}") from error
    report: dict[str, Any] = {
        "ref": version.ref,
        "bundle": str(bundle_path),
        "ok": False,
        "key_hint": key_hint(public),
        "subject": None,
        "files_checked": 0,
        "uncovered": [],
        "problems": [],
    }
    problems: list[str] = report["problems"]
    try:
        statement = open_bundle(data, public)
        resources = _check_statement(statement)
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as error:
        problems.append(f"bundle refused: {error}")
        return report
    report["subject"] = statement["subject"][0].get("name")
    serialization_args = statement["predicate"]["serialization"]
    ignore = tuple(str(p).strip("/") for p in serialization_args.get("ignore_paths") or ())
    recorded = {f.path: f for f in version.files}
    uncovered = sorted(p for p in recorded if _ignored(p, GIT_PATHS))
    report["uncovered"] = uncovered
    # A bundle vouches only for what it covers: a version that carried files it leaves out
    # (model-signing ignores .git* paths), or another version's bundle whose files it
    # shares, was reported ok (a review planted .github/workflows/pwn.yml that way).
    problems.extend(f"{path}: a file of {version.ref} no OpenSSF bundle covers (model-signing "
                    "ignores .git* paths): nothing vouches for it" for path in uncovered)
    subject = str(report["subject"] or "")
    if "@" in subject and subject != _model_dir_name(version):
        problems.append(f"the bundle was made for {subject}, not {version.ref}")
    for path in sorted(recorded):
        if path not in resources and path not in uncovered:
            why = " (the bundle ignores it)" if _ignored(path, ignore) else ""
            problems.append(f"{path}: a file of {version.ref} the bundle does not cover{why}")
    for path in sorted(set(resources) - set(recorded)):
        problems.append(f"{path}: in the bundle but not a file of {version.ref}")
    checked = sorted(set(resources) & set(recorded))
    if checked:
        with tempfile.TemporaryDirectory(prefix="tether-openssf-") as tmp:
            where = source.download(version.ref, Path(tmp) / "model", progress=False)
            for path in checked:
                actual = _file_digest(where / path)
                if actual != resources[path]:
                    problems.append(
                        f"{path}: the bundle says sha256 {resources[path][:16]}…, "
                        f"{version.ref} has {actual[:16]}…"
                    )
    report["files_checked"] = len(checked)
    report["ok"] = not problems
    return report


def _check_statement(statement: dict[str, Any]) -> dict[str, str]:
    """Validate a model-signing v1.0 statement; return {path: sha256 hex}."""
    if statement.get("_type") != STATEMENT_TYPE:
        raise ValueError(f"statement type {statement.get('_type')!r}")
    if statement.get("predicateType") != PREDICATE_TYPE:
        raise ValueError(
            f"predicate type {statement.get('predicateType')!r}, expected {PREDICATE_TYPE!r}"
        )
    subjects = statement.get("subject")
    if not isinstance(subjects, list) or len(subjects) != 1:
        raise ValueError("expected exactly one subject")
    predicate = statement["predicate"]
    serialization_args = predicate["serialization"]
    if serialization_args.get("method") != "files":
        raise ValueError(
            f"serialization method {serialization_args.get('method')!r}; "
            "only per-file ('files') bundles are checked"
        )
    if serialization_args.get("hash_type") != HASH_TYPE:
        raise ValueError(f"hash type {serialization_args.get('hash_type')!r}, expected sha256")
    root = hashlib.sha256()
    resources: dict[str, str] = {}
    for resource in predicate["resources"]:
        name, algorithm, digest = resource["name"], resource["algorithm"], resource["digest"]
        if algorithm != HASH_TYPE:
            raise ValueError(f"{name}: digest algorithm {algorithm!r}")
        if name in resources:
            raise ValueError(f"{name} is listed twice")
        raw = bytes.fromhex(digest)
        root.update(raw)
        resources[name] = raw.hex()
    if root.hexdigest() != subjects[0]["digest"]["sha256"]:
        raise ValueError("the subject digest does not match the listed resources")
    return resources
