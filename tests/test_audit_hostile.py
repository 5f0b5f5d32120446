"""Verification of crafted input says what is wrong instead of ending in a traceback: an
OpenSSF bundle of the wrong shape or nested without end, an audit checkpoint whose
numbers are not numbers, an audit event edited in the database to something that is
not JSON (each from a review)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric import ec

from tether import InvalidInput, Registry
from tether._audit_signing import read_checkpoint
from tether._openssf_bundle import BUNDLE_MEDIA_TYPE, PAYLOAD_TYPE, open_bundle

NESTED = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize("material", [["x"], {"publicKey": "abc"}])
def test_a_bundle_of_the_wrong_shape_is_refused_with_a_reason(material: object) -> None:
    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    bundle = {"mediaType": BUNDLE_MEDIA_TYPE, "verificationMaterial": material,
              "dsseEnvelope": {"payloadType": PAYLOAD_TYPE, "payload": "", "signatures": []}}
    with pytest.raises(ValueError, match="verificationMaterial is not an object"):
        open_bundle(json.dumps(bundle).encode(), public)
    with pytest.raises(ValueError, match="nested too deeply"):
        open_bundle(NESTED.encode(), public)


def test_a_checkpoint_whose_numbers_are_not_numbers_is_refused(registry: Registry) -> None:
    checkpoint = json.dumps(registry.audit_checkpoint())
    infinite = checkpoint.replace('"event_id": ', '"event_id": Infinity, "was": ', 1)
    for text in (infinite, '{"kind": ' + NESTED + "}"):
        with pytest.raises(InvalidInput, match="is not a Tether audit checkpoint"):
            read_checkpoint(text, source="the checkpoint")


@pytest.mark.parametrize("column, value", [("details", "{bad"), ("before", NESTED)])
def test_an_event_edited_to_what_is_not_json_is_reported_not_a_traceback(
        registry: Registry, tmp_path: Path, column: str, value: str) -> None:
    """`tether audit verify` promises to name an edited event; a column edited to text
    that is not JSON (or JSON nested too deeply) ended it, and `audit log`, in a
    JSONDecodeError or a RecursionError."""
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "w.bin").write_bytes(b"weights")
    registry.log_model(str(tmp_path / "m"), "m")
    events = sa.table("events", sa.column("id"), sa.column(column))
    with registry.engine.begin() as conn:
        target = conn.execute(sa.select(sa.func.max(events.c.id))).scalar_one()
        conn.execute(sa.update(events).where(events.c.id == target).values({column: value}))
    count, problems = registry.verify_audit()
    assert count >= 2 and any(f"event {target}" in p for p in problems), problems
    [edited] = [e for e in registry.audit_log() if e.id == target]
    assert "(unreadable)" in json.dumps(getattr(edited, column))
