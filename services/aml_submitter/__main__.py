"""``python -m services.aml_submitter``"""

from shared.service import run_service

from .service import SubmitterSettings, start


def main() -> None:
    settings = SubmitterSettings()
    run_service(lambda: start(settings), settings)


if __name__ == "__main__":
    main()
