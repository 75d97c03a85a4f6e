"""``python -m services.dispatcher``"""

from shared.service import service_main

from .service import DispatcherSettings, start


def main() -> None:
    service_main("dispatcher", DispatcherSettings, start)


if __name__ == "__main__":
    main()
