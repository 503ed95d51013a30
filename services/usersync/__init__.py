"""The usersync service. See docs/architecture.md."""
