"""An NNI trial, unchanged: climbs towards a score that depends on x and y, reporting each step."""

import time

import nni

DEFAULTS = {"x": 0.5, "y": 0.5, "steps": 4}


def score(x, y):
    """Best (0) at x = 0.3, y = 0.7."""
    return -((x - 0.3) ** 2) - (y - 0.7) ** 2


def main(params):
    final = score(params["x"], params["y"])
    for step in range(1, params["steps"] + 1):
        # An intermediate result that approaches the final one, as a training curve would.
        nni.report_intermediate_result(final - 0.5 / step)
        time.sleep(0.2)
    nni.report_final_result(final)


if __name__ == "__main__":
    main({**DEFAULTS, **(nni.get_next_parameter() or {})})
