"""aigcctl: the admin command line of AIGC Gateway.

Talks to the services over gRPC with a bearer token. Addresses, namespace and
credentials come from flags, the environment or a config file (see `aigcctl
config` and docs/delivery.md). Exit codes are stable: 0 ok, 2 usage, 3 invalid
request, 4 not found, 5 conflict, 6 unauthenticated, 7 permission denied,
8 resource exhausted, 9 unavailable, 10 unimplemented, 11 check found problems,
12 wait timed out, 130 interrupted, 1 anything else.
"""
from __future__ import annotations

import sys
from typing import Any

import typer

from . import cmd_admin, cmd_audit, cmd_idle, cmd_instances, cmd_quotas, cmd_templates, render
from .context import Ctl
from .exitcodes import CallFailed, Exit, Failure
from .settings import resolve

# Plain tracebacks: rich's would print local variables, and a token may be one of them.
app = typer.Typer(name="aigcctl", add_completion=False, no_args_is_help=True, help=__doc__,
                  pretty_exceptions_enable=False, context_settings={"help_option_names": ["-h", "--help"]})
app.add_typer(cmd_templates.app, name="templates")
app.add_typer(cmd_instances.app, name="instances")
app.add_typer(cmd_audit.app, name="audit")
app.add_typer(cmd_quotas.app, name="quotas")
app.add_typer(cmd_idle.app, name="idle-exemptions")
cmd_admin.register(app)

# Typer vendors click from 0.2x on; reach its exception classes through typer's own.
_ClickException: type[Any] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")

# Options accepted anywhere on the line (kubectl style), moved before the command.
_GLOBAL_WITH_VALUE = {"-o", "--output", "-n", "--namespace", "--config", "--token-file", "--template-addr",
                      "--instance-addr", "--auth-addr", "--usersync-addr", "--audit-addr", "--ca-file",
                      "--request-timeout"}
_GLOBAL_FLAGS = {"--tls", "--no-tls"}


@app.callback()
def root(
    ctx: typer.Context,
    output: str = typer.Option("table", "--output", "-o", envvar="AIGCCTL_OUTPUT",
                               help="table, json or yaml."),
    namespace: str = typer.Option("", "--namespace", "-n",
                                  help="Namespace of templates (default: config, else default)."),
    config: str = typer.Option("", "--config",
                               help="Config file (default: $AIGCCTL_CONFIG, else ~/.config/aigcctl/config.yaml)."),
    token_file: str = typer.Option("", "--token-file",
                                   help="File holding the bearer token (else $AIGC_TOKEN_FILE, $AIGC_TOKEN)."),
    template_addr: str = typer.Option("", "--template-addr", help="TemplateService host:port ($AIGCCTL_TEMPLATE)."),
    instance_addr: str = typer.Option("", "--instance-addr", help="InstanceService host:port ($AIGCCTL_INSTANCE)."),
    auth_addr: str = typer.Option("", "--auth-addr", help="AuthService host:port ($AIGCCTL_AUTH)."),
    usersync_addr: str = typer.Option("", "--usersync-addr", help="UserSyncService host:port ($AIGCCTL_USERSYNC)."),
    audit_addr: str = typer.Option("", "--audit-addr", help="AuditService host:port (default: the template address)."),
    tls: bool | None = typer.Option(None, "--tls/--no-tls", help="Use TLS to the services."),
    ca_file: str = typer.Option("", "--ca-file", help="CA bundle for --tls."),
    request_timeout: float | None = typer.Option(None, "--request-timeout", help="Seconds per call (default 30)."),
) -> None:
    if output not in render.FORMATS:
        raise typer.BadParameter(f"{output!r}: choose from {', '.join(render.FORMATS)}", param_hint="--output")
    settings = resolve(config_file=config, token_file=token_file, namespace=namespace, tls=tls, ca_file=ca_file,
                       timeout_seconds=request_timeout,
                       addresses={"template": template_addr, "instance": instance_addr, "auth": auth_addr,
                                  "usersync": usersync_addr, "audit": audit_addr})
    ctx.obj = Ctl(settings=settings, output=output)
    ctx.call_on_close(ctx.obj.close)


def hoist_global_options(argv: list[str]) -> list[str]:
    """Move global options found after the command words to the front, so that
    `aigcctl templates list -o json` means `aigcctl -o json templates list`."""
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest += argv[i:]
            break
        name = arg.split("=", 1)[0]
        if name in _GLOBAL_WITH_VALUE and arg.startswith("--") and "=" in arg:
            front.append(arg)
        elif arg in _GLOBAL_WITH_VALUE and i + 1 < len(argv):
            front += [arg, argv[i + 1]]
            i += 1
        elif arg in _GLOBAL_FLAGS:
            front.append(arg)
        else:
            rest.append(arg)
        i += 1
    return front + rest


def run(argv: list[str]) -> int:
    """Run aigcctl; return the exit code (see the module docstring)."""
    err = render.console(stderr=True)
    try:
        app(args=hoist_global_options(argv), prog_name="aigcctl", standalone_mode=False)
        return Exit.OK
    except CallFailed as failed:
        for line in failed.describe():
            err.print(line, markup=False)
        return failed.exit
    except Failure as failure:
        err.print(f"error: {failure}", markup=False)
        return failure.exit
    except typer.Abort as abort:
        cause = abort.__cause__ or abort.__context__
        if isinstance(cause, KeyboardInterrupt):
            err.print("interrupted (an operation already sent goes on on the server)")
            return Exit.INTERRUPTED
        if isinstance(cause, EOFError):
            err.print("error: confirmation needed but there is no terminal; pass --yes")
            return Exit.USAGE
        err.print("aborted: nothing was changed")
        return Exit.ERROR
    except _ClickException as exc:
        exc.show()
        return Exit.USAGE
    except typer.Exit as exc:
        return exc.exit_code
    except KeyboardInterrupt:
        err.print("interrupted (an operation already sent goes on on the server)")
        return Exit.INTERRUPTED


def main() -> None:
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
