"""``python -m services.metric_ingestor``"""

from shared.service import service_main

from .service import IngestorSettings, start


def main() -> None:
    service_main("metric-ingestor", IngestorSettings, start)


if __name__ == "__main__":
    main()
