"""``python -m services.tuner``"""

from shared.service import run_service

from .service import TunerSettings, start


def main() -> None:
    settings = TunerSettings()
    run_service(lambda: start(settings), settings)


if __name__ == "__main__":
    main()
