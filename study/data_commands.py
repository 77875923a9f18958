"""``stllr data make spoken_digits DIR``: generate a dataset the project makes itself."""

from __future__ import annotations

import argparse
import json
import time


def add_make_arguments(ap: argparse.ArgumentParser) -> None:
    from stllr_engine.datasets.spoken_digits import GENERATION

    ap.add_argument("dataset", choices=["spoken_digits"], help="what to generate")
    ap.add_argument("folder", help="where: writes FOLDER/SHD/shd_{train,test}.h5 (SHD's layout)")
    ap.add_argument("--speakers", type=int, default=GENERATION["speakers"], help="training voices (default %(default)s)")
    ap.add_argument("--test-speakers", type=int, default=GENERATION["test_speakers"],
                    help="held-out voices, never heard in training (default %(default)s)")
    ap.add_argument("--repeats", type=int, default=GENERATION["repeats"],
                    help="times each voice says each of the 20 words (default %(default)s)")
    ap.add_argument("--snr-db", type=float, nargs=2, metavar=("LOW", "HIGH"), default=[float(v) for v in GENERATION["snr_db"]],
                    help="white-noise SNR range in dB (default %(default)s)")
    ap.add_argument("--seed", type=int, default=GENERATION["seed"], help="the set (default %(default)s)")
    ap.add_argument("--workers", type=int, default=None, help="parallel syntheses (default: the cores, at most 8)")
    ap.add_argument("--json", action="store_true", help="print the summary as one JSON object")


def make(args: argparse.Namespace) -> int:
    from stllr_engine.datasets import spoken_digits

    from stllr_engine.errors import StllrError

    t = time.perf_counter()
    try:
        summary = spoken_digits.make(args.folder, workers=args.workers, progress=not args.json,
                                     speakers=args.speakers, test_speakers=args.test_speakers, repeats=args.repeats,
                                     snr_db=args.snr_db, seed=args.seed)
    except OSError as exc:
        raise StllrError(f"cannot write {args.folder}: {exc.strerror or exc}") from None
    summary["seconds"] = round(time.perf_counter() - t, 1)
    if args.json:
        print(json.dumps(summary))
    else:
        for split in ("train", "test"):
            s = summary[split]
            lo, mid, hi = s["spikes_per_sample"]
            print(f"{split}: {s['samples']} samples, {len(s['speakers'])} speakers, spikes per sample "
                  f"{lo} / {mid} / {hi} (min / median / max)")
        print(f"wrote {args.folder}/SHD/shd_train.h5 and shd_test.h5 in {summary['seconds']} s; read it with "
              f"load_dataset('shd', data_dir={args.folder!r}) or dataset.data_dir in a study")
    return 0
