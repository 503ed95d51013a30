"""The environment bench/chaos.py and bench/replicas.py run in: a namespace of the test bed with two templates
(the stable-diffusion-cpu sample, hosts `<template>-<id>-cpu.aigc.test`), a database made by the migrations, a
token issuer (tests/plugins/oidc.py's) and the Logto double (tests/doubles/logto.py); all removed at the end.
With ``private_postgres`` the database is on a PostgreSQL server of the run's own (bench/chaos_restart.py), which
`pg-restart` crashes; it is given as ``postgres``."""
from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))


@contextlib.asynccontextmanager
async def environment(private_postgres: bool = False) -> AsyncIterator[dict[str, Any]]:
    """A namespace with two templates, a database, a token issuer and the Logto double, all removed after."""
    import asyncpg
    from chaos_restart import PrivatePostgres
    from install_burst import kubeconfig, server_url
    from joserfc.jwk import RSAKey

    from aigc_gateway.config import KubernetesConfig
    from aigc_gateway.db.migrate import upgrade
    from aigc_gateway.kube import GSS, NAMESPACE, Kube
    from tests.doubles.logto import LogtoDouble
    from tests.plugins.kube import load_sample
    from tests.plugins.oidc import Issuer, _serve

    run_id = uuid.uuid4().hex[:6]
    namespace, database = f"chaos-{run_id}", f"aigc_chaos_{run_id}"
    kube_path = kubeconfig()
    postgres = PrivatePostgres() if private_postgres else None
    server = postgres.start() if postgres is not None else server_url()
    admin = None  # a private server goes whole at the end (and its crashes would kill this connection)
    if postgres is not None:
        url = await postgres.create_database(database)
    else:
        admin = await asyncpg.connect(server.replace("postgresql+asyncpg://", "postgresql://"))
        await admin.execute(f'CREATE DATABASE "{database}"')
        url = server.rsplit("/", 1)[0] + f"/{database}"
        await asyncio.to_thread(upgrade, url)
    kube = await Kube.connect(KubernetesConfig(kubeconfig=kube_path))
    key = RSAKey.generate_key(2048, parameters={"kid": "chaos", "use": "sig", "alg": "RS256"})
    jwks, issuer_url = _serve({"keys": [key.as_dict(private=False)]})
    logto = LogtoDouble(signing_key="chaos-signing-key-" + "k" * 16)
    await logto.start()
    folder = Path(tempfile.mkdtemp(prefix="chaos-"))
    templates = ("chaos-a", "chaos-b")
    try:
        await kube.create(NAMESPACE, None, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        for name in templates:
            obj = load_sample("stable-diffusion-cpu", "aigc.test", namespace, rename=name)
            for conf in obj["spec"]["network"]["networkConf"]:
                if conf["name"] == "Host":
                    conf["value"] = conf["value"].replace("instances<id>-", f"{name}-<id>-")
            await kube.create(GSS, namespace, obj)
        yield {"namespace": namespace, "database_url": url, "kubeconfig": kube_path, "issuer": Issuer(issuer_url, key),
               "logto": logto, "templates": templates, "domain": "aigc.test", "folder": folder} | (
                   {"postgres": postgres} if postgres is not None else {})
        print(f"logs: {folder}")
    finally:
        await kube.delete(NAMESPACE, None, namespace)
        if admin is not None:
            await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            await admin.close()
        if postgres is not None:
            postgres.stop()
        await kube.close()
        await logto.stop()
        jwks.shutdown()
