"""The deployment's identity: a short random id, made once and kept in the system-of-record storage.

Azure ML run ids (and SDK v2 job names) are unique per *workspace*, not per tunebus deployment:
two deployments sharing a workspace (a test stack and production, say) could both name a run
``tunebus_<exp>_<trial>_<attempt>``, and one would adopt the other's run as its own. Every run
name and tag carries this id, so a run made by another deployment is never taken for ours.

``TUNEBUS_DEPLOYMENT_ID`` sets it; absent, the first submitter creates ``deployment.json``
(create-only: every replica ends up with the same id) and all later ones read it.
"""

from __future__ import annotations

import re
import secrets
import string

from pydantic import BaseModel, Field

from shared.storage import BlobStore, ConcurrentWriteError

__all__ = ["DEPLOYMENT_DOC", "DEPLOYMENT_ID_PATTERN", "DeploymentIdentity", "deployment_id"]

#: Blob path of the deployment's identity, beside the ``experiments/`` folder.
DEPLOYMENT_DOC = "deployment.json"
#: Short, lowercase, safe in AML run ids, v2 job names and tags.
DEPLOYMENT_ID_PATTERN = re.compile(r"^[a-z0-9]{4,16}$")
_ALPHABET = string.ascii_lowercase + string.digits


class DeploymentIdentity(BaseModel):
    """``deployment.json``: what makes this deployment's runs its own."""

    deployment_id: str = Field(pattern=DEPLOYMENT_ID_PATTERN.pattern,
                               description="Carried by every AML run id/job name and tag of this deployment.")


def _checked(value: str, source: str) -> str:
    if not DEPLOYMENT_ID_PATTERN.match(value):
        raise ValueError(f"{source}: deployment id {value!r} must be 4-16 lowercase letters or digits")
    return value


async def deployment_id(store: BlobStore, configured: str | None = None) -> str:
    """The deployment's id: ``configured`` (TUNEBUS_DEPLOYMENT_ID) if set, else the stored one.

    The first caller without a stored one creates it; a lost race reads the winner's.
    """
    if configured:
        return _checked(configured, "TUNEBUS_DEPLOYMENT_ID")
    for _ in range(3):
        found = await store.read_json(DEPLOYMENT_DOC)
        if found is not None:
            return DeploymentIdentity.model_validate(found[0]).deployment_id
        fresh = DeploymentIdentity(deployment_id="".join(secrets.choice(_ALPHABET) for _ in range(8)))
        try:
            await store.write_json(DEPLOYMENT_DOC, fresh.model_dump(), create_only=True)
            return fresh.deployment_id
        except ConcurrentWriteError:
            continue  # another replica wrote it first: read theirs
    raise RuntimeError(f"{DEPLOYMENT_DOC}: neither readable nor creatable")
