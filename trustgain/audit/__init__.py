"""Read-only checks on outputs (AUDIT phase)."""
