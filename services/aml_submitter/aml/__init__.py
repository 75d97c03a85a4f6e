"""The Azure Machine Learning backend: one AML run per trial.

Modules: :mod:`.backend` (the async side: submit, watch tickets, cancel, the trial's blob),
:mod:`.client` (the blocking side, in threads: sign-in, workspaces, runs, submit/adopt, poll,
cancel), :mod:`.sdk` (the SDK façades: azureml-core, azure-ai-ml, stand-ins), :mod:`.auth`
(credential chain), :mod:`.job` (snapshot and ``ScriptRunConfig``), :mod:`.v2` (azure-ai-ml's
command job), :mod:`.status` (AML run status → trial status, a failed run's reason),
:mod:`.errors` (transient or permanent), :mod:`.options` (knobs). The stand-in for AML that
tests run against lives apart, in :mod:`aml_standin`. A trial's metrics URL (deployment storage or
the experiment's sharedStorage) is made by the submitter with :mod:`shared.results`.

Nothing here imports azureml-core at import time: it is loaded on first use, and its absence
is reported as a clear submission error for ``platform: aml``.
"""
