"""The four gateway services. Their code lives in the repository's ``services/<name>/``
directories and is mapped here by the packaging (see pyproject.toml)."""
