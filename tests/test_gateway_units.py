"""Small pure parts of the gateway."""

from __future__ import annotations

import uuid

from gateway.app import _uuid4


def test_generated_idempotency_keys_are_random_version_4_uuids() -> None:
    keys = [_uuid4() for _ in range(2000)]
    assert len(set(keys)) == len(keys)
    for key in keys:
        parsed = uuid.UUID(key)
        assert str(parsed) == key
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
