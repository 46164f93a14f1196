"""Data-parallel training (wsis run --gpus N) on the CPU with the gloo backend: the same global
batches as one process, the loss goes down, rank 0 alone writes, and a SIGKILL resumes."""

import os
import signal
import subprocess
import time

import numpy as np
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from conftest import WSIS, tiny_args, wsis

# frozen BatchNorm: then 2 ranks of 4 images compute exactly the gradient of one batch of 8.
# BatchNorm stays frozen only on loaded weights (random ones unfreeze), hence a weights file.
SETTINGS = ("--device", "cpu", "--set", "backbone.freeze_bn=true", "--set", "train_cam.epochs=3",
            "--set", "train_cam.crop_size=96", "--set", "train_cam.resize_long=[80, 112]")


def weights_file(tmp_path):
    import torchvision
    torch.manual_seed(1)
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


def state(work):
    return torch.load(work / "train_cam" / "model.pt", weights_only=False)["state_dict"]


def training_loss(weights, data_root, start):
    """Multi-label loss on the tiny train images of a CAM net with ``weights``, or of the
    untrained one that train_cam starts from (backbone from the file ``start``)."""
    from pipelines.stages.train_cam import build_model
    from wsis.config import load_config
    from wsis.data import open_dataset
    cfg = load_config("synthetic", os.path.join(os.path.dirname(__file__), "tiny.toml"))
    ds = open_dataset("synthetic", cfg, data_root)
    torch.manual_seed(cfg["train_cam"]["seed"])
    model = build_model(ds.num_classes, dict(cfg["backbone"], weights=str(start), freeze_bn=True))
    if weights is not None:
        model.load_state_dict(weights)
    model.eval()
    with torch.no_grad():
        losses = [F.multilabel_soft_margin_loss(
            model(torch.from_numpy(ds.load_image(i)).permute(2, 0, 1)[None].float()),
            torch.from_numpy(ds.label_vector(i))[None]).item() for i in ds.ids("train")]
    return float(np.mean(losses))


def test_two_gloo_processes_train_like_one_and_resume_after_sigkill(tiny_data, tmp_path):
    single, ddp, killed = tmp_path / "single", tmp_path / "ddp", tmp_path / "killed"
    start = weights_file(tmp_path)
    DDP = SETTINGS + ("--set", f'backbone.weights="{start}"')
    wsis("run", "--stage", "train_cam", *tiny_args(tiny_data, single, *DDP))
    wsis("run", "--stage", "train_cam", "--gpus", "2", *tiny_args(tiny_data, ddp, *DDP))
    a, b = state(single), state(ddp)
    # the same global batches: equal up to float summation order (gradients are summed across
    # ranks instead of within one batch), far below what training moved
    torch.manual_seed(0)
    from pipelines.stages.train_cam import build_model
    init = build_model(5, {"depth": 18, "weights": str(start), "freeze_bn": True, "frozen_stages": 0}).state_dict()
    for k in a:
        if a[k].is_floating_point():
            moved = (a[k] - init[k]).abs().max().item()
            assert (a[k] - b[k]).abs().max().item() <= max(0.02 * moved, 1e-6), k
    assert training_loss(b, tiny_data, start) < training_loss(None, tiny_data, start)

    progress = killed / "train_cam" / "progress.json"
    proc = subprocess.Popen(WSIS + ["run", "--stage", "train_cam", "--gpus", "2",
                                    *map(str, tiny_args(tiny_data, killed, *DDP))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 600
    while not progress.is_file():
        assert proc.poll() is None, proc.communicate()[1].decode()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "train_cam" / "model.pt").exists()
    rerun = wsis("run", "--stage", "train_cam", "--gpus", "2", *tiny_args(tiny_data, killed, *DDP))
    assert "train_cam: resuming after epoch" in rerun.stdout + rerun.stderr
    c = state(killed)
    for k in b:
        torch.testing.assert_close(b[k], c[k], rtol=1e-5, atol=1e-6)


def _rank_main(rank, world, init_file, out_dir):
    import torch.distributed as dist

    import pipelines.trainer as training
    from pipelines.job import Job
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    writes = []
    original = training.save_checkpoint
    training.save_checkpoint = lambda path, **st: (writes.append(path.name), original(path, **st))
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    opt = training.sgd([(list(model.parameters()), 0.1)], 0.0, 0.0)
    x = torch.arange(24, dtype=torch.float32).reshape(8, 3) / 24
    y = x.sum(1, keepdim=True)
    seen = []

    def make_sample(index, epoch):
        return x[index], y[index], torch.tensor(index)

    def compute_loss(out, batch):
        seen.extend(batch[2].tolist())
        return F.mse_loss(out, batch[1]), {}

    job = Job("toy", {"run": {"amp": "off", "loader_workers": 0}}, None, (), out_dir, {}, "cpu")
    training.run_training(job, model, opt, epochs=2, num_samples=8, batch_size=4, seed=0,
                          make_sample=make_sample, collate=training.stack_samples,
                          forward=lambda net, b: net(b[0]), compute_loss=compute_loss)
    training.finish_training(job, "model.pt", state_dict=model.state_dict())
    (out_dir / f"rank{rank}.txt").write_text(f"{writes}\n{seen}")
    dist.destroy_process_group()
    from pipelines.distributed import leave_rank
    leave_rank()      # as wsis's ranks end (it skips a shutdown that gloo can abort)


def test_only_rank_zero_writes_and_ranks_split_each_batch(tmp_path):
    mp.spawn(_rank_main, args=(2, str(tmp_path / "init"), tmp_path), nprocs=2)
    (w0, s0), (w1, s1) = [(tmp_path / f"rank{r}.txt").read_text().splitlines() for r in (0, 1)]
    assert eval(w0) == ["checkpoint.pt", "checkpoint.pt", "model.pt"] and eval(w1) == []
    assert (tmp_path / "model.pt").is_file()
    # each epoch's samples are split between the ranks, none twice
    seen0, seen1 = eval(s0), eval(s1)
    assert len(seen0) == len(seen1) == 8 and sorted(seen0 + seen1) == sorted(list(range(8)) * 2)


def test_cached_views_pooled_by_two_gloo_processes_train_like_one(tiny_data, tmp_path):
    """train_cam.cached_views under --gpus 2: each rank pools every other image, the ranks sum
    their shares, and the head trains as in one process."""
    start = weights_file(tmp_path)
    cached = SETTINGS + ("--set", f'backbone.weights="{start}"', "--set", "backbone.frozen_stages=4",
                         "--set", "train_cam.cached_views=2")
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    wsis("run", "--stage", "train_cam", *tiny_args(tiny_data, single, *cached))
    run = wsis("run", "--stage", "train_cam", "--gpus", "2", *tiny_args(tiny_data, ddp, *cached))
    assert "crops pooled" in run.stdout + run.stderr
    a, b = state(single), state(ddp)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-6)
    assert training_loss(b, tiny_data, start) < training_loss(None, tiny_data, start)
