"""Quickstart: an online GRU learning the binary add task with exact RTRL, one sample at a time.

Prints the prequential (test-then-train) cross-entropy as it learns, next to
the task's known floors, and the throughput. Runs in a few seconds.
"""

import time

import numpy as np

import streamrnn as sr
from streamrnn.datasets import binary_add_task, binary_add_task_floors


def main():
    X, Y = binary_add_task(30_000, seed=0)
    model = sr.Model(
        cell="gru",
        n_inputs=1,
        n_hidden=16,
        n_outputs=1,
        task="binary",
        learner="rtrl",
        optimizer="adam",
        lr=1e-3,
        seed=0,
    )
    model.step_many(X[:10], Y[:10])  # compile (cached after the first run)
    model = sr.Model(**model.config)
    floors = binary_add_task_floors()
    print(
        f"floors (nats): no memory {floors['none']:.4f}, x[t-3] only {floors['first']:.4f}, "
        f"both lags {floors['both']:.4f}"
    )
    start = time.perf_counter()
    losses = []
    for lo in range(0, len(X), 5000):
        _, loss = model.step_many(X[lo : lo + 5000], Y[lo : lo + 5000], return_loss=True)
        losses.append(loss)
        print(f"steps {lo + 5000:>6}: mean loss over the last 5000 = {loss.mean():.4f}")
    elapsed = time.perf_counter() - start
    late = np.concatenate(losses)[-2000:].mean()
    print(f"last 2000 steps: {late:.4f} nats; {len(X) / elapsed:,.0f} samples/s; stats {model.stats}")


if __name__ == "__main__":
    main()
