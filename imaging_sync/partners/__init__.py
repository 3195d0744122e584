"""Partner sources: the protocol and its adapters (one per wire format)."""
