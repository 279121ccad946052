"""Sealed message ids (shared.bus.identity.seal_message_id): deterministic for one key, unguessable
without it, bound to the subject, checked against HMAC-SHA256 built from SHA-256 alone (itself checked on RFC 4231's vector)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from shared.bus.identity import SEAL, NatsIdentity, seal_message_id
from shared.bus.natsauth import new_seed


def _identity(tmp_path: Path, name: str) -> NatsIdentity:
    seed = tmp_path / f"{name}.nk"
    seed.write_bytes(new_seed())
    return NatsIdentity(nkey_seed_file=seed)


def test_one_key_seals_alike_and_another_key_differently(tmp_path: Path) -> None:
    evaluator, trainer = _identity(tmp_path, "evaluator"), _identity(tmp_path, "trainer")
    key = evaluator.message_id_key()
    sealed = seal_message_id(key, "puyu.events.evaluation.completed", "eval:demo:1")
    assert sealed.startswith("eval:demo:1" + SEAL) and len(sealed) == len("eval:demo:1") + 33
    # a replica with the same seed seals alike (a re-publish is stored once) ...
    replica = NatsIdentity(nkey_seed_file=evaluator.nkey_seed_file)
    assert (
        seal_message_id(replica.message_id_key(), "puyu.events.evaluation.completed", "eval:demo:1") == sealed
    )
    # ... another identity cannot produce it, nor can the same key on another subject
    assert (
        seal_message_id(trainer.message_id_key(), "puyu.events.evaluation.completed", "eval:demo:1") != sealed
    )
    assert seal_message_id(key, "puyu.events.checkpoint.ready", "eval:demo:1") != sealed


def _hmac_sha256(key: bytes, data: bytes) -> str:
    """HMAC (RFC 2104) built from SHA-256 alone, as a reference independent of the hmac module."""
    key = key.ljust(64, b"\0")
    inner = hashlib.sha256(bytes(k ^ 0x36 for k in key) + data).digest()
    return hashlib.sha256(bytes(k ^ 0x5C for k in key) + inner).hexdigest()


def test_the_tag_is_hmac_sha256_and_an_identity_without_a_seed_does_not_seal() -> None:
    # the reference itself, on RFC 4231's test case 2
    assert _hmac_sha256(b"Jefe", b"what do ya want for nothing?") == (
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    )
    tag = _hmac_sha256(b"k" * 32, b"puyu.events.job.progress\nevt-1")[:32]
    assert seal_message_id(b"k" * 32, "puyu.events.job.progress", "evt-1") == f"evt-1{SEAL}{tag}"
    assert NatsIdentity().message_id_key() is None
    assert seal_message_id(None, "puyu.events.job.progress", "evt-1") == "evt-1"
