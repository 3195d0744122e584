"""Our keys: UUIDv7, unique and ordered within a batch, indistinguishable from uuid.UUID's own."""

from __future__ import annotations

import copy
import pickle
import uuid

from imaging_sync.ids import new_id, new_ids


def test_a_batch_is_unique_sorted_version_7_and_after_the_last_single_id() -> None:
    before = new_id()
    batch = new_ids(1000)

    assert len(set(batch)) == 1000 and batch == sorted(batch)
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 for u in batch)
    assert before < batch[0]
    assert new_ids(0) == []


def test_batch_ids_behave_exactly_like_uuid_built_from_the_integer() -> None:
    for made in new_ids(3):
        plain = uuid.UUID(int=made.int)
        assert type(made) is uuid.UUID
        assert (made == plain, hash(made) == hash(plain), str(made), made.bytes, made.is_safe) == (True, True, str(plain), plain.bytes, plain.is_safe)
        assert pickle.loads(pickle.dumps(made)) == plain and copy.deepcopy(made) == plain
        assert uuid.UUID(str(made)) == made and {made: 1}[plain] == 1
