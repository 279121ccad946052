"""Admission: per-key rate limits (429), queue limits (503 + Retry-After), request timeouts (504)."""

import asyncio
from pathlib import Path

import httpx

from services.inference_gateway.cli import build_serve_app
from services.inference_gateway.core.limits import Limits

LONG = {"model": "tiny", "prompt": "The river", "max_tokens": 240, "temperature": 0, "stop": ["@@@"]}


async def _until(cond, limit_s: float = 30) -> None:
    for _ in range(int(limit_s / 0.01)):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def _client(tiny_model: Path, limits: Limits, batch: int = 16):
    app, pool = build_serve_app(tiny_model, served_name="tiny", limits=limits, max_batch_size=batch)
    await pool.deploy("tiny", 1, tiny_model)
    pool.resolve("tiny").eos_ids = set()  # requests run their full length
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw", timeout=60), pool


async def test_rate_limit_per_key(tiny_model: Path) -> None:
    http, pool = await _client(tiny_model, Limits(api_keys=("a", "b"), requests_per_minute=2))
    try:
        body = {"model": "tiny", "prompt": "x", "max_tokens": 1}
        ha, hb = {"Authorization": "Bearer a"}, {"Authorization": "Bearer b"}
        codes = [(await http.post("/v1/completions", json=body, headers=ha)).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        r = await http.post("/v1/completions", json=body, headers=ha)
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["code"] == "rate_limit_exceeded"
        assert (await http.post("/v1/completions", json=body, headers=hb)).status_code == 200  # other key
    finally:
        await http.aclose()
        await pool.close()


async def test_queue_limit_and_timeout(tiny_model: Path) -> None:
    limits = Limits(max_queue=1)
    http, pool = await _client(tiny_model, limits, batch=1)
    engine = pool.resolve("tiny")
    try:
        # Queue limit: one request runs (batch of 1), one waits, the next is refused with Retry-After.
        started = asyncio.get_running_loop().time()
        running = asyncio.create_task(http.post("/v1/completions", json=LONG))
        await _until(lambda: engine.load_info()["running"] >= 1)
        waiting = asyncio.create_task(http.post("/v1/completions", json={**LONG, "max_tokens": 2}))
        await _until(lambda: engine.load_info()["waiting"] >= 1)
        r = await http.post("/v1/completions", json=LONG)
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert "waiting" in r.json()["error"]["message"]
        assert (await running).status_code == 200
        needed = asyncio.get_running_loop().time() - started
        assert (await waiting).status_code == 200

        # Timeout: a deadline of a quarter of what this machine needs for the request, whatever its speed.
        limits.request_timeout_s = max(needed / 4, 0.01)
        first = await http.post("/v1/completions", json=LONG)
        assert first.status_code == 504 and "timed out" in first.json()["error"]["message"]
        for _ in range(100):
            if engine.in_flight == 0:
                break
            await asyncio.sleep(0.02)
        assert engine.in_flight == 0  # the timed-out request was cancelled on the engine
    finally:
        await http.aclose()
        await pool.close()
