"""``python -m services.dashboard``"""

from shared.service import service_main

from .service import start
from .settings import DashboardSettings


def main() -> None:
    service_main("dashboard", DashboardSettings, start)


if __name__ == "__main__":
    main()
