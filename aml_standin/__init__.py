"""NOT AZURE. Local stand-ins for Azure ML at the two SDKs' boundaries, for tests and offline demos.

:mod:`.v1` replaces azureml-core's ``Workspace``/``ComputeTarget``/``Experiment``/``Run`` and
receives the real ``ScriptRunConfig``; :mod:`.v2` replaces azure-ai-ml's ``MLClient`` and receives
the real command job. Both run the job locally, as strictly as the service would (statuses in
AML's order, minimal environment, the SDK's snapshot rules and error shapes, injectable faults).

Kept out of the service packages on purpose: the submitter imports it only when
``TUNEBUS_AML_STANDIN=1`` selects it, and says loudly then that trials do not run on Azure ML.
"""
