"""The training data path: DataLoader worker processes give exactly the batches that building
them in the training process gives (same images, crops, flips, order), so models and resumes
do not depend on the number of workers."""

import numpy as np
import torch

from conftest import tiny_args, wsis
from pipelines.trainer import batch_loader, epoch_order, stack_samples, to_device


def sample(index, epoch):
    """A sample that depends on (epoch, index) only, through its own RNG."""
    rng = np.random.default_rng([7, epoch, index])
    return torch.from_numpy(rng.integers(0, 255, (3, 4, 5), dtype=np.uint8)), torch.tensor(index)


def test_workers_give_the_same_batches_as_the_training_process():
    batches = [[(e, int(i)) for i in epoch_order(0, e, 10)[k:k + 4]] for e in range(2) for k in (0, 4)]
    in_process = list(batch_loader(sample, stack_samples, batches, 0, "cpu"))
    in_workers = list(batch_loader(sample, stack_samples, batches, 2, "cpu"))
    assert len(in_process) == len(in_workers) == 4
    for (a_img, a_idx), (b_img, b_idx), keys in zip(in_process, in_workers, batches):
        assert a_idx.tolist() == b_idx.tolist() == [i for _, i in keys]
        assert torch.equal(a_img, b_img)
        assert torch.equal(a_img[0], sample(keys[0][1], keys[0][0])[0])


def test_to_device_moves_nested_batches():
    batch = (torch.zeros(2), [{"masks": torch.ones(1, 2, 2), "n": 3}])
    moved = to_device(batch, "cpu")
    assert torch.equal(moved[0], batch[0]) and moved[1][0]["n"] == 3 and isinstance(moved, tuple)


def test_trained_cam_model_does_not_depend_on_loader_workers(tiny_data, tmp_path):
    weights = []
    for n in (0, 2):
        work = tmp_path / f"w{n}"
        wsis("run", "--stage", "train_cam", *tiny_args(tiny_data, work, "--set", f"run.loader_workers={n}"))
        weights.append(torch.load(work / "train_cam" / "model.pt", weights_only=False)["state_dict"])
    assert weights[0].keys() == weights[1].keys()
    for k in weights[0]:
        assert torch.equal(weights[0][k], weights[1][k]), k


def test_automatic_loader_workers_leave_the_cpu_to_the_model():
    import os

    import pytest

    from pipelines.trainer import loader_workers
    from wsis.errors import ConfigError
    assert loader_workers(-1, "cuda") == loader_workers(-1, "cuda:1") == (os.cpu_count() or 1)
    assert loader_workers(-1, "cpu") == 0
    assert loader_workers(3, "cpu") == 3 and loader_workers(0, "cuda") == 0
    with pytest.raises(ConfigError, match="run.loader_workers: -2"):
        loader_workers(-2, "cpu")
