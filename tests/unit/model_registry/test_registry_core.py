import os
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import Engine, inspect, text

from contracts.events import ArtifactRef, DatasetRef, EventEnvelope, ModelRef, TaskResult
from services.model_registry.core import InvalidInput, NotFound, PromotionPolicy, VersionStatus, model_card
from services.model_registry.core.database import make_engine, migrate
from services.model_registry.core.registry import Registry
from shared.errors import Refusal

PG_URL = os.environ.get("PUYU_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _pg_engine() -> Iterator[Engine]:
    try:
        admin = make_engine(PG_URL)
        with admin.connect() as c:
            c.execute(text("select 1"))
    except Exception as exc:
        pytest.skip(f"PostgreSQL not answering at {PG_URL}: {exc}")
    schema = f"registry_test_{uuid.uuid4().hex[:12]}"
    with admin.begin() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine = make_engine(PG_URL, schema=schema)
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.begin() as c:
            c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        e = make_engine(f"sqlite:///{tmp_path / 'registry.db'}")
        yield e
        e.dispose()
    else:
        yield from _pg_engine()


@pytest.fixture
def reg(engine: Engine) -> Registry:
    migrate(engine)
    return Registry(engine)


def art(n: int) -> ArtifactRef:
    return ArtifactRef(uri=f"file:///tmp/ckpt/{n}", sha256=f"{n:064x}", size_bytes=100 + n)


def results(ppl: float, acc: float) -> list[TaskResult]:
    return [
        TaskResult(
            task="perplexity",
            metrics={"perplexity": ppl},
            primary_metric="perplexity",
            higher_is_better=False,
            version_hash="p1",
            num_samples=32,
        ),
        TaskResult(
            task="demo_facts",
            metrics={"accuracy": acc},
            primary_metric="accuracy",
            higher_is_better=True,
            version_hash="f1",
            num_samples=20,
        ),
    ]


def outbox_ids(reg: Registry) -> list[str]:
    return [EventEnvelope.model_validate(e).id for _, e in reg.pending_outbox()]


def test_alembic_upgrade_from_empty(engine: Engine) -> None:
    assert "model_versions" not in inspect(engine).get_table_names()
    migrate(engine)
    migrate(engine)  # idempotent at head
    tables = set(inspect(engine).get_table_names())
    assert {
        "registered_models",
        "model_versions",
        "aliases",
        "evaluations",
        "deployments",
        "audit_log",
        "processed_events",
        "outbox",
        "alembic_version",
    } <= tables


def test_register_is_idempotent_per_event(reg: Registry) -> None:
    ds = [DatasetRef(dataset_id="d1", manifest_uri="file:///m", digest="x").model_dump()]
    v = reg.register_version("demo", art(1), run_id="r1", datasets=ds, event_id="ckpt:r1:10")
    assert v is not None and v.version == 1 and v.status == VersionStatus.CANDIDATE == "candidate"
    assert reg.register_version("demo", art(1), run_id="r1", event_id="ckpt:r1:10") is None
    assert [x.version for x in reg.list_versions("demo")] == [1]
    assert outbox_ids(reg) == ["registered:demo:1"]
    second = reg.register_version("demo", art(2), run_id="r2", event_id="ckpt:r2:10")
    assert second is not None and second.version == 2


def test_concurrent_registration_numbers_are_unique(reg: Registry) -> None:
    with ThreadPoolExecutor(6) as pool:
        out = list(pool.map(lambda i: reg.register_version("race", art(i), run_id=f"r{i}"), range(12)))
    assert sorted(v.version for v in out if v) == list(range(1, 13))


def test_bad_input_and_not_found(reg: Registry) -> None:
    with pytest.raises(InvalidInput):
        reg.register_version("bad name!", art(1))
    with pytest.raises(InvalidInput):
        reg.register_version("m", ArtifactRef(uri="file:///x", sha256="nothex", size_bytes=1))
    with pytest.raises(NotFound):
        reg.get_version("nope", version=1)
    reg.register_version("m", art(1))
    with pytest.raises(NotFound):
        reg.get_version("m", version=9)
    with pytest.raises(NotFound):
        reg.get_version("m", alias="champion")
    with pytest.raises(NotFound):
        reg.record_evaluation(ModelRef(model_name="m", version=5), results(10, 0.5))


def test_promotion_rejection_rollback_and_deployment_failure(reg: Registry) -> None:
    for i in (1, 2, 3, 4):
        reg.register_version("m", art(i), run_id=f"r{i}")
    out = reg.record_evaluation(ModelRef(model_name="m", version=1), results(40, 0.3), event_id="e1")
    assert out is not None and out.outcome == "promoted"
    assert reg.record_evaluation(ModelRef(model_name="m", version=1), results(40, 0.3), event_id="e1") is None
    assert reg.get_version("m", alias="champion").version == 1
    out = reg.record_evaluation(ModelRef(model_name="m", version=2), results(60, 0.3), event_id="e2")
    assert out is not None and out.outcome == "rejected" and "perplexity" in out.reason
    assert reg.get_version("m", version=2).status == "rejected"
    out = reg.record_evaluation(ModelRef(model_name="m", version=3), results(30, 0.4))
    assert out is not None and out.outcome == "promoted"
    assert reg.get_version("m", version=1).status == "archived"
    ids = outbox_ids(reg)
    assert {"promoted:m:1", "rejected:m:2", "promoted:m:3"} <= set(ids)

    back = reg.rollback("m", reason="bad answers")
    assert back.restored == 1 and back.rolled_back == 3
    assert reg.get_version("m", alias="champion").version == 1
    with pytest.raises(InvalidInput):
        reg.rollback("m")  # version 1 had no predecessor

    reg.promote("m", 4, reason="operator says so")
    assert reg.get_version("m", alias="champion").status == "champion"
    failed = reg.record_deployment(
        ModelRef(model_name="m", version=4), "w1", ok=False, error="OOM", event_id="d1"
    )
    assert failed is not None and failed.restored == 1
    assert reg.get_version("m", alias="champion").version == 1
    actions = [a.action for a in reg.audit("m")]
    assert actions.count("rollback") == 2 and "deployment_failed" in actions and "manual_promote" in actions
    reasons = " ".join(a.reason for a in reg.audit("m"))
    assert "deployment of version 4 failed on w1: OOM" in reasons
    card = model_card(reg.get_version("m", version=3))
    assert card.startswith("---\n") and "model-index" in card and "perplexity" in card


def test_failed_first_deployment_removes_alias(reg: Registry) -> None:
    reg.register_version("solo", art(1))
    reg.record_evaluation(ModelRef(model_name="solo", version=1), results(40, 0.3))
    out = reg.record_deployment(ModelRef(model_name="solo", version=1), "w", ok=False, error="boom")
    assert out is not None and out.restored is None
    with pytest.raises(NotFound):
        reg.get_version("solo", alias="champion")


def test_outbox_relay_marks_in_order_and_stops_at_a_failure(reg: Registry) -> None:
    for i in (1, 2, 3):
        reg.register_version("o", art(i))
    sent: list[str] = []

    def flaky(env: EventEnvelope) -> None:
        if env.id == "registered:o:2" and "fail" not in sent:
            sent.append("fail")
            raise ConnectionError("nats down")
        sent.append(env.id)

    res = reg.relay_outbox(flaky)
    assert (res.sent, res.more) == (1, True) and res.error and "nats down" in res.error
    assert outbox_ids(reg) == ["registered:o:2", "registered:o:3"]  # 3 did not overtake 2
    res = reg.relay_outbox(flaky)
    assert res.sent == 2 and res.error is None and not res.more
    assert sent == ["registered:o:1", "fail", "registered:o:2", "registered:o:3"]
    assert reg.pending_outbox() == []


def test_outbox_relay_crash_leaves_rows_for_the_next_sweep(reg: Registry) -> None:
    reg.register_version("c", art(1))
    reg.register_version("c", art(2))

    class Crash(BaseException):  # a process death: not an Exception the relay may handle
        pass

    def dies_after_first(env: EventEnvelope) -> None:
        if env.id == "registered:c:2":
            raise Crash

    with pytest.raises(Crash):
        reg.relay_outbox(dies_after_first)
    # the first row WAS published, but its mark died with the transaction: it goes again (the bus
    # drops the copy by Nats-Msg-Id); nothing is lost
    assert outbox_ids(reg) == ["registered:c:1", "registered:c:2"]
    got: list[str] = []
    assert reg.relay_outbox(lambda e: got.append(e.id)).sent == 2
    assert got == ["registered:c:1", "registered:c:2"]


def test_tags_on_versions_and_models_are_audited(reg: Registry) -> None:
    reg.register_version("t", art(1), tags={"origin": "run-1"})
    out = reg.set_tags("t", 1, set_={"reviewed": "yes", "team/owner": "nlp"}, reason="review done")
    assert out.tags == {"origin": "run-1", "reviewed": "yes", "team/owner": "nlp"}
    assert reg.set_tags("t", 1, delete=["origin"]).tags == {"reviewed": "yes", "team/owner": "nlp"}
    assert reg.get_version("t", version=1).tags == {"reviewed": "yes", "team/owner": "nlp"}
    reg.set_tags("t", set_={"domain": "aldoria"}, description="the demo model")
    [m] = reg.list_models()
    assert m.tags == {"domain": "aldoria"} and m.description == "the demo model"
    tag_entries = [a for a in reg.audit("t") if a.action == "tag"]
    assert len(tag_entries) == 3
    assert tag_entries[-1].reason == "review done" and tag_entries[-1].details["before"] == {
        "origin": "run-1"
    }
    with pytest.raises(InvalidInput, match="invalid tag key"):
        reg.set_tags("t", 1, set_={"bad key": "x"})
    with pytest.raises(NotFound, match="no tag"):
        reg.set_tags("t", 1, delete=["absent"])
    with pytest.raises(InvalidInput, match="nothing to change"):
        reg.set_tags("t", 1)
    with pytest.raises(NotFound):
        reg.set_tags("t", 7, set_={"a": "b"})


def test_manual_mode_waits_for_a_person(engine: Engine) -> None:
    migrate(engine)
    reg = Registry(engine, PromotionPolicy(mode="manual"))
    reg.register_version("mm", art(1))
    out = reg.record_evaluation(ModelRef(model_name="mm", version=1), results(40, 0.3))
    assert out is not None and out.outcome == "pending"
    with pytest.raises(NotFound):
        reg.get_version("mm", alias="champion")
    assert [e for e in outbox_ids(reg) if e.startswith("promoted")] == []
    assert "approval:mm:1" in outbox_ids(reg)  # automations hear that a person is needed
    assert reg.get_version("mm", alias="candidate").version == 1
    reg.promote("mm", 1, actor="alice", reason="approved after review")
    assert reg.get_version("mm", alias="champion").version == 1
    last = reg.audit("mm")[0]
    assert (last.action, last.actor, last.reason) == (
        "manual_promote",
        "alice",
        "approved after review",
    )
    assert any(i.startswith("promoted:mm:1") for i in outbox_ids(reg))
    assert reg.get_version("mm", version=1).aliases == ("champion",)  # no longer the candidate
    assert "remove_alias" in [a.action for a in reg.audit("mm")]


def test_user_alias_moves_are_audited_and_announced(reg: Registry) -> None:
    reg.register_version("al", art(1))
    reg.register_version("al", art(2))
    reg.set_alias("al", "staging", 1, actor="bob")
    reg.set_alias("al", "staging", 2, actor="bob", reason="next release")
    reg.set_alias("al", "staging", 2, actor="bob")  # no move: audited, not announced
    assert reg.get_version("al", alias="staging").version == 2
    moves = [
        EventEnvelope.model_validate(e).payload
        for _, e in reg.pending_outbox()
        if e["type"] == "model.alias_changed"
    ]
    assert [(p["model"]["version"], (p["previous"] or {}).get("version")) for p in moves] == [
        (1, None),
        (2, 1),
    ]
    assert moves[1]["reason"] == "next release"
    with pytest.raises(InvalidInput, match="invalid alias"):
        reg.set_alias("al", "9bad alias", 1)


def test_refusals_are_the_shared_refusal() -> None:
    # the bus rejects them without retries; no adapter maps them by hand
    assert issubclass(NotFound, Refusal) and issubclass(InvalidInput, Refusal)


def test_commits_that_wrote_events_wake_the_listeners(reg: Registry) -> None:
    woken: list[str] = []
    reg.on_commit(lambda: woken.append("wake"))
    reg.register_version("w", art(1), event_id="ckpt:w:1")
    assert woken == ["wake"]
    assert reg.register_version("w", art(1), event_id="ckpt:w:1") is None  # a duplicate writes nothing
    reg.set_tags("w", 1, set_={"k": "v"})  # audited, no event
    assert reg.get_version("w", version=1).version == 1
    assert woken == ["wake"]
    reg.promote("w", 1)
    assert woken == ["wake", "wake"]
    with pytest.raises(InvalidInput):
        reg.rollback("w")  # refused: rolled back, nothing committed, nobody woken
    assert woken == ["wake", "wake"]


def test_rollbacks_walk_back_the_chain_of_champions(reg: Registry) -> None:
    for i in (1, 2, 3, 4, 5):
        reg.register_version("ch", art(i))
    for i in (1, 2, 3, 4):
        reg.promote("ch", i)
    assert [reg.rollback("ch").restored for _ in range(3)] == [3, 2, 1]  # each one what it replaced
    with pytest.raises(InvalidInput, match="no previous champion"):
        reg.rollback("ch")
    assert [v.status for v in reg.list_versions("ch")] == [
        VersionStatus.CHAMPION,
        VersionStatus.REJECTED,
        VersionStatus.REJECTED,
        VersionStatus.REJECTED,
        VersionStatus.CANDIDATE,
    ]


def test_one_relay_at_a_time_on_postgres(reg: Registry, engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite is the single-replica embedded default")
    reg.register_version("r", art(1))
    inside, release = threading.Event(), threading.Event()

    def slow(env: EventEnvelope) -> None:
        inside.set()
        release.wait(10)

    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(reg.relay_outbox, slow)
        assert inside.wait(10)
        other = Registry(engine)  # another session on its own pooled connection: a second replica
        assert other.relay_outbox(lambda e: None).busy  # it does not send out of turn
        release.set()
        assert first.result(10).sent == 1
    assert reg.pending_outbox() == []


def test_card_puts_versions_side_by_side_with_standard_errors(reg: Registry) -> None:
    for i, acc in ((1, 0.5), (2, 0.9)):
        reg.register_version("c", art(i), run_id=f"r{i}")
        metrics = {"accuracy": acc, "accuracy_stderr": 0.02}
        result = TaskResult(
            task="demo_facts", metrics=metrics, primary_metric="accuracy", version_hash="h", num_samples=100
        )
        reg.record_evaluation(ModelRef(model_name="c", version=i), [result])
    card = model_card(reg.get_version("c", version=2), compare_with=[reg.get_version("c", version=1)])
    assert "| demo_facts | accuracy | 0.9 ± 0.02 |" in card  # the evaluation table shows the error
    assert "## Comparison" in card and "| demo_facts | accuracy | 0.9 ± 0.02 ▲ | 0.5 ± 0.02 |" in card
    assert "accuracy_stderr" not in card.split("---")[1]  # the model-index lists metrics, not errors


def test_a_head_to_head_result_counts_only_against_the_champion_it_was_judged_against(
    engine: Engine,
) -> None:
    from services.model_registry.core.policy import Gate

    migrate(engine)
    policy = PromotionPolicy(gates={"pairwise": Gate(min_win_rate=0.5, required=True)})
    reg = Registry(engine, policy)

    def pairwise(opponent: int | None) -> list[TaskResult]:
        return [
            TaskResult(
                task="pairwise",
                metrics={"win_rate": 0.9, "win_rate_lower": 0.7, "win_rate_upper": 1.0},
                primary_metric="win_rate",
                higher_is_better=True,
                version_hash=f"vs{opponent}",
                num_samples=20,
                opponent=None if opponent is None else ModelRef(model_name="m", version=opponent),
            )
        ]

    for i in (1, 2, 3, 4):
        reg.register_version("m", art(i), run_id=f"r{i}")
    assert reg.record_evaluation(ModelRef(model_name="m", version=1), pairwise(None)).outcome == "promoted"
    assert reg.record_evaluation(ModelRef(model_name="m", version=2), pairwise(1)).outcome == "promoted"
    # version 3 won against version 1, but version 2 is the champion now: not a win over it
    stale = reg.record_evaluation(ModelRef(model_name="m", version=3), pairwise(1))
    assert stale is not None and stale.outcome == "rejected"
    assert "judged against version 1, the champion is version 2" in stale.reason
    assert reg.record_evaluation(ModelRef(model_name="m", version=4), pairwise(2)).outcome == "promoted"


def test_the_card_shows_the_version_beside_its_parent_and_the_champion(reg: Registry) -> None:
    reg.register_version("m", art(1), run_id="r1")
    reg.record_evaluation(ModelRef(model_name="m", version=1), results(40, 0.3))
    reg.register_version("m", art(2), run_id="r2", parent=ModelRef(model_name="m", version=1))
    reg.record_evaluation(ModelRef(model_name="m", version=2), results(30, 0.5))  # the new champion
    reg.register_version("m", art(3), run_id="r3", parent=ModelRef(model_name="m", version=1))
    reg.record_evaluation(ModelRef(model_name="m", version=3), results(35, 0.4))
    card = reg.model_card("m", version=3)
    # one comparison table with the version, its parent (v1) and the champion (v2)
    assert "m:3" in card and "m:1" in card and "m:2" in card
    alone = reg.model_card("m", alias="champion")  # the champion: beside its parent only
    assert "m:1" in alone and "m:3" not in alone
