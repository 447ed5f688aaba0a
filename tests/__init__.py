"""The test suite: `unit/` (offline), `integration/` (real servers), `system/` (the whole mesh), `support/` (helpers)."""
