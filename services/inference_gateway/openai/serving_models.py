"""``/v1/models``: every name served, by this process or by the workers it routes to."""

from __future__ import annotations

from services.inference_gateway.openai.protocol import ModelCard, ModelList
from services.inference_gateway.router import Router


class OpenAIServingModels:
    def __init__(self, router: Router) -> None:
        self.router = router

    def list_models(self) -> ModelList:
        entries = {e.name: e for e in reversed(self.router.models())}  # a name once, this process's first
        return ModelList(
            data=[
                ModelCard(id=e.name, root=e.model_name, version=e.version, quantization=e.quantization)
                for e in sorted(entries.values(), key=lambda e: e.name)
            ]
        )
