"""The auth service. See docs/architecture.md."""
