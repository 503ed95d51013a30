"""The template service. See docs/architecture.md."""
