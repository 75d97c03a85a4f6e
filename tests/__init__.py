"""The test suite (see tests/README.md)."""

import os

# Before numpy loads (the tuner tests run GP, Metis and DNGO in process): one BLAS thread, as the
# tuner service runs them; OpenBLAS's own threads on a loaded 2-core machine slow them many times.
for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")
