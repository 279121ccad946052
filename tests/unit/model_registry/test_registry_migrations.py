"""Alembic: from an empty database, between revisions with data in place, and no drift from the ORM."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect, text
from test_registry_core import _pg_engine, art

from services.model_registry.core import Registry
from services.model_registry.db import Base, current_revision, downgrade, make_engine, migrate


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        e = make_engine(f"sqlite:///{tmp_path / 'registry.db'}")
        yield e
        e.dispose()
    else:
        yield from _pg_engine()


def columns(engine: Engine, table: str) -> set[str]:
    return {c["name"] for c in inspect(engine).get_columns(table)}


def test_head_matches_the_orm(engine: Engine) -> None:
    migrate(engine)
    assert current_revision(engine) == "0002"
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], f"the ORM and the migrations disagree (write a revision): {diff}"


def test_upgrade_and_downgrade_keep_the_data(engine: Engine) -> None:
    migrate(engine, "0001")
    assert current_revision(engine) == "0001" and "tags" not in columns(engine, "registered_models")
    # the ORM is at head: rows are written with SQL as revision 0001 knew them
    with engine.begin() as c:
        c.execute(
            text(
                "INSERT INTO registered_models (name, latest_version, created_at) "
                "VALUES ('old', 1, CURRENT_TIMESTAMP)"
            )
        )
        mid = c.execute(text("SELECT id FROM registered_models WHERE name = 'old'")).scalar_one()
        c.execute(
            text(
                "INSERT INTO model_versions (model_id, version, artifact_uri, artifact_sha256, "
                "artifact_size, format, run_id, kind, method, datasets, hyperparameters, "
                "train_metrics, tags, status, created_at) VALUES (:m, 1, 'file:///a', :sha, 1, "
                "'hf-safetensors', 'r0', 'pretrain', 'full', '[]', '{}', '{}', '{}', 'candidate', "
                "CURRENT_TIMESTAMP)"
            ),
            {"m": mid, "sha": "a" * 64},
        )

    migrate(engine)  # 0001 -> 0002 with a row in place
    reg = Registry(engine)
    [m] = reg.list_models()
    assert (m["model_name"], m["tags"], m["description"]) == ("old", {}, "")
    assert reg.register_version("old", art(2))["version"] == 2  # type: ignore[index]
    reg.set_tags("old", set_={"k": "v"}, description="kept")

    downgrade(engine, "0001")
    assert current_revision(engine) == "0001" and "tags" not in columns(engine, "registered_models")
    with engine.connect() as c:
        assert c.execute(text("SELECT count(*) FROM model_versions")).scalar_one() == 2
    migrate(engine)
    assert [v["version"] for v in Registry(engine).list_versions("old")] == [1, 2]
