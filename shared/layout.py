"""Where everything of an experiment lives in blob storage. Pure: no I/O, no SDK.

Kept apart from :mod:`shared.storage` so that the CLI (which talks to storage through the
stdlib client in :mod:`shared.blob_rest`) can use the same paths without importing Azure's SDK.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ACTIVE_PREFIX", "ALGORITHM_ROLES", "Layout", "active_marker"]

#: The config sections whose custom code (``className`` + ``codeDirectory``) travels as an archive.
ALGORITHM_ROLES = ("tuner", "assessor")


#: One empty blob per experiment that runs (written at its start and resume, deleted at its end):
#: what a restarted dispatcher lists to find the experiments it must keep going.
ACTIVE_PREFIX = "active-experiments/"


def active_marker(experiment_id: str) -> str:
    """The blob that marks ``experiment_id`` as running."""
    return f"{ACTIVE_PREFIX}{experiment_id}"


@dataclass(frozen=True)
class Layout:
    """Blob paths of one experiment. Pure: no I/O."""

    experiment_id: str

    @property
    def root(self) -> str:
        return f"experiments/{self.experiment_id}"

    @property
    def experiment_doc(self) -> str:
        return f"{self.root}/experiment.json"

    @property
    def secrets_doc(self) -> str:
        """The config's secrets (:class:`shared.config.ExperimentSecrets`): never in a message."""
        return f"{self.root}/secrets.json"

    @property
    def code_archive(self) -> str:
        return f"{self.root}/code.tar.gz"

    def algorithm_code_archive(self, role: str) -> str:
        """A custom tuner's or assessor's code (``role`` ``tuner`` or ``assessor``): the archive
        of its ``codeDirectory`` that ``tunebus create`` uploads, which the tuner service unpacks."""
        if role not in ALGORITHM_ROLES:
            raise ValueError(f"no algorithm role {role!r} (roles: {', '.join(ALGORITHM_ROLES)})")
        return f"{self.root}/algorithms/{role}.tar.gz"

    @property
    def state_doc(self) -> str:
        return f"{self.root}/state.json"

    def ended_chunk(self, chunk: int) -> str:
        """Chunk ``chunk`` (0-based) of the ended-trial log: an append blob of JSON-line trial
        records (:mod:`shared.records` says how it is written and read)."""
        if chunk < 0:
            raise ValueError(f"no ended-log chunk {chunk}")
        return f"{self.root}/trials-ended/{chunk:06d}.jsonl"

    def trial_root(self, trial_id: str) -> str:
        return f"{self.root}/trials/{trial_id}"

    def trial_doc(self, trial_id: str) -> str:
        return f"{self.trial_root(trial_id)}/trial.json"

    def attempt_root(self, trial_id: str, attempt: int = 1) -> str:
        # A run after a lost one writes apart, so the two never mix their metrics.
        root = self.trial_root(trial_id)
        return root if attempt == 1 else f"{root}/attempt-{attempt}"

    def results_blob(self, trial_id: str, attempt: int = 1) -> str:
        """The attempt's results: one append blob, one line-framed record per report.

        The submitter creates it before the trial starts; the trial gets a SAS scoped to this
        blob alone that may only append to it (:func:`shared.storage.results_sas_token`).
        """
        return f"{self.attempt_root(trial_id, attempt)}/results.jsonl"

    def log_blob(self, trial_id: str, stream: str, attempt: int = 1) -> str:
        return f"{self.attempt_root(trial_id, attempt)}/{stream}.log"

    def checkpoint_prefix(self, member: int, step: int) -> str:
        """PBT's checkpoint of population member ``member`` after step ``step``, when tunebus keeps
        them (:mod:`shared.checkpoints`): one blob per file, named by its path in the folder."""
        if member < 0 or step < 0:
            raise ValueError(f"no checkpoint for member {member}, step {step}")
        return f"{self.root}/checkpoints/{member}/{step}/"

    def claim_blob(self, trial_id: str, attempt: int) -> str:
        """Created (create-only) by the submitter that takes the job: at most one runs it."""
        return f"{self.trial_root(trial_id)}/claims/{attempt}.json"
