"""Two registry replicas (separate processes, one PostgreSQL schema) race promotions and rollbacks.

Whatever the interleaving: one champion alias and one version in status "champion", the alias
history is one unbroken chain (every move starts where the previous one ended: no lost move), the
outbox holds one model.promoted per move in the same order, and an automatic promotion is decided
against the champion of the moment (the best version ends as champion).
"""

import itertools
import json
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, text

from contracts.events import ArtifactRef, EventEnvelope
from services.model_registry.core import VersionStatus
from services.model_registry.core.database import make_engine, migrate
from services.model_registry.core.registry import Registry

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
MOVES = ("promote", "manual_promote", "rollback")

# A replica: its own interpreter, engine and pool. It waits for a common start time, then works.
WORKER = textwrap.dedent(
    """
    import json, random, sys, time
    from contracts.events import ModelRef, TaskResult
    from services.model_registry.core import InvalidInput
    from services.model_registry.core.database import make_engine
    from services.model_registry.core.registry import Registry

    url, schema, role, start, plan = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5]
    reg = Registry(make_engine(url, schema=schema), consumer="model_registry")
    random.seed(role)
    steps = json.loads(plan)
    while time.time() < start:
        time.sleep(0.001)
    done = {"promote": 0, "rollback": 0, "rollback_refused": 0, "evaluate": 0}
    for kind, arg in steps:
        if kind == "promote":
            reg.promote("race", arg, actor=role, reason=f"{role} promotes {arg}")
            done["promote"] += 1
        elif kind == "rollback":
            try:
                reg.rollback("race", actor=role, reason=f"{role} rolls back")
                done["rollback"] += 1
            except InvalidInput:
                done["rollback_refused"] += 1
        else:
            ppl = 100.0 - arg  # a later version is strictly better
            res = [TaskResult(task="perplexity", metrics={"perplexity": ppl}, primary_metric="perplexity",
                              higher_is_better=False, version_hash="h", num_samples=4)]
            reg.record_evaluation(ModelRef(model_name="auto", version=arg), res, actor=role,
                                  event_id=f"eval:auto:{arg}")
            done["evaluate"] += 1
    print(json.dumps(done))
    """
)


@pytest.fixture
def pg() -> Iterator[tuple[Engine, str]]:
    try:
        admin = make_engine(PG_URL)
        with admin.connect() as c:
            c.execute(text("select 1"))
    except Exception as exc:
        pytest.skip(f"PostgreSQL not answering at {PG_URL}: {exc}")
    schema = f"registry_race_{uuid.uuid4().hex[:12]}"
    with admin.begin() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine = make_engine(PG_URL, schema=schema)
    try:
        yield engine, schema
    finally:
        engine.dispose()
        with admin.begin() as c:
            c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def replicas(schema: str, plans: dict[str, list[list[Any]]]) -> dict[str, dict[str, int]]:
    start = time.time() + 4.0  # after both interpreters have imported everything
    procs = {
        role: subprocess.Popen(
            [sys.executable, "-c", WORKER, PG_URL, schema, role, str(start), json.dumps(plan)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for role, plan in plans.items()
    }
    out = {}
    for role, p in procs.items():
        stdout, stderr = p.communicate(timeout=120)
        assert p.returncode == 0, f"replica {role} failed:\n{stderr[-3000:]}"
        out[role] = json.loads(stdout.strip().splitlines()[-1])
    return out


def art(n: int) -> ArtifactRef:
    return ArtifactRef(uri=f"file:///ckpt/{n}", sha256=f"{n:064x}", size_bytes=n)


def champion_state(reg: Registry, engine: Engine, model: str) -> tuple[int, list[int]]:
    with engine.connect() as c:
        aliases = c.execute(
            text(
                "SELECT count(*) FROM aliases a JOIN registered_models m ON m.id = a.model_id "
                "WHERE m.name = :m AND a.alias = 'champion'"
            ),
            {"m": model},
        ).scalar_one()
    assert aliases == 1, f"{aliases} champion aliases"
    champions = [v.version for v in reg.list_versions(model) if v.status == VersionStatus.CHAMPION]
    return reg.get_version(model, alias="champion").version, champions


def test_replicas_racing_keep_one_champion_lose_no_move_and_gate_against_the_current_champion(
    pg: tuple[Engine, str],
) -> None:
    engine, schema = pg
    migrate(engine)
    reg = Registry(engine)
    for i in range(1, 9):
        reg.register_version("race", art(i))
    for i in range(1, 17):
        reg.register_version("auto", art(i))
    # Manual promotions (both replicas, opposite orders) with rollbacks mixed in; then automatic
    # ones, interleaved so that each replica often evaluates a worse version than the other just
    # promoted (16 is the best).
    a: list[list[Any]] = [["promote", v] for v in (1, 3, 5, 7, 2, 4, 6, 8) * 3]
    b: list[list[Any]] = [["promote", v] for v in (8, 6, 4, 2, 7, 5, 3, 1) * 3]
    for i in range(4, len(b), 5):
        b.insert(i, ["rollback", 0])
    a += [["evaluate", v] for v in (16, 1, 14, 3, 12, 5, 10, 7)]
    b += [["evaluate", v] for v in (2, 15, 4, 13, 6, 11, 8, 9)]
    done = replicas(schema, {"replica-a": a, "replica-b": b})
    assert done["replica-a"]["promote"] == 24 and done["replica-b"]["promote"] == 24
    assert done["replica-a"]["evaluate"] == done["replica-b"]["evaluate"] == 8
    check_manual_race(reg, engine, done["replica-b"]["rollback"])
    check_automatic_race(reg, engine)


def check_manual_race(reg: Registry, engine: Engine, rollbacks: int) -> None:
    champion, champions = champion_state(reg, engine, "race")
    assert champions == [champion], f"alias says {champion}, statuses say {champions}"

    # The alias history is one chain: each move starts at the version the previous move left.
    moves = [e for e in reversed(reg.audit("race", 1000)) if e.action in MOVES]
    assert len(moves) >= 10 + rollbacks
    at: int | None = None
    for e in moves:
        start = e.details["rolled_back"] if e.action == "rollback" else e.details["previous"]
        assert start == at, f"lost alias move before audit entry {e}"
        at = e.version
    assert at == champion

    # One model.promoted per move, in the same order, each from where the last one left.
    promoted = [
        EventEnvelope.model_validate(env).payload
        for _, env in reg.pending_outbox(1000)
        if env["type"] == "model.promoted" and env["payload"]["model"]["model_name"] == "race"
    ]
    assert [p["model"]["version"] for p in promoted] == [e.version for e in moves]
    for before, after in itertools.pairwise(promoted):
        assert after["previous"]["version"] == before["model"]["version"]


def check_automatic_race(reg: Registry, engine: Engine) -> None:
    champion, champions = champion_state(reg, engine, "auto")
    assert champion == 16 and champions == [16], f"champion {champion}, statuses say {champions}"
    # Each promotion beat the champion it replaced: versions along the chain only go up.
    chain = [e for e in reversed(reg.audit("auto", 1000)) if e.action == "promote"]
    versions = [e.version or 0 for e in chain]  # every promotion names its version
    assert 0 not in versions and versions == sorted(versions)
    for e in chain:
        prev = e.details["previous"]
        assert prev is None or prev < e.version
    rejected = [e for e in reg.audit("auto", 1000) if e.action == "reject"]
    assert len(chain) + len(rejected) == 16
    for e in rejected:  # rejected against a champion that was better at that moment
        assert e.details["champion"] > e.version
    assert {v.status for v in reg.list_versions("auto")} <= {"champion", "archived", "rejected"}
