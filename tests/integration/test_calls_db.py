"""The `calls` Alembic branch creates exactly the tables `ccmsec.db.calls` maps."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.operations import Operations

from ccmsec.db import calls as calls_db
from ccmsec.db import devices as devices_db
from ccmsec.db import lines as lines_db
from ccmsec.db.base import Base

MIGRATIONS = Path(calls_db.__file__).parent / "migrations" / "versions"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, MIGRATIONS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_calls_branch_creates_exactly_the_model_tables(tmp_path):
    migs = [_load("calls_0001_routing"), _load("calls_0002_softkeys"), _load("calls_0003_mobility_pin")]
    assert (migs[0].revision, migs[0].down_revision, migs[0].branch_labels) == ("calls_0001", None, ("calls",))
    assert [(m.revision, m.down_revision) for m in migs[1:]] == [("calls_0002", "calls_0001"),
                                                                 ("calls_0003", "calls_0002")]
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'm.db'}")
    ours = sa.MetaData(naming_convention=Base.metadata.naming_convention)
    tables = (calls_db.SpeedDial, calls_db.LineForward, calls_db.Region, calls_db.DeviceRegion,
              calls_db.MobilityUser, calls_db.MobilityLogin, calls_db.DeviceSoftkeys, calls_db.PoolSoftkeys)
    referred = [devices_db.Device.__table__.to_metadata(ours), lines_db.Line.__table__.to_metadata(ours),
                lines_db.DevicePool.__table__.to_metadata(ours)]
    for model in tables:
        model.__table__.to_metadata(ours)
    base = {"devices", "lines", "device_pools"}
    with engine.begin() as conn:
        for table in referred:   # the tables it refers to
            table.create(conn)
        with Operations.context(MigrationContext.configure(conn)):
            for mig in migs:
                mig.upgrade()
        names = set(sa.inspect(conn).get_table_names()) - base
        assert names == {m.__tablename__ for m in tables}
        assert compare_metadata(MigrationContext.configure(conn), ours) == []
        with Operations.context(MigrationContext.configure(conn)):
            for mig in reversed(migs):
                mig.downgrade()
        assert set(sa.inspect(conn).get_table_names()) == base
