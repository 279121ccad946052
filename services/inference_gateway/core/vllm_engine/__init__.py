"""vLLM as the engine of a worker (``PUYU_WORKER_ENGINE=vllm``): ``VllmEngine`` in ``engine.py``
(imports vLLM: only where it is installed), the request and output mappings in ``params.py`` and
``outputs.py`` (plain Python)."""

import importlib.util


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None
