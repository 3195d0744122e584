"""The transactional outbox: events written with their changes, relayed downstream at least once."""

from imaging_sync.outbox.events import EVENT_TYPES, add_study_events

__all__ = ["EVENT_TYPES", "add_study_events"]
