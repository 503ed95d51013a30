"""What every aigcctl command gets: the resolved settings, a client, the output format."""
from __future__ import annotations

from dataclasses import dataclass, field

import typer

from .client import Client
from .settings import CtlSettings


@dataclass
class Ctl:
    settings: CtlSettings
    output: str = "table"
    _client: Client | None = field(default=None, repr=False)

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.settings)
        return self._client

    @property
    def namespace(self) -> str:
        return self.settings.namespace

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def ctl(ctx: typer.Context) -> Ctl:
    obj = ctx.find_root().obj
    assert isinstance(obj, Ctl), "the root callback sets the context"
    return obj
