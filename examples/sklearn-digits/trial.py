"""An NNI trial, unchanged: an SVM on scikit-learn's handwritten digits.

Run by tunebus (``tunebus create --config config.yml``) it gets its parameters from the tuner
and reports to it; run directly (``python3 trial.py``) it uses the defaults below, like any
NNI trial run without NNI's runtime.
"""

import logging

import nni
from sklearn.datasets import load_digits
from sklearn.model_selection import StratifiedKFold, train_test_split
from sklearn.svm import SVC

LOG = logging.getLogger("sklearn_digits")

DEFAULTS = {"C": 1.0, "gamma": 0.001, "kernel": "rbf"}


def main(params):
    """Report the 3-fold cross-validation accuracies as intermediate results, the test accuracy as final."""
    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)

    def model():
        return SVC(C=params["C"], gamma=params["gamma"], kernel=params["kernel"])

    folds = StratifiedKFold(n_splits=3, shuffle=True, random_state=0)
    for fold, (fit_rows, val_rows) in enumerate(folds.split(X_train, y_train)):
        score = model().fit(X_train[fit_rows], y_train[fit_rows]).score(X_train[val_rows], y_train[val_rows])
        nni.report_intermediate_result({"default": score, "fold": fold})

    accuracy = model().fit(X_train, y_train).score(X_test, y_test)
    LOG.info("parameters %s: test accuracy %.4f", params, accuracy)
    nni.report_final_result(accuracy)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main({**DEFAULTS, **nni.get_next_parameter()})
