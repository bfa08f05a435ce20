"""Alembic environment: migrations run on the connection `audit/migrations.py` opened and locked.

They never connect by themselves (no URL in an ini file): the service's own engine and its write lock
make an upgrade safe when several workers or instances start together.
"""

from alembic import context

from cds_service.audit.storage import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `cds-service db upgrade` (cds_service.audit.migrations)")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
