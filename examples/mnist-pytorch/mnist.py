"""An NNI trial, unchanged: a small PyTorch network learning to read handwritten digits.

The data is scikit-learn's bundled ``load_digits``: 1,797 handwritten digits as 8x8 grey-scale
images (the UCI "Optical Recognition of Handwritten Digits" set), shipped inside the
scikit-learn package. It is NOT the 28x28 MNIST set — nothing is downloaded, so the trial runs
offline, on a CPU, in a few seconds. The name, the search space and the reporting follow NNI's
mnist-pytorch example.

Run by tunebus (``tunebus create --config config_aml.yml`` or ``config_local.yml``) it gets its
parameters from the tuner, reports the test accuracy after every epoch as an intermediate
result and the last one as the final result. Run directly (``python3 mnist.py``) it uses the
defaults below, as any NNI trial does without NNI's runtime.
"""

import logging
import time

import nni
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

LOG = logging.getLogger("mnist_pytorch")

DEFAULTS = {"batch_size": 64, "hidden_size": 256, "lr": 0.01, "momentum": 0.5, "epochs": 8, "seed": 0}


def load_data(seed):
    """Train and test tensors: pixels scaled to [0, 1], a stratified 75/25 split."""
    images, labels = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        images / 16.0, labels, test_size=0.25, random_state=seed, stratify=labels
    )
    as_x = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    as_y = lambda a: torch.tensor(a, dtype=torch.long)  # noqa: E731
    return as_x(x_train), as_y(y_train), as_x(x_test), as_y(y_test)


class Net(nn.Module):
    """Two fully connected layers with dropout: 64 pixels in, 10 digit scores out."""

    def __init__(self, hidden_size):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(64, hidden_size), nn.ReLU(), nn.Dropout(0.2), nn.Linear(hidden_size, 10)
        )

    def forward(self, x):
        return self.layers(x)


def train_epoch(model, optimizer, x, y, batch_size, device):
    """One pass over the training set in shuffled mini-batches."""
    model.train()
    loss_fn = nn.CrossEntropyLoss()
    for rows in torch.randperm(len(x)).split(batch_size):
        optimizer.zero_grad()
        loss = loss_fn(model(x[rows].to(device)), y[rows].to(device))
        loss.backward()
        optimizer.step()


def accuracy(model, x, y, device):
    """The share of ``x`` the model labels correctly."""
    model.eval()
    with torch.no_grad():
        predicted = model(x.to(device)).argmax(dim=1).cpu()
    return (predicted == y).float().mean().item()


def main(params):
    """Train for ``epochs`` epochs; report each epoch's test accuracy, then the last as final."""
    torch.manual_seed(params["seed"])
    torch.set_num_threads(1)  # a tiny model: several trials share a machine's cores better this way
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    x_train, y_train, x_test, y_test = load_data(params["seed"])
    model = Net(params["hidden_size"]).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=params["lr"], momentum=params["momentum"])
    started = time.perf_counter()
    score = 0.0
    for epoch in range(params["epochs"]):
        train_epoch(model, optimizer, x_train, y_train, params["batch_size"], device)
        score = accuracy(model, x_test, y_test, device)
        nni.report_intermediate_result(score)
        LOG.info("epoch %d: test accuracy %.4f", epoch + 1, score)
    LOG.info("parameters %s: final accuracy %.4f in %.1fs on %s", params, score,
             time.perf_counter() - started, device)
    nni.report_final_result(score)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main({**DEFAULTS, **nni.get_next_parameter()})
