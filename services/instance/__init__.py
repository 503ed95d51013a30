"""The instance service. See docs/architecture.md."""
