"""Two worker processes behind a gateway process, on a real nats-server, once per worker engine.

The workers (``python -m services.inference_gateway worker``) deploy every promotion and announce
their load in ``puyu_workers``; the gateway (no engines of its own) watches the bucket and routes.
One run, in phases: both workers deploy a promotion; their greedy tokens are transformers' (and
puyu's engine's) on the same model, and they refuse bad input; a busy worker gets fewer new
requests; a second promotion switches both workers under load with no failed request; killing a
worker under load fails no request (the ones it held are run again elsewhere), and it is dropped
from the view.

The run is the same for both engines: puyu's (the default) and vLLM's (``PUYU_WORKER_ENGINE=vllm``,
the workers started from ``.venv-vllm``'s Python, which ``make vllm-worker-env`` makes).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import psutil
import pytest
from nats.js.errors import KeyNotFoundError

from contracts.events import DeploymentReady, ModelPromoted, ModelRef
from contracts.events.inference import WorkerAnnouncement
from contracts.events.subjects import WORKERS_BUCKET
from contracts.proto.puyu.inference.v1 import inference_pb2, inference_pb2_grpc
from shared.artifacts import ArtifactStore
from shared.bus import Bus, HandlerContext
from shared.natsserver import NatsServer, free_port
from tests.support.fake_registry import FakeRegistry

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WORKERS = ("worker-a", "worker-b")
VLLM_PYTHON = Path(__file__).resolve().parents[2] / ".venv-vllm" / "bin" / "python"
# Greedy prompts (token ids are the tokenizer's; the same for both engines) and tokens per answer
GREEDY_PROMPTS = ("Traders meet", "The capital of aldoria is", "Wool salt copper and bright glass")
GREEDY_TOKENS = 24


@pytest.fixture(params=["puyu", "vllm"])
def engine(request: pytest.FixtureRequest) -> str:
    if request.param == "vllm" and not VLLM_PYTHON.exists():
        if os.environ.get("CI"):  # `make test` makes the venv: missing in CI is a failure
            pytest.fail(f"{VLLM_PYTHON} is missing: `make vllm-worker-env` makes it")
        pytest.skip(f"vLLM's worker venv is missing ({VLLM_PYTHON}): `make vllm-worker-env`")
    return str(request.param)


def _spawn(
    args: list[str], env: dict[str, str], log: Path, python: str = sys.executable
) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [python, "-m", "services.inference_gateway", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@pytest.fixture
def cluster(tmp_path: Path, engine: str) -> Iterator[dict[str, Any]]:
    from tests.support.tiny_model import build_serving_model  # torch: only when it runs

    store = ArtifactStore((tmp_path / "artifacts").as_uri())
    # head size 32: a model both engines serve (vLLM's CPU attention has no kernel below 32)
    folders = {
        v: build_serving_model(tmp_path / f"v{v}", seed=v, max_positions=2048, head_dim=32) for v in (1, 2)
    }
    refs = {v: store.put_dir(folders[v], f"models/demo/{v}") for v in (1, 2)}
    registry = FakeRegistry().start()  # attests each promotion the test publishes
    with NatsServer(tmp_path / "nats") as nats:
        base_env = {
            **os.environ,
            "PUYU_HOME": str(tmp_path / "home"),
            "PUYU_NATS_URL": nats.url,
            "PUYU_ARTIFACT_ROOT": store.root_uri,
            "PUYU_LOG_JSON": "false",
            "PUYU_REGISTRY_GRPC": registry.target,  # no champion yet: nothing to restore
            "PUYU_GATEWAY_NUM_THREADS": "1",
            "PUYU_GATEWAY_ANNOUNCE_INTERVAL": "0.2",
            # fp32: a request moved to another worker must get the same 1500 greedy tokens as a fresh
            # one, in another batch; bf16 rounding is not batch-invariant over that length
            "PUYU_GATEWAY_DTYPE": "float32",
            "OMP_NUM_THREADS": "1",
            "PUYU_WORKER_ENGINE": engine,
            # vLLM: no torch.compile of each version (half a minute per load on this CPU)
            "PUYU_WORKER_VLLM_ARGS": '{"enforce_eager": true}',
        }
        worker_python = str(VLLM_PYTHON) if engine == "vllm" else sys.executable
        ports = {name: (free_port(), free_port()) for name in (*WORKERS, "gateway")}
        procs: dict[str, subprocess.Popen[bytes]] = {}
        orphans: list[psutil.Process] = []
        for name in WORKERS:
            env = {
                **base_env,
                "PUYU_GATEWAY_INSTANCE": name,
                "PUYU_GATEWAY_GRPC_PORT": str(ports[name][0]),
                "PUYU_GATEWAY_HTTP_PORT": str(ports[name][1]),
            }
            procs[name] = _spawn(["worker"], env, tmp_path / f"{name}.log", worker_python)
        gw_env = {
            **base_env,
            "PUYU_GATEWAY_LOCAL_MODELS": "false",  # a pure router: every request goes to a worker process
            "PUYU_GATEWAY_WORKER_TTL": "2",
            "PUYU_GATEWAY_GRPC_PORT": str(ports["gateway"][0]),
            "PUYU_GATEWAY_HTTP_PORT": str(ports["gateway"][1]),
        }
        procs["gateway"] = _spawn([], gw_env, tmp_path / "gateway.log")
        try:
            deadline = time.monotonic() + 180
            for name, (_, http_port) in ports.items():
                while True:
                    assert procs[name].poll() is None, (tmp_path / f"{name}.log").read_text()[-3000:]
                    with contextlib.suppress(httpx.HTTPError):
                        if httpx.get(f"http://127.0.0.1:{http_port}/health", timeout=2).status_code == 200:
                            break
                    assert time.monotonic() < deadline, f"{name} not healthy"
                    time.sleep(0.3)
            yield {
                "engine": engine,
                "nats": nats.url,
                "registry": registry,
                "refs": refs,
                "folders": folders,
                "procs": procs,
                "grpc": {name: f"127.0.0.1:{p[0]}" for name, p in ports.items()},
                "gateway": f"http://127.0.0.1:{ports['gateway'][1]}",
                "logs": tmp_path,
                "orphans": orphans,
            }
        finally:
            for p in procs.values():
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in procs.values():
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(10)
            for orphan in orphans:
                with contextlib.suppress(psutil.NoSuchProcess):
                    orphan.kill()
            registry.stop()


class Load:
    """Clients that keep sending requests through the gateway until stopped; every outcome is kept."""

    def __init__(self, http: httpx.AsyncClient, clients: int = 3, stream_every: int = 0) -> None:
        self.http, self.clients, self.stream_every = http, clients, stream_every
        self.results: list[tuple[float, int, str, str]] = []  # (finished at, status, worker, error)
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def _one(self, i: int, stream: bool) -> tuple[int, str, str]:
        body = {
            "model": "demo",
            "prompt": f"Traders meet {i}",
            "max_tokens": 16,
            "temperature": 0,
            "stream": stream,
        }
        if not stream:
            r = await self.http.post("/v1/completions", json=body)
            return r.status_code, r.headers.get("x-puyu-worker", ""), "" if r.status_code == 200 else r.text
        async with self.http.stream("POST", "/v1/completions", json=body) as r:
            text = "".join([line async for line in r.aiter_lines()])
            ok = r.status_code == 200 and '"error"' not in text and "[DONE]" in text
            return (
                (r.status_code if ok else 599),
                r.headers.get("x-puyu-worker", ""),
                "" if ok else text[-500:],
            )

    async def _client(self, c: int) -> None:
        i = 0
        while not self._stop.is_set():
            i += 1
            stream = bool(self.stream_every) and i % self.stream_every == 0
            try:
                status, worker, error = await self._one(c * 1000 + i, stream)
            except httpx.HTTPError as exc:
                status, worker, error = 598, "", f"{type(exc).__name__}: {exc}"
            self.results.append((time.monotonic(), status, worker, error))

    def __enter__(self) -> Load:
        self._tasks = [asyncio.create_task(self._client(c)) for c in range(self.clients)]
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    async def finish(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    def failures(self) -> list[tuple[float, int, str, str]]:
        return [r for r in self.results if r[1] != 200]


async def _announced_load(kv: Any, instance: str) -> int:
    ann = WorkerAnnouncement.model_validate_json((await kv.get(instance)).value)
    return sum(s.running + s.waiting for s in ann.served)


async def _busy(target: str, stop: asyncio.Event, streams: int = 4) -> None:
    """Keep ``streams`` long generations running on one worker, directly (not through the gateway)."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)

        async def one() -> None:
            while not stop.is_set():
                req = inference_pb2.GenerateRequest(
                    model="demo",
                    prompt="The river",
                    local_only=True,
                    # past any EOS: each stream stays for the whole phase (one ending early on a fast
                    # engine dips the announced load, and routing with it)
                    params=inference_pb2.SamplingParams(max_tokens=1500, ignore_eos=True, stop=["@@@@"]),
                )
                call = stub.Generate(req)
                try:
                    async for _ in call:
                        if stop.is_set():
                            call.cancel()
                            return
                except grpc.aio.AioRpcError:
                    if stop.is_set():
                        return
                    raise

        await asyncio.gather(*[one() for _ in range(streams)])


