"""What a run's processes inherit from the controller: its environment, less its own credentials.

A run never talks to the bus or the services' APIs, so the service's PUYU_* tokens, keys and seeds
stay behind; the artifact store's keys (AWS_*, ...) go with it, since the run writes its checkpoints
into the store as the service would. A Kubernetes object takes no credential at all (it is kept in
etcd, readable by whoever may read Jobs): ``looks_secret`` tells the kubernetes launcher what to
refuse there, the store's keys reaching its pods through a Secret by reference."""

from __future__ import annotations

import re
from collections.abc import Mapping

# Words that name a credential anywhere in a variable's name, and shorter ones only as a whole word
# (TOKENIZERS_PARALLELISM and PYTHONHASHSEED are not credentials; HF_TOKEN and PUYU_NATS_NKEY_SEED_FILE are).
_SECRET = re.compile(
    r"PASSWORD|PASSWD|SECRET|CREDENTIAL|(^|_)(TOKEN|CREDS|NKEY|SEED|PRIVATE|KEY|APIKEY)(_|$)", re.I
)
# The variables of a Slurm job the controller itself may run in: they would bind a new job to it.
_SLURM_JOB_VAR = re.compile(r"^(SLURM_|SBATCH_|SRUN_|SALLOC_)")
_KEEP = {"SLURM_CONF"}


def looks_secret(name: str) -> bool:
    return bool(_SECRET.search(name))


def job_environment(base: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    """The controller's environment less its PUYU_* credentials and Slurm job variables, plus the
    run's own variables (the controller chose those: they are exported as given)."""
    env = {
        k: v
        for k, v in base.items()
        if not (k.startswith("PUYU_") and looks_secret(k)) and (k in _KEEP or not _SLURM_JOB_VAR.match(k))
    }
    env.update(extra)
    return env
