"""``python -m services.aml_submitter``"""

from shared.service import service_main

from .service import SubmitterSettings, start


def main() -> None:
    service_main("aml-submitter", SubmitterSettings, start)


if __name__ == "__main__":
    main()
