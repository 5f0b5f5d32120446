"""The audit chain: each event's hash covers its content and the previous hash.

Editing any event changes its hash and breaks the link from the next one;
deleting one leaves a gap in the ids and a broken link; deleting the newest
ones disagrees with the head record kept beside the chain.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ._digest import digest_of

GENESIS = "0" * 64


def event_hash(prev_hash: str, content: dict[str, Any]) -> str:
    """The hash of an event: BLAKE3 over the previous hash and canonical content."""
    return digest_of({"prev": prev_hash, "event": content})


def event_content(
    *,
    id: int,
    ts: str,
    actor: str,
    action: str,
    model: str | None,
    subject: str | None,
    before: Any,
    after: Any,
    details: dict[str, Any],
) -> dict[str, Any]:
    return {
        "id": id,
        "ts": ts,
        "actor": actor,
        "action": action,
        "model": model,
        "subject": subject,
        "before": before,
        "after": after,
        "details": details,
    }


def verify_chain(
    events: Iterable[tuple[dict[str, Any], str, str]], head: tuple[int, str] | None
) -> list[str]:
    """Check ``(content, prev_hash, hash)`` triples in id order against ``head``.

    Returns one line per problem; an empty list means the chain is intact.
    """
    problems: list[str] = []
    expected_prev = GENESIS
    expected_id = 1
    last: tuple[int, str] = (0, GENESIS)
    for content, prev_hash, stored_hash in events:
        event_id = int(content["id"])
        if event_id != expected_id:
            problems.append(
                f"events {expected_id}..{event_id - 1} are missing (deleted from the log)"
            )
        if prev_hash != expected_prev:
            problems.append(f"event {event_id}: link to the previous event is broken")
        if event_hash(prev_hash, content) != stored_hash:
            problems.append(f"event {event_id}: content does not match its hash (edited)")
        expected_prev = stored_hash
        expected_id = event_id + 1
        last = (event_id, stored_hash)
    if head is not None and head != last:
        if head[0] > last[0]:
            problems.append(
                f"events {last[0] + 1}..{head[0]} are missing from the end of the log (deleted)"
            )
        else:
            problems.append("the newest event does not match the recorded head of the chain")
    return problems
