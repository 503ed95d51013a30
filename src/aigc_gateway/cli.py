"""`aigc-gateway`: run the services, migrate the database, check the configuration."""
from __future__ import annotations

import asyncio
import importlib
import sys
from pathlib import Path

import typer

from . import __version__, logs
from .config import SERVICE_NAMES, ConfigError, Settings, load

# Plain tracebacks: rich's would print local variables, which may hold secrets.
app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__, pretty_exceptions_enable=False)
config_app = typer.Typer(no_args_is_help=True, help="Inspect the configuration.")
app.add_typer(config_app, name="config")

ConfigOption = typer.Option(None, "--config", "-c", help="YAML or JSON config file (else $AIGC_GATEWAY_CONFIG).")


def settings_or_exit(path: Path | None) -> Settings:
    """The configuration, or exit status 2 with every problem listed (services' commands use it too)."""
    try:
        return load(path)
    except ConfigError as exc:
        typer.echo(f"configuration is invalid ({len(exc.problems)} problem(s)):", err=True)
        for problem in exc.problems:
            typer.echo(f"  - {problem}", err=True)
        raise typer.Exit(2) from None


@app.command()
def serve(
    service: str = typer.Argument(..., help=f"One of {', '.join(SERVICE_NAMES)}, or 'all' (development)."),
    config: Path | None = ConfigOption,
    migrate_first: bool = typer.Option(False, "--migrate", help="Run database migrations before serving."),
) -> None:
    """Serve one gateway service (or all of them in one process)."""
    settings = settings_or_exit(config)
    names = list(SERVICE_NAMES) if service == "all" else [service]
    if any(n not in SERVICE_NAMES for n in names):
        typer.echo(f"unknown service {service!r}; choose from {', '.join(SERVICE_NAMES)} or all", err=True)
        raise typer.Exit(2)
    logs.setup(service, settings.logging.level, settings.logging.json_format)
    from .db.migrate import upgrade
    from .runtime import Runtime
    from .server import serve as run_servers

    if migrate_first or settings.database_url().startswith("sqlite"):
        # The embedded default has no separate migration step to forget.
        upgrade(settings.database_url())
    runtime = Runtime.create(settings, generate_service_token=service == "all")
    asyncio.run(run_servers(names, runtime))


@app.command()
def migrate(
    config: Path | None = ConfigOption,
    revision: str = typer.Option("heads", help="Target revision (default: every branch head)."),
    down: bool = typer.Option(False, "--down", help="Downgrade to REVISION instead of upgrading."),
) -> None:
    """Apply (or revert) database migrations."""
    from .db.migrate import downgrade, upgrade

    settings = settings_or_exit(config)
    (downgrade if down else upgrade)(settings.database_url(), revision)
    typer.echo(f"database at revision {revision}{' (downgraded)' if down else ''}")


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


@config_app.command("check")
def config_check(config: Path | None = ConfigOption) -> None:
    """Validate the configuration and print it with secrets hidden."""
    settings = settings_or_exit(config)
    typer.echo(settings.model_dump_json(indent=2, by_alias=True))
    typer.echo("configuration is valid", err=True)


def _register_service_commands() -> None:
    """Services add their own commands (e.g. `doctor`, `import-logto`) from ``services/<name>/cli.py``,
    which defines ``register(app)``."""
    for name in SERVICE_NAMES:
        module_name = f"aigc_gateway.services.{name}.cli"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        module.register(app)


_register_service_commands()


@config_app.command("reference")
def config_reference() -> None:
    """Print the configuration reference (docs/configuration.md)."""
    from .config import reference_markdown

    typer.echo(reference_markdown(), nl=False)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
