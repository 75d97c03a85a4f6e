"""``nni.common``: of NNI's common helpers, the ones an algorithm imports (``hpo_utils``)."""
