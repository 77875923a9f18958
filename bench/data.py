"""``stllr bench data``: how long data loading takes next to an S-TLLR step on SHD.

Writes an SHD-format file of realistic size (``--samples`` train samples, default 1000,
~4000–12000 spikes each over 1 s on 700 channels, as ``spikes/times`` / ``spikes/units``
variable-length arrays like the real ``shd_train.h5``) into a temporary folder, then
measures, with a DataLoader of batch 128 (shuffled, ``FrameDataset.collate``):

* the first epoch (binning every sample into [100, 700] frames and filling the cache);
* a cached epoch (memory-mapped reads only), per batch: ``cached_data_time_s``;
* the SHD net's S-TLLR step on those batches (learn_steps 10 and the paper's SHD
  setting, learn_steps 90, in the engine's default mode), per batch: ``step_time_s``.

Target: after the first epoch, data time ≤ 10% of step time (ratio in the same run).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from bench.common import add_output_arguments, report, target, time_round_robin
from stllr_engine.datasets import FrameDataset, load_dataset
from stllr_engine.network import build_network, preset
from stllr_engine.stllr import STLLR_PRESETS, STLLRConfig, stllr_step

COLUMNS = ["samples", "batch", "first_epoch_time_s", "cached_epoch_time_s", "cached_data_time_s", "step_time_s",
           "learn_steps", "data_to_step_ratio"]


def write_shd_like(folder: Path, train: int, test: int, seed: int = 0) -> int:
    """Write ``SHD/shd_{train,test}.h5`` with random spike trains; returns the spike count."""
    import h5py

    rng = np.random.default_rng(seed)
    (folder / "SHD").mkdir(parents=True, exist_ok=True)
    total = 0
    for split, n in (("train", train), ("test", test)):
        with h5py.File(folder / "SHD" / f"shd_{split}.h5", "w") as f:
            times = f.create_dataset("spikes/times", (n,), dtype=h5py.vlen_dtype(np.float32))
            units = f.create_dataset("spikes/units", (n,), dtype=h5py.vlen_dtype(np.uint16))
            for i in range(n):
                k = int(rng.integers(4000, 12000))
                times[i] = np.sort(rng.uniform(0.0, 1.0, k)).astype(np.float32)
                units[i] = rng.integers(0, 700, k).astype(np.uint16)
                total += k
            f["labels"] = rng.integers(0, 20, n).astype(np.uint8)
            f["extra/speaker"] = rng.integers(0, 12, n).astype(np.uint8)
            f["extra/keys"] = np.array([f"digit-{i}".encode() for i in range(20)])
    return total


def _epoch(ds: FrameDataset, batch: int, seed: int) -> tuple[float, list[float], list[Any]]:
    """Iterate one shuffled epoch; returns (total time, per-batch fetch times, first batches)."""
    loader = DataLoader(ds, batch_size=batch, shuffle=True, collate_fn=FrameDataset.collate,
                        generator=torch.Generator().manual_seed(seed))
    per_batch: list[float] = []
    keep: list[Any] = []
    t_start = time.perf_counter()
    it = iter(loader)
    while True:
        t0 = time.perf_counter()
        try:
            b = next(it)
        except StopIteration:
            break
        per_batch.append(time.perf_counter() - t0)
        if len(keep) < 2:
            keep.append(b)
    return time.perf_counter() - t_start, per_batch, keep


def run(samples: int = 1000, batch: int = 128) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    root = Path(tempfile.mkdtemp(prefix="stllr-bench-data-"))
    try:
        spikes = write_shd_like(root, samples, max(samples // 5, 1))
        cache = root / "cache"
        t0 = time.perf_counter()
        train, _ = load_dataset("shd", data_dir=root, cache_dir=cache)
        _, first_batches, _ = _epoch(train, batch, 0)
        first_epoch = time.perf_counter() - t0  # binning + cache fill + one pass

        train, _ = load_dataset("shd", data_dir=root, cache_dir=cache)  # a cache hit
        cached_total, cached_batches, kept = _epoch(train, batch, 1)
        cached_data = float(np.median(cached_batches))

        net = build_network(preset("shd_rsnn"))
        frames, labels = kept[0]
        x = frames.transpose(0, 1).contiguous()
        cfgs = {10: STLLRConfig(learn_steps=10), 90: STLLR_PRESETS["shd"]}
        def timed(cfg: STLLRConfig) -> Any:
            return lambda: stllr_step(net, x, labels, cfg)

        times = time_round_robin({str(ls): timed(c) for ls, c in cfgs.items()}, 5, torch.device("cpu"))
        cache_bytes = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file())
        records: list[dict[str, Any]] = []
        for ls in cfgs:
            step = times[str(ls)]
            records.append({
                "dataset": "shd (generated, SHD format)", "samples": samples, "spikes": spikes, "batch": batch,
                "first_epoch_time_s": first_epoch, "first_epoch_data_time_s": float(np.median(first_batches)),
                "cached_epoch_time_s": cached_total, "cached_data_time_s": cached_data,
                "cached_data_time_per_sample_s": cached_data / batch,
                "step_time_s": step, "learn_steps": ls, "mode": cfgs[ls].mode,
                "data_to_step_ratio": cached_data / step, "cache_bytes": cache_bytes,
            })
        targets = [target(f"cached data time / S-TLLR step time (learn_steps={r['learn_steps']}), per batch",
                          float(r["data_to_step_ratio"]), "<=", 0.10) for r in records]
        return records, targets
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--samples", type=_positive, default=1000, help="train samples to generate (default 1000)")
    add_output_arguments(ap)


def execute(args: argparse.Namespace) -> int:
    return report(*run(samples=args.samples), args, COLUMNS)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="stllr bench data", description=__doc__.split("\n")[0])
    add_arguments(ap)
    return execute(ap.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
