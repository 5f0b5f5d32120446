"""OpenSSF model-signing bundles: Tether signs, model-signing's own verifier checks.

model-signing (the `model-signing` PyPI package) is the independent code path
here: whatever `tether sign --bundle` writes must pass its verifier on a
downloaded copy, and fail it once a byte of the copy changes. `tether bundle
verify` in turn must refuse a tampered bundle and a validly signed bundle of
other bytes.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

import tether
from tether.cli import cli

model_signing = pytest.importorskip("model_signing")
from model_signing import hashing as ms_hashing  # noqa: E402
from model_signing import signing as ms_signing  # noqa: E402
from model_signing import verifying as ms_verifying  # noqa: E402


def run(root: Path, *args: str) -> Any:
    return CliRunner().invoke(cli, ["--registry", str(root), *args], catch_exceptions=False)


def ms_verify(model_dir: Path, bundle: Path, public_key: Path) -> None:
    """model-signing's own verifier (raises ValueError on any mismatch)."""
    ms_verifying.Config().use_elliptic_key_verifier(public_key=public_key).verify(model_dir, bundle)


def flip_byte(path: Path, offset: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture
def signed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A registry with two versions of a tiny files model; 1.0.0 signed with a bundle."""
    monkeypatch.setenv("TETHER_USER", "signer@test")  # the registry's creator: its admin
    root = tmp_path / ".tether"
    model = tmp_path / "tiny"
    (model / "sub").mkdir(parents=True)
    (model / "weights.bin").write_bytes(bytes(range(256)) * 4)
    (model / "sub" / "config.json").write_text('{"layers": 2}\n')
    with tether.init(root, actor="signer@test") as reg:
        assert reg.log_model(str(model), "tiny").ref == "tiny@1.0.0"
        (model / "weights.bin").write_bytes(bytes(range(255, -1, -1)) * 4)
        assert reg.log_model(str(model), "tiny").semver != "1.0.0"
    key = tmp_path / "release.key"
    assert run(root, "key", "generate", str(key)).exit_code == 0
    assert run(root, "key", "trust", "release", f"{key}.pub").exit_code == 0
    bundle = tmp_path / "tiny-1.0.0.sigstore.json"
    out = run(root, "sign", "tiny@1.0.0", "--key", str(key), "--bundle", str(bundle))
    assert out.exit_code == 0, out.output
    assert "wrote OpenSSF model-signing bundle" in out.output
    public = tmp_path / "release.openssf.pub"
    assert run(root, "key", "openssf-public", str(key), "--out", str(public)).exit_code == 0
    return {"root": root, "key": key, "bundle": bundle, "public": public, "tmp": tmp_path}


def download(root: Path, ref: str, dest: Path) -> Path:
    out = run(root, "download", ref, str(dest))
    assert out.exit_code == 0, out.output
    return dest


def test_bundle_is_the_openssf_format_with_sha256_of_every_file(signed: dict[str, Path]) -> None:
    bundle = json.loads(signed["bundle"].read_text())
    assert bundle["mediaType"] == "application/vnd.dev.sigstore.bundle.v0.3+json"
    envelope = bundle["dsseEnvelope"]
    assert envelope["payloadType"] == "application/vnd.in-toto+json"
    statement = json.loads(base64.b64decode(envelope["payload"]))
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == "https://model_signing/signature/v1.0"
    assert statement["subject"][0]["name"] == "tiny@1.0.0"
    assert statement["predicate"]["serialization"]["hash_type"] == "sha256"
    copy = download(signed["root"], "tiny@1.0.0", signed["tmp"] / "copy")
    import hashlib

    assert {r["name"]: r["digest"] for r in statement["predicate"]["resources"]} == {
        "weights.bin": hashlib.sha256((copy / "weights.bin").read_bytes()).hexdigest(),
        "sub/config.json": hashlib.sha256((copy / "sub" / "config.json").read_bytes()).hexdigest(),
    }
    # The registry's own Ed25519 signature is recorded as before.
    with tether.open(signed["root"]) as reg:
        assert reg.signatures("tiny@1.0.0") == (["release"], [])


def test_model_signing_verifies_a_downloaded_copy_and_refuses_a_flipped_byte(
    signed: dict[str, Path],
) -> None:
    copy = download(signed["root"], "tiny@1.0.0", signed["tmp"] / "copy")
    ms_verify(copy, signed["bundle"], signed["public"])  # no exception: verified

    flip_byte(copy / "weights.bin", 100)
    with pytest.raises(ValueError, match=r"Signature mismatch.*Hash mismatch for .*weights\.bin"):
        ms_verify(copy, signed["bundle"], signed["public"])


def test_model_signing_refuses_an_added_file_and_another_key(signed: dict[str, Path]) -> None:
    copy = download(signed["root"], "tiny@1.0.0", signed["tmp"] / "copy")
    (copy / "extra.py").write_text("import os\n")
    with pytest.raises(ValueError, match="Extra files"):
        ms_verify(copy, signed["bundle"], signed["public"])
    (copy / "extra.py").unlink()

    other = ec.generate_private_key(ec.SECP256R1())
    other_pub = signed["tmp"] / "other.pub"
    other_pub.write_bytes(
        other.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    with pytest.raises(ValueError, match="Key mismatch"):
        ms_verify(copy, signed["bundle"], other_pub)


def test_tether_bundle_verify_accepts_the_bundle(signed: dict[str, Path]) -> None:
    out = run(
        signed["root"],
        "bundle",
        "verify",
        "tiny@1.0.0",
        str(signed["bundle"]),
        "--public-key",
        str(signed["public"]),
        "--json",
    )
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    assert report["ok"] and report["files_checked"] == 2 and report["problems"] == []
    assert report["subject"] == "tiny@1.0.0"


def test_tether_verify_checks_the_bytes_and_a_bundle_together(signed: dict[str, Path]) -> None:
    """`tether verify REF --bundle B --public-key K` (what the signing issue asked for)."""
    args = ["verify", "tiny@1.0.0", "--bundle", str(signed["bundle"]),
            "--public-key", str(signed["public"])]
    out = run(signed["root"], *args, "--json")
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    assert report["ok"] and report["bundle"]["files_checked"] == 2
    bad = _tamper_signature(signed["bundle"], signed["tmp"] / "bad.json")
    refused = run(signed["root"], "verify", "tiny@1.0.0", "--bundle", str(bad),
                  "--public-key", str(signed["public"]))
    assert refused.exit_code == 1 and "signature does not verify" in refused.output
    lonely = run(signed["root"], "verify", "tiny@1.0.0", "--bundle", str(signed["bundle"]))
    assert lonely.exit_code == 2 and "--public-key" in lonely.output


def _tamper_payload(bundle: Path, dest: Path) -> Path:
    """Change a digest in the signed statement, keeping it self-consistent but unsigned."""
    import hashlib

    data = json.loads(bundle.read_text())
    statement = json.loads(base64.b64decode(data["dsseEnvelope"]["payload"]))
    resources = statement["predicate"]["resources"]
    resources[0]["digest"] = hashlib.sha256(b"other bytes").hexdigest()
    root = hashlib.sha256(b"".join(bytes.fromhex(r["digest"]) for r in resources))
    statement["subject"][0]["digest"]["sha256"] = root.hexdigest()
    data["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    dest.write_text(json.dumps(data))
    return dest


def _tamper_signature(bundle: Path, dest: Path) -> Path:
    data = json.loads(bundle.read_text())
    sig = bytearray(base64.b64decode(data["dsseEnvelope"]["signatures"][0]["sig"]))
    sig[-1] ^= 0x01
    data["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    dest.write_text(json.dumps(data))
    return dest


@pytest.mark.parametrize("tamper", [_tamper_payload, _tamper_signature])
def test_tether_bundle_verify_refuses_a_tampered_bundle(
    signed: dict[str, Path], tamper: Any
) -> None:
    bad = tamper(signed["bundle"], signed["tmp"] / "tampered.json")
    out = run(
        signed["root"],
        "bundle",
        "verify",
        "tiny@1.0.0",
        str(bad),
        "--public-key",
        str(signed["public"]),
    )
    assert out.exit_code == 1
    assert "REFUSED" in out.output
    assert "signature does not verify" in out.output
    # model-signing agrees.
    copy = download(signed["root"], "tiny@1.0.0", signed["tmp"] / "copy")
    with pytest.raises(InvalidSignature):
        ms_verify(copy, bad, signed["public"])


def test_a_validly_signed_bundle_of_other_bytes_is_refused(signed: dict[str, Path]) -> None:
    """Signed by the right key, but for another version: the registry's files decide."""
    root, key, tmp = signed["root"], signed["key"], signed["tmp"]
    other = tmp / "tiny-1.1.0.sigstore.json"
    assert (
        run(root, "sign", "tiny@latest", "--key", str(key), "--bundle", str(other)).exit_code == 0
    )
    out = run(
        root, "bundle", "verify", "tiny@1.0.0", str(other), "--public-key", str(signed["public"])
    )
    assert out.exit_code == 1
    assert "weights.bin: the bundle says sha256" in out.output

    # A bundle model-signing made itself over a folder with one file more.
    folder = download(root, "tiny@1.0.0", tmp / "plus")
    (folder / "extra.txt").write_text("not in the registry\n")
    ec_key = tmp / "ec.pem"
    ec_key.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    extra_bundle = tmp / "plus.sigstore.json"
    ms_signing.Config().set_hashing_config(ms_hashing.Config()).use_elliptic_key_signer(
        private_key=ec_key
    ).sign(folder, extra_bundle)
    ec_pub = tmp / "ec.pub"
    assert run(root, "key", "openssf-public", str(ec_key), "--out", str(ec_pub)).exit_code == 0
    out = run(
        root, "bundle", "verify", "tiny@1.0.0", str(extra_bundle), "--public-key", str(ec_pub)
    )
    assert out.exit_code == 1
    assert "extra.txt: in the bundle but not a file of tiny@1.0.0" in out.output


def test_wrong_or_ed25519_public_key_is_refused(signed: dict[str, Path]) -> None:
    root, bundle = signed["root"], signed["bundle"]
    out = run(root, "bundle", "verify", "tiny@1.0.0", str(bundle), "--public-key",
              f"{signed['key']}.pub")  # fmt: skip
    assert out.exit_code == 1
    assert "tether key openssf-public" in out.output
    other = signed["tmp"] / "other.key"
    assert run(root, "key", "generate", str(other)).exit_code == 0
    other_pub = signed["tmp"] / "other.openssf.pub"
    assert run(root, "key", "openssf-public", str(other), "--out", str(other_pub)).exit_code == 0
    out = run(root, "bundle", "verify", "tiny@1.0.0", str(bundle), "--public-key", str(other_pub))
    assert out.exit_code == 1
    assert "names another public key" in out.output


def test_bundle_key_option_signs_with_an_ec_key(signed: dict[str, Path]) -> None:
    root, tmp = signed["root"], signed["tmp"]
    p384 = tmp / "p384.pem"
    p384.write_bytes(
        ec.generate_private_key(ec.SECP384R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    bundle = tmp / "p384.sigstore.json"
    out = run(
        root, "sign", "tiny@1.0.0", "--key", str(signed["key"]),
        "--bundle", str(bundle), "--bundle-key", str(p384), "--json",
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["openssf_bundle"]["files"] == 2
    public = tmp / "p384.pub"
    assert run(root, "key", "openssf-public", str(p384), "--out", str(public)).exit_code == 0
    copy = download(root, "tiny@1.0.0", tmp / "copy")
    ms_verify(copy, bundle, public)
    out = run(root, "bundle", "verify", "tiny@1.0.0", str(bundle), "--public-key", str(public))
    assert out.exit_code == 0, out.output


def test_derived_bundle_key_is_stable_and_distinct_per_key(signed: dict[str, Path]) -> None:
    root, key = signed["root"], signed["key"]
    first = run(root, "key", "openssf-public", str(key)).output
    assert first == run(root, "key", "openssf-public", str(key)).output
    assert first == signed["public"].read_text()
    other = signed["tmp"] / "other.key"
    run(root, "key", "generate", str(other))
    assert run(root, "key", "openssf-public", str(other)).output != first


def test_a_bundle_never_vouches_for_files_it_leaves_out_or_another_version(
        signed: dict[str, Path]) -> None:
    """The harm (a review): tiny@1.0.0's bundle verified another model that shared its
    files and carried .github/workflows/pwn.yml besides (model-signing ignores .git*
    paths): ok, no problems, and a download into a work tree planted a CI workflow the
    user believed verified."""
    planted = signed["tmp"] / "planted"
    download(signed["root"], "tiny@1.0.0", planted)
    (planted / ".github" / "workflows").mkdir(parents=True)
    (planted / ".github" / "workflows" / "pwn.yml").write_text("on: push\n")
    with tether.open(signed["root"]) as reg:
        assert reg.log_model(str(planted), "other").ref == "other@1.0.0"
    out = run(signed["root"], "bundle", "verify", "other@1.0.0", str(signed["bundle"]),
              "--public-key", str(signed["public"]), "--json")
    assert out.exit_code != 0, out.output
    report = json.loads(out.output)
    assert not report["ok"]
    assert any(".github/workflows/pwn.yml" in p and "nothing vouches" in p
               for p in report["problems"]), report["problems"]
    assert any("made for tiny@1.0.0, not other@1.0.0" in p for p in report["problems"])
