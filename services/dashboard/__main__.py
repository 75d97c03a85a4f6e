"""``python -m services.dashboard``"""

from shared.service import run_service

from .service import start
from .settings import DashboardSettings


def main() -> None:
    settings = DashboardSettings()
    run_service(lambda: start(settings), settings)


if __name__ == "__main__":
    main()
