"""Imports every module that declares tables, so Alembic and tests see the whole schema.

Each service adds its ``models`` module here when it gets tables.
"""
from aigc_gateway.db import models  # noqa: F401
from aigc_gateway.services.auth import models as auth_models  # noqa: F401
from aigc_gateway.services.instance import idle_models as instance_idle_models  # noqa: F401
from aigc_gateway.services.instance import models as instance_models  # noqa: F401
from aigc_gateway.services.usersync import models as usersync_models  # noqa: F401
