"""Alembic: from an empty database, between revisions with data in place, and no drift from the ORM."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import JSON, Engine, Integer, String, column, inspect, table, text
from test_registry_core import _pg_engine, art

from contracts.events import ModelRef
from services.model_registry.core import InvalidInput, VersionStatus
from services.model_registry.core.database import downgrade, make_engine, migrate
from services.model_registry.core.registry import Registry
from services.model_registry.core.schema import Base


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        e = make_engine(f"sqlite:///{tmp_path / 'registry.db'}")
        yield e
        e.dispose()
    else:
        yield from _pg_engine()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        if "alembic_version" not in inspect(conn).get_table_names():
            return None
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def columns(engine: Engine, table: str) -> set[str]:
    return {c["name"] for c in inspect(engine).get_columns(table)}


def test_head_matches_the_orm(engine: Engine) -> None:
    migrate(engine)
    assert current_revision(engine) == "0004"
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
    assert (m.model_name, m.tags, m.description) == ("old", {}, "")
    second = reg.register_version("old", art(2))
    assert second is not None and second.version == 2
    reg.set_tags("old", set_={"k": "v"}, description="kept")

    downgrade(engine, "0001")
    assert current_revision(engine) == "0001" and "tags" not in columns(engine, "registered_models")
    with engine.connect() as c:
        assert c.execute(text("SELECT count(*) FROM model_versions")).scalar_one() == 2
    migrate(engine)
    assert [v.version for v in Registry(engine).list_versions("old")] == [1, 2]


AUDIT = table(
    "audit_log",
    column("time", String),
    column("actor", String),
    column("action", String),
    column("model", String),
    column("version", Integer),
    column("reason", String),
    column("details", JSON),
)


def test_0003_fills_the_previous_champion_from_the_audit_log(engine: Engine) -> None:
    """A registry at 0002 with a history of champion moves: after the upgrade, rollbacks walk the
    same chain the audit log described, with no audit log left to read."""
    migrate(engine, "0002")
    with engine.begin() as c:
        c.execute(
            text(
                "INSERT INTO registered_models (name, latest_version, created_at, description, tags) "
                "VALUES ('old', 4, CURRENT_TIMESTAMP, '', '{}')"
            )
        )
        mid = c.execute(text("SELECT id FROM registered_models WHERE name = 'old'")).scalar_one()
        for n, status in ((1, "archived"), (2, "archived"), (3, "champion"), (4, "candidate")):
            c.execute(
                text(
                    "INSERT INTO model_versions (model_id, version, artifact_uri, artifact_sha256, "
                    "artifact_size, format, run_id, kind, method, datasets, hyperparameters, "
                    "train_metrics, tags, status, created_at) VALUES (:m, :n, 'file:///a', :sha, 1, "
                    "'hf-safetensors', 'r0', 'pretrain', 'full', '[]', '{}', '{}', '{}', :status, "
                    "CURRENT_TIMESTAMP)"
                ),
                {"m": mid, "n": n, "sha": f"{n:064x}", "status": status},
            )
        v3 = c.execute(
            text("SELECT id FROM model_versions WHERE model_id = :m AND version = 3"), {"m": mid}
        ).scalar_one()
        c.execute(
            text(
                "INSERT INTO aliases (model_id, alias, version_id, previous_version, updated_at) "
                "VALUES (:m, 'champion', :v, 2, CURRENT_TIMESTAMP)"
            ),
            {"m": mid, "v": v3},
        )
        moves = [  # (action, version, details) in the order they happened
            ("promote", 1, {"alias": "champion", "previous": None}),
            ("promote", 3, {"alias": "champion", "previous": 1}),  # overwritten below
            ("set_alias", 1, {"alias": "staging", "previous": None}),  # not a champion move
            ("promote", 2, {"alias": "champion", "previous": 1}),
            ("manual_promote", 3, {"alias": "champion", "previous": 2}),
            ("tag", 2, {"before": {}, "after": {"previous": 4}}),
        ]
        for action, version, details in moves:
            c.execute(
                AUDIT.insert().values(
                    time=text("CURRENT_TIMESTAMP"),
                    actor="test",
                    action=action,
                    model="old",
                    version=version,
                    reason="",
                    details=details,
                )
            )

    migrate(engine)  # through 0003, to the head the ORM is at
    assert current_revision(engine) == "0004"
    with engine.connect() as c:
        stored: dict[int, int | None] = dict(
            c.execute(text("SELECT version, previous_champion FROM model_versions ORDER BY version")).all()
        )
    assert stored == {1: None, 2: 1, 3: 2, 4: None}

    with engine.begin() as c:
        c.execute(text("DELETE FROM audit_log"))  # the chain lives in the column now
    reg = Registry(engine)
    assert [reg.rollback("old").restored for _ in range(2)] == [2, 1]
    with pytest.raises(InvalidInput, match="no previous champion"):
        reg.rollback("old")
    assert [v.status for v in reg.list_versions("old")][:3] == [
        VersionStatus.CHAMPION,
        VersionStatus.REJECTED,
        VersionStatus.REJECTED,
    ]

    downgrade(engine, "0002")
    assert current_revision(engine) == "0002" and "previous_champion" not in columns(engine, "model_versions")
    migrate(engine)
    assert "previous_champion" in columns(engine, "model_versions")


def test_0004_adds_the_quantization_lineage_and_keeps_the_versions(engine: Engine) -> None:
    """A registry at 0003 with a version upgrades in place (no lineage for it), registers a quantised
    version with its lineage, and downgrades to 0003 keeping both rows."""
    migrate(engine, "0003")
    with engine.begin() as c:
        c.execute(
            text(
                "INSERT INTO registered_models (name, latest_version, created_at, description, tags) "
                "VALUES ('old', 1, CURRENT_TIMESTAMP, '', '{}')"
            )
        )
        mid = c.execute(text("SELECT id FROM registered_models WHERE name = 'old'")).scalar_one()
        c.execute(
            text(
                "INSERT INTO model_versions (model_id, version, artifact_uri, artifact_sha256, "
                "artifact_size, format, run_id, kind, method, datasets, hyperparameters, "
                "train_metrics, tags, status, created_at) VALUES (:m, 1, 'file:///a', :sha, 1, "
                "'hf-safetensors', 'r0', 'pretrain', 'full', '[]', '{}', '{}', '{}', 'champion', "
                "CURRENT_TIMESTAMP)"
            ),
            {"m": mid, "sha": "a" * 64},
        )
    assert "quantization" not in columns(engine, "model_versions")
    migrate(engine)
    assert current_revision(engine) == "0004"
    reg = Registry(engine)
    lineage = {"method": "awq", "bits": 4, "group_size": 128, "quant_method": "awq"}
    quantised = reg.register_version(
        "old",
        art(2),
        kind="quantize",
        method="awq",
        parent=ModelRef(model_name="old", version=1),
        quantization=lineage,
    )
    assert quantised is not None and quantised.quantization == lineage
    assert reg.get_version("old", 1).quantization is None
    downgrade(engine, "0003")
    assert "quantization" not in columns(engine, "model_versions")
    with engine.connect() as c:
        assert c.execute(text("SELECT count(*) FROM model_versions")).scalar_one() == 2
