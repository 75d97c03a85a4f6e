"""The Azure Machine Learning backend: one AML run per trial.

Modules: :mod:`.auth` (credential chain), :mod:`.job` (snapshot and ``ScriptRunConfig``),
:mod:`.status` (AML run status → trial status), :mod:`.errors` (transient or permanent),
:mod:`.backend` (submit, watch tickets, cancel). The stand-in for AML that tests run against
lives apart, in :mod:`aml_standin`. A trial's metrics URL (deployment storage or
the experiment's sharedStorage) is made by the submitter with :mod:`shared.results`.

Nothing here imports azureml-core at import time: it is loaded on first use, and its absence
is reported as a clear submission error for ``platform: aml``.
"""
