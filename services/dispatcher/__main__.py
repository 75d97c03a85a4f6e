"""``python -m services.dispatcher``"""

from shared.service import run_service

from .service import DispatcherSettings, start


def main() -> None:
    settings = DispatcherSettings()
    run_service(lambda: start(settings), settings)


if __name__ == "__main__":
    main()
