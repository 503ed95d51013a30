"""The dependency rule of docs/architecture.md, enforced: services depend on the core, never the reverse,
and no service imports another.

Every import statement is read with ``ast`` (top-level or inside a function, under ``TYPE_CHECKING``
or not; relative imports resolved against the importing module), so a lazy import cannot hide a
dependency. The core finds services only by name at run time (``server.load_service``,
``db.tables.load_all``, the CLI's service commands), which is a string, not an import. Generated code
(``src/aigc_gateway/api``) is left out.
"""
from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "src" / "aigc_gateway"
SERVICES = ROOT / "services"
GENERATED = CORE / "api"
PACKAGE = "aigc_gateway.services"


def module_name(path: Path, root: Path, package: str) -> str:
    """``services/auth/envoy.py`` (root ``services``, package ``aigc_gateway.services``) ->
    ``aigc_gateway.services.auth.envoy``; a package's ``__init__.py`` names the package."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([package, *parts])


def imported(source: str, module: str, is_package: bool = False) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) for every module an import statement of ``module`` names; for
    ``from X import a``, both ``X`` and ``X.a`` (``a`` may be a submodule)."""
    own_package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = own_package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            yield node.lineno, target
            for alias in node.names:
                if alias.name != "*":
                    yield node.lineno, f"{target}.{alias.name}"


def is_under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def core_modules() -> Iterator[tuple[Path, str]]:
    for path in sorted(CORE.rglob("*.py")):
        if GENERATED in path.parents:
            continue
        name = module_name(path, CORE, "aigc_gateway")
        if is_under(name, PACKAGE):
            continue  # src/aigc_gateway/services/__init__.py: the services' own parent package
        yield path, name


def service_modules() -> Iterator[tuple[Path, str, str]]:
    for path in sorted(SERVICES.rglob("*.py")):
        service = path.relative_to(SERVICES).parts[0]
        yield path, service, module_name(path, SERVICES, PACKAGE)


def core_violations(path: Path, module: str, source: str) -> list[str]:
    return [f"{path.relative_to(ROOT)}:{line}: {module} imports {target}"
            for line, target in imported(source, module, path.name == "__init__.py") if is_under(target, PACKAGE)]


def service_violations(path: Path, service: str, module: str, source: str) -> list[str]:
    own = f"{PACKAGE}.{service}"
    return [f"{path.relative_to(ROOT)}:{line}: {module} imports {target}"
            for line, target in imported(source, module, path.name == "__init__.py")
            if is_under(target, PACKAGE) and target != PACKAGE and not is_under(target, own)]


def test_the_core_imports_no_service() -> None:
    modules = list(core_modules())
    assert len(modules) > 20  # the walk found the core (runtime.py, server.py, db/, ctl/...)
    found = [v for path, name in modules for v in core_violations(path, name, path.read_text())]
    assert found == [], "the core must not import a service (docs/architecture.md):\n" + "\n".join(found)


def test_no_service_imports_another() -> None:
    modules = list(service_modules())
    assert {service for _, service, _ in modules} >= {"auth", "instance", "template", "usersync"}
    found = [v for path, service, name in modules for v in service_violations(path, service, name, path.read_text())]
    assert found == [], "services call each other through their contracts, never by import:\n" + "\n".join(found)


# -- the checks themselves catch what they claim to -------------------------------------------------------

def test_a_core_import_of_a_service_is_named_with_its_line() -> None:
    path = CORE / "runtime.py"
    source = "import grpc\n\ndef f():\n    from .services.auth.sessions import SessionCookieAuthenticator\n"
    assert core_violations(path, "aigc_gateway.runtime", source) == [
        "src/aigc_gateway/runtime.py:4: aigc_gateway.runtime imports aigc_gateway.services.auth.sessions",
        "src/aigc_gateway/runtime.py:4: aigc_gateway.runtime imports "
        "aigc_gateway.services.auth.sessions.SessionCookieAuthenticator"]
    assert core_violations(CORE / "db" / "tables.py", "aigc_gateway.db.tables",
                           "from aigc_gateway.services.usersync import models\n") == [
        "src/aigc_gateway/db/tables.py:1: aigc_gateway.db.tables imports aigc_gateway.services.usersync",
        "src/aigc_gateway/db/tables.py:1: aigc_gateway.db.tables imports aigc_gateway.services.usersync.models"]
    assert core_violations(CORE / "db" / "tables.py", "aigc_gateway.db.tables",
                           "from ..services import auth\n") != []
    # Finding a service by name is not an import.
    assert core_violations(path, "aigc_gateway.runtime",
                           'import importlib\nimportlib.import_module(f"aigc_gateway.services.{name}.server")\n') == []


def test_a_service_importing_another_is_named_but_its_own_modules_and_the_core_are_not() -> None:
    path = SERVICES / "usersync" / "importer.py"
    module = "aigc_gateway.services.usersync.importer"
    assert service_violations(path, "usersync", module, "from ..instance.names import parse_instance\n") == [
        "services/usersync/importer.py:1: aigc_gateway.services.usersync.importer imports "
        "aigc_gateway.services.instance.names",
        "services/usersync/importer.py:1: aigc_gateway.services.usersync.importer imports "
        "aigc_gateway.services.instance.names.parse_instance"]
    assert service_violations(path, "usersync", module, "import aigc_gateway.services.template.policy\n") == [
        "services/usersync/importer.py:1: aigc_gateway.services.usersync.importer imports "
        "aigc_gateway.services.template.policy"]
    assert service_violations(path, "usersync", module, (
        "from . import logto\nfrom .models import MirrorEntryRow\n"
        "from aigc_gateway.services.usersync.names import x\nfrom aigc_gateway import okg\n")) == []


