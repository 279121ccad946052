"""A Hugging Face-style model card (YAML metadata header + markdown) for a registered version."""

from __future__ import annotations

from typing import Any

import yaml


def model_card(v: dict[str, Any]) -> str:
    name, num = v["model_name"], v["version"]
    parent = v.get("parent")
    meta: dict[str, Any] = {
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "tags": ["puyu", v["kind"], v["method"], v["status"]]
        + [f"{k}:{x}" for k, x in sorted((v.get("tags") or {}).items())],
    }
    if parent:
        meta["base_model"] = f"{parent['model_name']}:{parent['version']}"
    if v["datasets"]:
        meta["datasets"] = [d.get("dataset_id", str(d)) for d in v["datasets"]]
    if v["evaluations"]:
        meta["model-index"] = [
            {
                "name": f"{name}:{num}",
                "results": [
                    {
                        "task": {"type": "text-generation", "name": e["task"]},
                        "dataset": {"type": e["task"], "name": e["task"], "revision": e["version_hash"]},
                        "metrics": [
                            {"type": k, "value": float(x), "name": k} for k, x in sorted(e["metrics"].items())
                        ],
                    }
                    for e in v["evaluations"]
                ],
            }
        ]
    header = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)
    lines = [
        f"---\n{header}---",
        f"# {name} version {num}",
        "",
        f"Status: **{v['status']}**" + (f"; aliases: {', '.join(v['aliases'])}" if v["aliases"] else ""),
        "",
        "## Lineage",
        "",
        f"- kind: {v['kind']} ({v['method']}), run `{v['run_id'] or '-'}`",
        f"- parent: {meta.get('base_model', 'none (trained from scratch)')}",
        f"- artifact: `{v['artifact']['uri']}` (sha256 `{v['artifact']['sha256']}`, "
        f"{v['artifact']['size_bytes']} bytes, {v['format']})",
    ]
    lines += [
        f"- dataset: `{d.get('dataset_id')}` manifest `{d.get('manifest_uri')}` digest `{d.get('digest')}`"
        for d in v["datasets"]
    ]
    if v["hyperparameters"]:
        lines += [
            "",
            "## Hyper-parameters",
            "",
            "```yaml",
            yaml.safe_dump(v["hyperparameters"], sort_keys=True).rstrip(),
            "```",
        ]
    if v["evaluations"]:
        lines += ["", "## Evaluation", "", "| task | metric | value | samples |", "|---|---|---|---|"]
        lines += [
            f"| {e['task']} | {e['primary_metric']} | {e['metrics'].get(e['primary_metric'], float('nan')):.4g} "
            f"| {e['num_samples']} |"
            for e in v["evaluations"]
        ]
    return "\n".join(lines) + "\n"
