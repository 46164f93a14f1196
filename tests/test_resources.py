"""Dask by resources: per-image stages declare whether they run a network ("gpu") or not
("cpu"). CPU work uses every core whatever --device says; network stages get one worker per
GPU on CUDA. No GPU is needed: the device is only named here."""

import os

from pipelines.dag import STAGES
from pipelines.engine import Stage
from pipelines.job import Job
from pipelines.runner import DaskRunner
from wsis.data import Dataset


def test_stage_declarations():
    gpu = {n for n, s in STAGES.items() if s.per_image is not None and s.resource == "gpu"}
    cpu = {n for n, s in STAGES.items() if s.per_image is not None and s.resource == "cpu"}
    # sam_refine: only with sam.enabled; seg_infer: the trained instance model's predictions
    assert gpu == {"make_cam", "irn_infer", "sam_refine", "seg_infer"}
    assert cpu == {"ir_label", "sem_seg", "ins_seg", "report_rows"}   # report_rows: arrays and pictures


def test_cpu_stages_get_every_core_when_cuda_is_requested():
    cuda = DaskRunner(None, 0, "cuda")
    assert [cuda.task_kind(STAGES[n]) for n in ("ir_label", "sem_seg", "ins_seg")] == ["cpu"] * 3
    assert [cuda.task_kind(STAGES[n]) for n in ("make_cam", "irn_infer")] == ["gpu"] * 2
    assert cuda.local_workers("cpu") == (os.cpu_count() or 1)
    cpu = DaskRunner(None, 0, "cpu")
    assert cpu.task_kind(STAGES["make_cam"]) == "cpu"      # networks on the CPU are CPU work
    assert DaskRunner(None, 3, "cuda").local_workers("cpu") == 3


def record(job, ids):
    import torch
    for i in ids:
        (job.out_dir / f"{i}.txt").write_text(f"{job.device} {torch.get_num_threads()}")


def test_cpu_tasks_of_a_cuda_run_run_on_the_cpu_in_every_worker(tmp_path):
    ds = Dataset("toy", tmp_path, ("a",), {"all": ("x", "y", "z")}, {i: (0,) for i in "xyz"})
    stage = Stage("toy", "toy", (), (), 1, lambda cfg: ["all"], per_image=record, output_name="{id}.txt")
    job = Job("toy", {"run": {"chunk_size": 1}}, ds, ("x", "y", "z"), tmp_path, {}, "cuda")
    runner = DaskRunner(None, 0, "cuda")
    try:
        runner.map(stage, job, ["x", "y", "z"])
        assert len(runner.client.scheduler_info()["workers"]) == (os.cpu_count() or 1)
        assert runner.gpu_client is None
    finally:
        runner.close()
    assert {(tmp_path / f"{i}.txt").read_text() for i in "xyz"} == {"cpu 1"}