def test_relative_imports_resolve_from_a_package_init() -> None:
    assert list(imported("from .server import build\n", "aigc_gateway.services.auth", is_package=True)) == [
        (1, "aigc_gateway.services.auth.server"), (1, "aigc_gateway.services.auth.server.build")]
    assert list(imported("from . import x\n", "aigc_gateway.services.auth.envoy")) == [
        (1, "aigc_gateway.services.auth"), (1, "aigc_gateway.services.auth.x")]


# -- one shape per service (docs/architecture.md, "Inside a service") ---------------------------------------

SERVICE_NAMES = ("auth", "instance", "template", "usersync")
# Beside server.py and the conversion modules (messages.py, *_messages.py), the only modules that may use the
# contracts' messages: adapters calling another service through its contract, and a second servicer.
CONTRACT_USERS = {
    ("template", "handoff.py"): "calls usersync and instance on a template delete",
    ("usersync", "userdeleted.py"): "calls instance when a Logto user is deleted",
    ("auth", "envoy.py"): "Envoy's ext_authz servicer, a second contract the auth server serves",
}
# Class names that say what a part does: one of each per name across the services, so a reader (and a
# stack trace) tells the auth AccessChecker from the instance ConsistencyChecker.
ROLE_SUFFIXES = ("Checker", "Reconciler", "Service", "Servicer")


def is_message_module(filename: str) -> bool:
    return filename in ("server.py", "messages.py") or filename.endswith("_messages.py")


def contract_violations(path: Path, service: str, module: str, source: str) -> list[str]:
    """Imports of the contracts' generated code (``aigc_gateway.api...._pb2``) where they do not belong: messages
    (``*_pb2``) only in server.py, the conversion modules and CONTRACT_USERS; the generated servicer and stub
    code (``*_pb2_grpc``) there and in app.py (which registers the servicers)."""
    if is_message_module(path.name) or (service, path.name) in CONTRACT_USERS:
        return []
    found = []
    for line, target in imported(source, module, path.name == "__init__.py"):
        last = target.rpartition(".")[2]
        if not is_under(target, "aigc_gateway.api") or "_pb2" not in last:
            continue
        if path.name == "app.py" and last.endswith("_pb2_grpc"):
            continue
        found.append(f"{path.relative_to(ROOT)}:{line}: {module} imports {target}")
    return sorted(set(found))


def defines(source: str, kind: type[ast.AST], name: str) -> bool:
    return any(isinstance(node, kind) and getattr(node, "name", None) == name for node in ast.parse(source).body)


def test_every_service_has_the_same_rooms() -> None:
    """server.py (the servicer), app.py (the service object and build(), which server.load_service calls),
    and no service.py mixing the two."""
    problems = []
    for name in SERVICE_NAMES:
        folder = SERVICES / name
        for needed in ("server.py", "app.py"):
            if not (folder / needed).is_file():
                problems.append(f"services/{name}/{needed} is missing")
        if (folder / "service.py").exists():
            problems.append(f"services/{name}/service.py: the service object belongs in app.py")
        if (folder / "app.py").is_file() and not defines((folder / "app.py").read_text(), ast.FunctionDef, "build"):
            problems.append(f"services/{name}/app.py defines no build(runtime)")
        if (folder / "server.py").is_file() and defines((folder / "server.py").read_text(), ast.FunctionDef, "build"):
            problems.append(f"services/{name}/server.py defines build(): the wiring belongs in app.py")
    assert problems == [], "\n".join(problems)


def test_only_servicers_and_conversion_modules_use_the_contracts_messages() -> None:
    found = [v for path, service, name in service_modules()
             for v in contract_violations(path, service, name, path.read_text())]
    assert found == [], ("protobuf messages are built in server.py or a messages module next to it, not in "
                         "domain modules or adapters:\n" + "\n".join(found))


def test_role_class_names_are_unique_across_services() -> None:
    seen: dict[str, list[str]] = {}
    for path, _, _ in service_modules():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef) and node.name.endswith(ROLE_SUFFIXES):
                seen.setdefault(node.name, []).append(str(path.relative_to(ROOT)))
    same = {name: paths for name, paths in seen.items() if len(paths) > 1}
    assert same == {}, f"two different classes with one name: {same}"


def test_a_domain_module_using_the_contracts_is_named_but_servicers_and_conversions_are_not() -> None:
    module = "aigc_gateway.services.instance.status"
    source = "from aigc_gateway.api.v1 import common_pb2, instance_pb2\nfrom . import templates\n"
    assert contract_violations(SERVICES / "instance" / "status.py", "instance", module, source) == [
        "services/instance/status.py:1: aigc_gateway.services.instance.status imports aigc_gateway.api.v1.common_pb2",
        "services/instance/status.py:1: aigc_gateway.services.instance.status imports "
        "aigc_gateway.api.v1.instance_pb2"]
    for filename in ("server.py", "messages.py", "quota_messages.py"):
        assert contract_violations(SERVICES / "instance" / filename, "instance", module, source) == []
    assert contract_violations(SERVICES / "template" / "handoff.py", "template", module, source) == []
    app = "from aigc_gateway.api.v1 import instance_pb2_grpc\n"
    assert contract_violations(SERVICES / "instance" / "app.py", "instance", module, app) == []
    assert contract_violations(SERVICES / "instance" / "app.py", "instance", module,
                               "from aigc_gateway.api.v1 import instance_pb2\n") != []
    # The well-known types (a manifest as a Struct) are no contract of ours.
    assert contract_violations(SERVICES / "template" / "manifest.py", "template", module,
                               "from google.protobuf import struct_pb2\n") == []
