"""RoPE settings between the ``rope_theta`` + ``rope_scaling`` of older configs and transformers 5's ``rope_parameters``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shared.hf_models.formats import UnsupportedModel


def to_rope_parameters(
    rope_theta: float, rope_scaling: Mapping[str, Any] | None, allowed: frozenset[str], model_type: str
) -> dict[str, Any]:
    """``{"type"|"rope_type": kind, "factor": f, ...}`` and a base as one ``rope_parameters`` dict."""
    params: dict[str, Any] = {"rope_type": "default", "rope_theta": float(rope_theta)}
    if not rope_scaling:
        return params
    kind = rope_scaling.get("rope_type", rope_scaling.get("type"))
    if kind not in allowed:
        raise UnsupportedModel(
            f"{model_type} rope_scaling type {kind!r} is not supported (supported: {', '.join(sorted(allowed))})"
        )
    params.update({k: v for k, v in rope_scaling.items() if k not in ("type", "rope_type")})
    params["rope_type"] = kind
    return params


def from_rope_parameters(params: Mapping[str, Any], type_key: str) -> tuple[float, dict[str, Any] | None]:
    """The inverse: ``(rope_theta, rope_scaling)``, the scaling's kind under ``type_key``."""
    theta = float(params["rope_theta"])
    if params.get("rope_type", "default") == "default":
        return theta, None
    scaling = {k: v for k, v in params.items() if k not in ("rope_type", "rope_theta")}
    return theta, {type_key: params["rope_type"], **scaling}