def _reference_greedy(folder: Path) -> tuple[list[list[int]], list[list[int]], list[list[int]]]:
    """The prompts' token ids, and the greedy continuations (past any EOS) of transformers' Llama, step
    by step on the whole sequence, and of puyu's engine in this process; fp32 both."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from services.inference_gateway.core.engine import Engine
    from services.inference_gateway.core.sampling import SamplingParams

    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompts = [list(tokenizer(p)["input_ids"]) for p in GREEDY_PROMPTS]
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    hf: list[list[int]] = []
    with torch.no_grad():
        for ids in prompts:
            seq = list(ids)
            for _ in range(GREEDY_TOKENS):
                seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
            hf.append(seq[len(ids) :])
    engine = Engine.load(folder, dtype="float32", max_batch_size=4).start()
    try:
        params = SamplingParams(max_tokens=GREEDY_TOKENS, temperature=0, ignore_eos=True, logprobs=0)
        puyu = [[lp.token_id for lp in engine.generate_sync(ids, params).logprobs] for ids in prompts]
    finally:
        engine.close()
    return prompts, hf, puyu


async def _greedy_on_worker(target: str, prompt_ids: list[int]) -> list[int]:
    """A worker's greedy continuation of ``prompt_ids`` over gRPC Generate: its tokens' ids."""
    params = inference_pb2.SamplingParams(
        max_tokens=GREEDY_TOKENS, temperature=0, ignore_eos=True, logprobs=0, has_logprobs=True
    )
    request = inference_pb2.GenerateRequest(
        model="demo", prompt_ids=prompt_ids, local_only=True, params=params
    )
    async with grpc.aio.insecure_channel(target) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        return [lp.token_id for chunk in [c async for c in stub.Generate(request)] for lp in chunk.logprobs]


async def _refusal(target: str, request: inference_pb2.GenerateRequest) -> tuple[grpc.StatusCode, str]:
    async with grpc.aio.insecure_channel(target) as channel:
        try:
            async for _ in inference_pb2_grpc.InferenceStub(channel).Generate(request):
                pass
        except grpc.aio.AioRpcError as exc:
            return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


@pytest.mark.timeout(
    1500
)  # the vLLM run: each version loads in its engine-core process (about a minute here)
async def test_two_workers_spread_switch_and_survive_a_kill(cluster: dict[str, Any]) -> None:
    bus = Bus(cluster["nats"], "model-registry")  # what the registry would publish
    ready: asyncio.Queue[DeploymentReady] = asyncio.Queue()

    @bus.handle(DeploymentReady)
    async def on_ready(ctx: HandlerContext[DeploymentReady]) -> None:
        await ready.put(ctx.payload)

    await bus.start()
    try:
        async with httpx.AsyncClient(base_url=cluster["gateway"], timeout=60) as http:

            async def promote(version: int) -> None:
                cluster["registry"].promote("demo", version, cluster["refs"][version])
                await bus.publish(
                    ModelPromoted(
                        model=ModelRef(model_name="demo", version=version),
                        artifact=cluster["refs"][version],
                        reason="test",
                    ),
                    event_id=f"promoted:demo:{version}",
                )

            async def deployed(version: int) -> set[str]:
                got: set[str] = set()
                while got != set(WORKERS):
                    r = await asyncio.wait_for(ready.get(), 300 if cluster["engine"] == "vllm" else 90)
                    if r.model.version == version:
                        got.add(r.instance)
                return got

            async def served_by_gateway() -> set[str]:
                return {m["id"] for m in (await http.get("/v1/models")).json()["data"]}

            # 1. each worker deploys the promotion (its own consumer) and the gateway sees both
            await promote(1)
            assert await deployed(1) == set(WORKERS)
            for _ in range(100):
                if "demo:1" in await served_by_gateway():
                    break
                await asyncio.sleep(0.1)
            assert {"demo", "demo:1", "demo@champion"} <= await served_by_gateway()

            # 1b. each worker's greedy tokens are transformers' and puyu's engine's on the same model (fp32)
            prompts, hf, puyu = await asyncio.to_thread(_reference_greedy, cluster["folders"][1])
            assert puyu == hf
            for name in WORKERS:
                got = [await _greedy_on_worker(cluster["grpc"][name], ids) for ids in prompts]
                assert got == hf, (cluster["engine"], name)
            # ... and refuse bad input before any compute, naming it (out-of-vocabulary id, bad schema)
            bad_id = inference_pb2.GenerateRequest(model="demo", prompt_ids=[5, 100000], local_only=True)
            code, detail = await _refusal(cluster["grpc"]["worker-a"], bad_id)
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "100000" in detail, (code, detail)
            bad_schema = inference_pb2.GenerateRequest(
                model="demo",
                prompt="Wool",
                local_only=True,
                params=inference_pb2.SamplingParams(max_tokens=8, json_schema='{"type": 5}'),
            )
            code, detail = await _refusal(cluster["grpc"]["worker-a"], bad_schema)
            assert code == grpc.StatusCode.INVALID_ARGUMENT and detail, (code, detail)

            # 2. a busy worker gets fewer new requests: worker-a runs four long generations of its own
            kv = await bus.key_value(WORKERS_BUCKET)
            stop_busy = asyncio.Event()
            busy = asyncio.create_task(_busy(cluster["grpc"]["worker-a"], stop_busy))
            for _ in range(100):
                if await _announced_load(kv, "worker-a") >= 3:
                    break
                await asyncio.sleep(0.1)
            assert await _announced_load(kv, "worker-a") >= 3
            routed = collections.Counter()
            for i in range(10):
                r = await http.post(
                    "/v1/completions", json={"model": "demo", "prompt": f"Wool {i}", "max_tokens": 8}
                )
                assert r.status_code == 200, r.text
                routed[r.headers["x-puyu-worker"]] += 1
            stop_busy.set()
            await busy
            assert routed["worker-b"] >= 8, routed

            # 3. a new version under load: both workers load, warm and switch; no request fails
            load = Load(http, clients=3, stream_every=3)
            with load:
                await asyncio.sleep(0.5)
                await promote(2)
                assert await deployed(2) == set(WORKERS)
                for _ in range(200):  # until both announce v2 only (v1 drained and freed)
                    names = await served_by_gateway()
                    if "demo:2" in names and "demo:1" not in names:
                        break
                    await asyncio.sleep(0.1)
                await asyncio.sleep(0.5)
            await load.finish()
            assert "demo:2" in names and "demo:1" not in names, names
            assert len(load.results) >= 10 and not load.failures(), load.failures()[:3]

            # 4. worker-b is killed under load. Three long requests are on it for sure: worker-a is
            # kept busy by its own direct generations, so the gateway sends them to worker-b.
            stop_busy = asyncio.Event()
            busy = asyncio.create_task(_busy(cluster["grpc"]["worker-a"], stop_busy))
            for _ in range(100):
                if await _announced_load(kv, "worker-a") >= 3:
                    break
                await asyncio.sleep(0.1)
            # (1500 tokens, past any EOS: seconds of work, still running when worker-b dies;
            # finish_reason "length" below checks it ran to the end)
            long_body = {
                "model": "demo",
                "prompt": "Traders meet",
                "max_tokens": 1500,
                "temperature": 0,
                "ignore_eos": True,
            }
            held = [asyncio.create_task(http.post("/v1/completions", json=long_body)) for _ in range(3)]
            for _ in range(100):
                if await _announced_load(kv, "worker-b") >= 3:
                    break
                await asyncio.sleep(0.05)
            assert await _announced_load(kv, "worker-b") >= 3
            load = Load(http, clients=3)
            with load:
                await asyncio.sleep(0.3)
                # its children (vLLM's engine-core and worker processes) outlive it: the fixture stops them
                cluster["orphans"].extend(
                    psutil.Process(cluster["procs"]["worker-b"].pid).children(recursive=True)
                )
                cluster["procs"]["worker-b"].send_signal(signal.SIGKILL)
                killed_at = time.monotonic()
                moved = await asyncio.gather(*held)
                await asyncio.sleep(1)
                # requests that start now may still be sent to the dead worker first: before their
                # first token they move to worker-a, streamed or not
                after = [await load._one(9000 + i, stream=bool(i % 2)) for i in range(6)]
            await load.finish()
            stop_busy.set()
            await busy
            # the held requests ran again on worker-a, to the same greedy answer a fresh request gets
            reference = await http.post("/v1/completions", json=long_body)
            assert [(r.status_code, r.headers["x-puyu-worker"]) for r in moved] == [(200, "worker-a")] * 3
            assert {r.json()["choices"][0]["text"] for r in moved} == {reference.json()["choices"][0]["text"]}
            assert moved[0].json()["choices"][0]["finish_reason"] == "length"
            assert not load.failures(), load.failures()[:3]
            assert all(s == 200 and w == "worker-a" for s, w, _ in after), after
            late = [w for t, _, w, _ in load.results if t > killed_at + 1]
            assert late and set(late) == {"worker-a"}
            metrics = (await http.get("/metrics/")).text
            retries = next(
                float(line.split()[-1])
                for line in metrics.splitlines()
                if line.startswith("puyu_gateway_worker_retries_total")
            )
            assert retries >= 3  # the requests in flight on worker-b when it died were moved, not failed

            # the dead worker's announcement expires (ttl 2 s): the gateway lists only worker-a's models
            async with grpc.aio.insecure_channel(cluster["grpc"]["gateway"]) as channel:
                listed = await inference_pb2_grpc.InferenceStub(channel).ListModels(
                    inference_pb2.ListModelsRequest()
                )
            assert {m.worker for m in listed.models} == {"worker-a"}
            assert {m.name for m in listed.models} == {"demo", "demo:2", "demo@champion"}

            # a graceful stop (SIGTERM) withdraws the announcement at once, well inside its ttl:
            # routers stop sending new requests there before the process is gone
            cluster["procs"]["worker-a"].send_signal(signal.SIGTERM)
            stopped_at = time.monotonic()
            while time.monotonic() - stopped_at < 5:
                try:
                    await kv.get("worker-a")
                except KeyNotFoundError:
                    break
                await asyncio.sleep(0.05)
            withdrawn_after = time.monotonic() - stopped_at
            assert withdrawn_after < 1.5, f"announcement still there {withdrawn_after:.1f}s after SIGTERM"
            assert cluster["procs"]["worker-a"].wait(30) == 0
    finally:
        await bus.stop()
