"""One PBT step: load the member's checkpoint, train a little, save, report (NNI's PBT trial shape).

The model is a linear regression fitted by noisy SGD with momentum; its hyperparameters are the
learning rate and the momentum. The checkpoint (weights, velocity, steps so far) travels from
trial to trial through ``load_checkpoint_dir`` and ``save_checkpoint_dir``, folders that tunebus
fills and saves (without ``all_checkpoint_dir``, in the experiment's storage).
"""

import json
import os

import nni
import numpy as np

ITERATIONS_PER_STEP = 50


def main() -> None:
    params = nni.get_next_parameter()
    load_path = os.path.join(params["load_checkpoint_dir"], "model.npz")
    save_path = os.path.join(params["save_checkpoint_dir"], "model.npz")

    rng = np.random.default_rng(0)
    features = rng.normal(size=(256, 8)) * np.logspace(0, 1, 8)  # ill-conditioned inputs
    target = features @ np.linspace(-1.0, 1.0, 8)
    if os.path.isfile(load_path):  # every step but the first continues a member's training
        saved = np.load(load_path)
        weights, velocity, steps = saved["weights"], saved["velocity"], int(saved["steps"])
    else:
        weights, velocity, steps = np.zeros(8), np.zeros(8), 0

    noise = np.random.default_rng(steps)
    for _ in range(ITERATIONS_PER_STEP):
        rows = noise.integers(len(features), size=16)
        gradient = features[rows].T @ (features[rows] @ weights - target[rows]) / len(rows)
        velocity = params["momentum"] * velocity - params["lr"] * gradient
        weights = np.clip(weights + velocity, -1e6, 1e6)
    loss = float(np.mean((features @ weights - target) ** 2))

    np.savez(save_path, weights=weights, velocity=velocity, steps=steps + 1)
    with open(os.path.join(params["save_checkpoint_dir"], "history.json"), "w") as out:
        json.dump({"steps": steps + 1, "loss": loss}, out)
    nni.report_final_result(loss if np.isfinite(loss) else 1e12)


if __name__ == "__main__":
    main()
