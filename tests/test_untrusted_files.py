"""Files wsis did not write, or that were damaged after it wrote them (issue 21, points 5 and 6):
nothing loaded can run code, a damaged resume checkpoint costs one epoch, and a training
that diverges stops with one line and keeps its last good checkpoint."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import wsis
from pipelines import trainer
from pipelines.job import Job
from test_faults import one_line_error
from wsis.checkpoint import UnreadableCheckpoint, load_checkpoint, save_checkpoint
from wsis.errors import WsisError


class CreatesAFile:
    """Unpickling this calls open(marker, "w"): a stand-in for any code a crafted pickle runs."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def crafted_checkpoint(path, marker):
    torch.save({"arch": CreatesAFile(marker), "class_names": ["a"], "state_dict": {}}, path)
    return path


def test_a_crafted_checkpoint_runs_no_code(tmp_path):
    marker = tmp_path / "ran"
    path = crafted_checkpoint(tmp_path / "model.pt", marker)
    with pytest.raises(UnreadableCheckpoint, match="holds Python objects other than tensors"):
        load_checkpoint(path)
    assert not marker.exists()
    # and through the command that loads a user's file
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "a.png")
    proc = wsis("predict", "--checkpoint", path, tmp_path / "a.png", "--out", tmp_path / "out", "--device", "cpu",
                check=False)
    one_line_error(proc, str(path), "could run code")
    assert not marker.exists()


def test_checkpoints_of_plain_data_load(tmp_path):
    state = {"model": {"w": torch.ones(2)}, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "foreach": None}]},
             "epoch": 3, "arch": {"depth": 18, "name": "x"}, "class_names": ["a", "b"]}
    save_checkpoint(tmp_path / "c.pt", **state)
    back = load_checkpoint(tmp_path / "c.pt")
    assert back["epoch"] == 3 and back["class_names"] == ["a", "b"] and torch.equal(back["model"]["w"], torch.ones(2))


# ------------------------------------------------------------------------ training

X = torch.arange(24, dtype=torch.float32).reshape(8, 3) / 24
Y = X.sum(1, keepdim=True)


class Killed(Exception):
    pass


def train_toy(out_dir, epochs, poison_epoch=None, killed_in_epoch=None):
    """A linear model trained with run_training; samples of ``poison_epoch`` are NaN, and the
    first sample of ``killed_in_epoch`` stops the run as a kill would."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    opt = trainer.sgd([(list(model.parameters()), 0.1)], 0.9, 0.0)

    def make_sample(index, epoch):
        if epoch == killed_in_epoch:
            raise Killed
        x = X[index] * (float("nan") if epoch == poison_epoch else 1.0)
        return x, Y[index]

    job = Job("toy", {"run": {"amp": "off", "loader_workers": 0}}, None, (), out_dir, {}, "cpu")
    trainer.run_training(job, model, opt, epochs=epochs, num_samples=8, batch_size=4, seed=0,
                         make_sample=make_sample, collate=trainer.stack_samples,
                         forward=lambda net, b: net(b[0]), compute_loss=lambda out, b: (F.mse_loss(out, b[1]), {}))
    return model


def test_a_truncated_resume_checkpoint_costs_one_epoch(tmp_path, capsys):
    whole = train_toy(tmp_path / "whole", 4)
    work = tmp_path / "cut"
    with pytest.raises(Killed):
        train_toy(work, 4, killed_in_epoch=3)           # killed after epoch 3 of 4
    ckpt = work / trainer.CHECKPOINT_FILE
    ckpt.write_bytes(ckpt.read_bytes()[:200])           # the disk lost its tail
    capsys.readouterr()
    resumed = train_toy(work, 4)
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "discarded" in line]
    assert len(lines) == 1 and str(ckpt) in lines[0] and "truncated or corrupt" in lines[0], out
    assert "resuming after epoch 2 of 4" in out          # the epoch before: epoch 3 is trained again
    for a, b in zip(whole.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b)


def test_a_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(Killed):
        train_toy(tmp_path / "good", 4, killed_in_epoch=2)
    good = load_checkpoint(tmp_path / "good" / trainer.CHECKPOINT_FILE)["model"]
    work = tmp_path / "nan"
    with pytest.raises(WsisError) as e:
        train_toy(work, 4, poison_epoch=2)
    message = str(e.value)
    assert "toy: the loss became nan in epoch 3 of 4" in message and "checkpoint of epoch 2 is kept" in message
    kept = load_checkpoint(work / trainer.CHECKPOINT_FILE)
    assert kept["epoch"] == 1                            # 0-based: after the second epoch
    for name, p in good.items():
        torch.testing.assert_close(kept["model"][name], p)
