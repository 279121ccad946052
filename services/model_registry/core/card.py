"""A Hugging Face-style model card (YAML metadata header + markdown) for a registered version."""

from __future__ import annotations

from typing import Any

import yaml

from services.model_registry.core.views import VersionView


def _metadata(v: VersionView) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "tags": ["puyu", v.kind, v.method, v.status.value] + [f"{k}:{x}" for k, x in sorted(v.tags.items())],
    }
    if v.parent:
        meta["base_model"] = f"{v.parent.model_name}:{v.parent.version}"
    if v.datasets:  # lineage as given: DatasetRef dumps, anything else as text
        meta["datasets"] = [d.get("dataset_id", str(d)) for d in v.datasets]
    if v.evaluations:
        meta["model-index"] = [
            {
                "name": f"{v.model_name}:{v.version}",
                "results": [
                    {
                        "task": {"type": "text-generation", "name": e.task},
                        "dataset": {"type": e.task, "name": e.task, "revision": e.version_hash},
                        "metrics": [
                            {"type": k, "value": float(x), "name": k} for k, x in sorted(e.metrics.items())
                        ],
                    }
                    for e in v.evaluations
                ],
            }
        ]
    return meta


def model_card(v: VersionView) -> str:
    meta = _metadata(v)
    header = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)
    a = v.artifact
    lines = [
        f"---\n{header}---",
        f"# {v.model_name} version {v.version}",
        "",
        f"Status: **{v.status.value}**" + (f"; aliases: {', '.join(v.aliases)}" if v.aliases else ""),
        "",
        "## Lineage",
        "",
        f"- kind: {v.kind} ({v.method}), run `{v.run_id or '-'}`",
        f"- parent: {meta.get('base_model', 'none (trained from scratch)')}",
        f"- artifact: `{a.uri}` (sha256 `{a.sha256}`, {a.size_bytes} bytes, {v.format})",
    ]
    lines += [
        f"- dataset: `{d.get('dataset_id')}` manifest `{d.get('manifest_uri')}` digest `{d.get('digest')}`"
        for d in v.datasets
    ]
    if v.hyperparameters:
        lines += [
            "",
            "## Hyper-parameters",
            "",
            "```yaml",
            yaml.safe_dump(v.hyperparameters, sort_keys=True).rstrip(),
            "```",
        ]
    if v.evaluations:
        lines += ["", "## Evaluation", "", "| task | metric | value | samples |", "|---|---|---|---|"]
        lines += [
            f"| {e.task} | {e.primary_metric} | {e.metrics.get(e.primary_metric, float('nan')):.4g} | {e.num_samples} |"
            for e in v.evaluations
        ]
    return "\n".join(lines) + "\n"
