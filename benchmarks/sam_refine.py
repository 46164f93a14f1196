"""Per-image cost of the SAM refinement (stage sam_refine) on a 500 x 375 image.

SAM ViT-B (the architecture of Meta's sam_vit_b_01ec64.pth, random weights: the cost does not
depend on the weights), 5 IRN instances (ellipses) with 2 positive points each besides the
centroid, 1 negative point per other instance and the mask prompt (the defaults of [sam]).
Each configuration runs in its own process, so that its peak memory is its own; it prints:

* encoder: the image encoder, once per image (resize to 1024, normalise, pad, ViT);
* decoder per instance: the prompt encoder + mask decoder + upsampling of the 3 candidate
  masks to 500 x 375, for all instances in one batch, divided by the instance count;
* prompts and choice: building the prompts (centroids, CAM points, mask logits), choosing
  among the candidates and painting the instance map;
* the process CPU time of the encoder and of the whole image (robust when other jobs share
  the cores: divide by the threads for the wall time on idle cores);
* peak RSS (max resident set size of the process) and the RSS after building the model.

    python benchmarks/sam_refine.py                    # CPU, 1 and 2 threads
    python benchmarks/sam_refine.py --threads 4 --repeats 3
    python benchmarks/sam_refine.py --device cuda      # on a GPU (peak GPU memory too)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SIZE = (375, 500)
INSTANCES = 5
SAM_CONFIG = {"positive_points": 2, "negative_points": 1, "mask_prompt": True, "min_agreement": 0.5,
              "score_weight": 0.5}


def make_inputs(seed: int = 0):
    """An image, an ins_seg result of INSTANCES disjoint ellipses, their CAMs and displacement
    end points (every cell of an instance lands at its centre)."""
    rng = np.random.default_rng(seed)
    h, w = SIZE
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    instances = np.zeros((h, w), np.int32)
    cams = np.zeros((INSTANCES, h, w), np.float16)
    h4, w4 = -(-h // 4), -(-w // 4)
    endpoints = np.zeros((2, h4, w4), np.int64)
    for k in range(INSTANCES):
        cy, cx = (k + 0.5) * h / INSTANCES, rng.uniform(0.3, 0.7) * w
        ry, rx = 0.4 * h / INSTANCES, rng.uniform(0.1, 0.25) * w
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        instances[inside & (instances == 0)] = k + 1
        cams[k] = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (rx / 2) ** 2))
        cells = inside[2::4, 2::4][:h4, :w4]
        endpoints[0][cells], endpoints[1][cells] = int(cy) // 4, int(cx) // 4
    z = {"instances": instances, "classes": np.arange(INSTANCES), "scores": np.linspace(0.5, 1.0, INSTANCES),
         "margins": np.full(INSTANCES, 0.3, np.float32)}
    return image, z, endpoints, cams


def child(threads: int, device: str, repeats: int) -> dict:
    import torch

    from pipelines.stages.sam_refine import refine_image
    from wsis.models import sam as sam_model
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = sam_model.build_sam(sam_model.ARCHITECTURES["vit_b"]).to(device)
    rss_model = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    image, z, endpoints, cams = make_inputs()
    timings: dict[str, list[float]] = {"encoder": [], "decoder": [], "total": [], "encoder_cpu": [], "total_cpu": []}

    def timed(name, fn):
        def run(*args, **kwargs):
            start, cpu = time.perf_counter(), time.process_time()
            out = fn(*args, **kwargs)
            if device == "cuda":
                torch.cuda.synchronize()
            timings[name].append(time.perf_counter() - start)
            timings.get(f"{name}_cpu", []).append(time.process_time() - cpu)
            return out
        return run

    sam_model.encode_image = timed("encoder", sam_model.encode_image)
    sam_model.decode_masks = timed("decoder", sam_model.decode_masks)
    for _ in range(repeats + (device == "cuda")):     # on a GPU, a first warm-up run
        start, cpu = time.perf_counter(), time.process_time()
        out = refine_image(model, image, z, endpoints, SIZE, cams, list(range(INSTANCES)), SAM_CONFIG)
        timings["total"].append(time.perf_counter() - start)
        timings["total_cpu"].append(time.process_time() - cpu)
    if device == "cuda":
        timings = {k: v[1:] for k, v in timings.items()}
    med = {k: float(np.median(v)) for k, v in timings.items()}
    result = {"threads": threads, "device": device, "repeats": repeats, "instances": INSTANCES,
              "encoder_s": round(med["encoder"], 3), "decoder_per_instance_s": round(med["decoder"] / INSTANCES, 4),
              "prompts_and_choice_s": round(med["total"] - med["encoder"] - med["decoder"], 3),
              "per_image_s": round(med["total"], 3), "encoder_cpu_s": round(med["encoder_cpu"], 3),
              "per_image_cpu_s": round(med["total_cpu"], 3), "refined": int(out["refined"].sum()),
              "rss_after_model_mb": round(rss_model, 1),
              "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if device == "cuda":
        result["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        result["gpu"] = torch.cuda.get_device_name()
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child is not None:
        print(json.dumps(child(a.child, a.device, a.repeats)))
        return
    print(f"SAM ViT-B (random weights), {SIZE[1]}x{SIZE[0]} image, {INSTANCES} instances, device {a.device}, "
          f"median of {a.repeats}")
    for threads in a.threads:
        proc = subprocess.run([sys.executable, __file__, "--child", str(threads), "--device", a.device,
                               "--repeats", str(a.repeats)], capture_output=True, text=True, check=True)
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        gpu = f", peak GPU {r['peak_gpu_mb']:.0f} MB ({r['gpu']})" if "peak_gpu_mb" in r else ""
        print(f"{threads} thread(s): encoder {r['encoder_s']:.2f} s, decoder {r['decoder_per_instance_s']:.3f} s "
              f"per instance, prompts and choice {r['prompts_and_choice_s']:.2f} s -> {r['per_image_s']:.2f} s "
              f"per image (process CPU time: encoder {r['encoder_cpu_s']:.2f} s, image {r['per_image_cpu_s']:.2f} s); "
              f"peak RSS {r['peak_rss_mb']:.0f} MB ({r['rss_after_model_mb']:.0f} MB after building the model){gpu}",
              flush=True)


if __name__ == "__main__":
    main()
