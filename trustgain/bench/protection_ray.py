"""Protection at scale: the same ``trustgain protect`` batch on Ray with 2 workers vs 1 worker.

A folder of natural 32x32 RGB patches (:func:`trustgain.protection.patches.photo_patches`;
2,000 images, 200 with ``--quick``) is protected by :func:`trustgain.protection.batch.run_batch`
with ``ray_address="local"`` (each worker one CPU and one torch thread), once on a local Ray of
1 CPU and once of 2 CPUs. The per-image work is the CLI's: PGD at the default settings (eps 8,
20 steps, EoT) against a ``cnn`` surrogate trained here for two epochs on the patch training
split, the residual sealed into a PNG chunk; the driver writes every output and manifest line.
Timed from the first submission to the last manifest line; Ray start-up and a warm-up batch
(worker processes, imports, surrogate loading) are not timed. Target: 2 workers at least 1.6x
faster. The machine's load average is reported with the figures: on a shared machine the
speedup measures what the other processes leave free.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from trustgain.bench import Row

TARGET_SPEEDUP = 1.6
SIZES = {True: 200, False: 2000}


def _surrogate_folder(folder: Path) -> Path:
    import torch

    from trustgain.protection import patches, surrogates

    torch.set_num_threads(1)
    x, y, names = patches.load("train", 64)
    model = surrogates.train("cnn", x, y, epochs=2)
    return surrogates.save({"cnn": model}, folder,
                           meta={"n_classes": len(names), "channels": 3, "classes": names})


def _write_images(folder: Path, n: int, seed: int) -> None:
    from PIL import Image

    from trustgain.protection.patches import photo_patches

    folder.mkdir(parents=True)
    for i, patch in enumerate(photo_patches(n, seed=seed)):
        Image.fromarray(patch).save(folder / f"{i:05d}.png")


def _timed(job, work: Path, images: Path, warm: Path, workers: int) -> tuple[float, int]:
    """Seconds for the batch on a fresh local Ray of ``workers`` CPUs; images done."""
    import ray

    from trustgain.protection.batch import run_batch

    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    try:
        run_batch(warm, work / f"warm{workers}", job, ray_address="local", show_progress=False)
        started = time.perf_counter()
        summary = run_batch(images, work / f"out{workers}", job, ray_address="local",
                            show_progress=False)
        return time.perf_counter() - started, summary.done
    finally:
        ray.shutdown()


def run(quick: bool = False, device: str = "cpu") -> list[Row]:
    """Rows: seconds with 1 and 2 workers, ms per image, speedup (target >= 1.6x).

    ``device`` is unused: Ray workers here are CPU workers.
    """
    from trustgain.keys import KeyRing
    from trustgain.protection.api import ProtectConfig
    from trustgain.protection.batch_jobs import KEY_PURPOSE, KEY_STAGE, ProtectJob

    n = SIZES[quick]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="tg-bench-ray-") as tmp:
        work = Path(tmp)
        folder = str(_surrogate_folder(work / "surrogates"))
        _write_images(work / "images", n, seed=0)
        _write_images(work / "warm", 8, seed=1)
        key = KeyRing.generate().derive(KEY_STAGE, KEY_PURPOSE)
        job = ProtectJob(config=ProtectConfig(), key=key.material, key_id=key.key_id,
                         surrogates=(folder,), surrogate_digests=("bench",))
        seconds, done = {}, {}
        for workers in (1, 2):
            seconds[workers], done[workers] = _timed(job, work, work / "images", work / "warm",
                                                     workers)
    load_after = os.getloadavg()
    speedup = seconds[1] / seconds[2]
    load = (f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after, "
            f"{os.cpu_count()} cores")
    rows = [
        Row(f"ray 1 worker, {n} images 32x32", seconds[1], "s",
            note=f"{1000 * seconds[1] / n:.0f} ms/image; {done[1]} done"),
        Row(f"ray 2 workers, {n} images 32x32", seconds[2], "s",
            note=f"{1000 * seconds[2] / n:.0f} ms/image; {done[2]} done"),
        Row("ray speedup 2 vs 1 workers", speedup, "x", f">= {TARGET_SPEEDUP}",
            speedup >= TARGET_SPEEDUP and done[1] == done[2] == n, load),
    ]
    return rows


if __name__ == "__main__":  # pragma: no cover
    import argparse

    from trustgain.bench import format_table

    parser = argparse.ArgumentParser(prog="python -m trustgain.bench.protection_ray")
    parser.add_argument("--quick", action="store_true")
    print(format_table(run(quick=parser.parse_args().quick)))
