"""``python -m services.tuner``"""

import os

# Before numpy loads: one BLAS thread per algorithm call. The service runs many experiments' calls
# at once (each in its own thread), and OpenBLAS's own threads on top of those made scipy's L-BFGS-B
# 30 times slower on a busy 2-core host (benchmarks/README_tuners.md). A deployment may still set them.
for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

from shared.service import service_main  # noqa: E402  (after the thread settings above)

from .service import TunerSettings, start  # noqa: E402


def main() -> None:
    service_main("tuner", TunerSettings, start)


if __name__ == "__main__":
    main()
