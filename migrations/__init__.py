"""Alembic migrations (shipped inside the wheel so `relaybot migrate` works anywhere)."""
