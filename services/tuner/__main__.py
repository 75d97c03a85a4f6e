"""``python -m services.tuner``"""

from shared.service import service_main

from .service import TunerSettings, start


def main() -> None:
    service_main("tuner", TunerSettings, start)


if __name__ == "__main__":
    main()
