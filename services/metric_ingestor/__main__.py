"""``python -m services.metric_ingestor``"""

from shared.service import run_service

from .service import IngestorSettings, start


def main() -> None:
    settings = IngestorSettings()
    run_service(lambda: start(settings), settings)


if __name__ == "__main__":
    main()
