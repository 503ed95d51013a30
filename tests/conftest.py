"""Shared pytest plugins: the Kubernetes test bed, PostgreSQL, a token issuer, gateway servers."""

pytest_plugins = [
    "tests.plugins.testbed",
    "tests.plugins.postgres",
    "tests.plugins.oidc",
    "tests.plugins.gateway",
    "tests.plugins.auth_stack",
    "tests.plugins.logto",
]
