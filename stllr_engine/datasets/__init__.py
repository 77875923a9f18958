"""Datasets as float spike frames ``[T, ...]`` with integer labels.

>>> from stllr_engine.datasets import load_dataset, DATASETS
>>> train, test = load_dataset("synthetic_temporal", T=20, channels=8)
>>> frames, label = train[0]
>>> tuple(frames.shape), train.info.num_classes
((20, 8), 4)

Event datasets are read in tonic's on-disk layout and never downloaded:

=================== ================================================ =====================
name                files under ``data_dir``                         default frames
=================== ================================================ =====================
``shd``             ``SHD/shd_{train,test}.h5``                       [100, 700], 10 ms bins
``dvs_gesture``     ``DVSGesture/ibmGesture{Train,Test}/user*/N.npy`` [20, 2, 32, 32], 75 ms
``cifar10_dvs``     ``CIFAR10DVS/<class>/*.aedat4``                   [10, 2, 48, 48], equal
``nmnist``          ``NMNIST/{Train,Test}/<digit>/*.bin``             [10, 2, 34, 34], 30 ms
=================== ================================================ =====================

``mvsec`` (optical flow) reads ``mvsec/<sequence>_{data,gt}.hdf5`` in MVSEC's layout.
``synthetic_temporal``, ``digits`` and ``flow_synthetic`` are generated in memory.  Binning rules are
in :mod:`._binning`, the cache (keying, locking, faults) in :mod:`._cache`, each
format in its module's docstring.

Before binning, a load checks that one sample fits in memory, that the new cache
entries stay under ``max_cache_bytes`` (default ``$STLLR_MAX_CACHE_BYTES``, else
8 GiB) and that the cache folder has room for them; each refusal is one
:class:`~stllr_engine.errors.StllrError` line with the sizes, and nothing is written.
"""

from __future__ import annotations

from stllr_engine.datasets._base import DatasetInfo, FrameDataset
from stllr_engine.datasets._registry import DATASETS, DatasetSpec, load_dataset

__all__ = ["DATASETS", "DatasetInfo", "DatasetSpec", "FrameDataset", "load_dataset"]
