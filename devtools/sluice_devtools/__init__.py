"""Tools for the demo, the tests and the bench: embedded Postgres and sample HTTP sources."""
