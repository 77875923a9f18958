"""``spoken_digits``: SHD's task, generated here — spoken words through a cochlea-like front end.

The 20 words of the Spiking Heidelberg Digits (zero–nine in English, labels 0–9; null–neun
in German, labels 10–19), spoken by text-to-speech voices (espeak-ng), turned into spikes
of 700 channels and written in SHD's own on-disk format, so that the project's ``shd``
loader and ``tonic.datasets.SHD`` read it unchanged::

    <dir>/SHD/shd_train.h5    spikes/times (seconds), spikes/units (0..699), labels,
    <dir>/SHD/shd_test.h5     extra/speaker, extra/keys, extra/meta_info/...
    <dir>/SHD/shd_{train,test}.h5.zip   the archives, as SHD is distributed (tonic looks for them)

How a sample is made (deterministic given ``seed``):

* **Speakers.** A speaker is an espeak-ng voice variant (human-sounding ones only), with a
  base pitch (25–75) and speed (130–190 words/min), and an English accent (US, British RP,
  Scottish, Lancaster, West Midlands, New York, Caribbean). Its German words use the German
  voice with the same variant, pitch and speed. ``speakers`` of them train and
  ``test_speakers`` others test: no test voice is heard in training (SHD's split is by
  speaker too).
* **Repetitions.** Each speaker says each word ``repeats`` times. Every repetition has its
  own pitch (±8), speed (±10 %), onset delay (0–100 ms) and white noise at an SNR drawn
  from ``snr_db`` (after the speech is scaled to a fixed RMS).
* **Front end.** A short-time power spectrum (23 ms Hann window, 1 ms hop) is weighted by
  700 fourth-order gammatone magnitude responses, ERB-spaced from 50 Hz to 8 kHz, a
  cochlea's place code. Each channel's envelope is log-compressed (a hair cell's range
  compression) against a fixed reference, and one integrate-and-fire unit per channel
  turns it into spikes. The units have a 1 ms refractory period and no leak, and their
  drive is the compressed envelope above a threshold. This gives a few thousand spikes
  per word, as in SHD.

TTS voices differ less than people do, so this task is easier than SHD. Its linear
read-out floor is measured and stated in the README.

``stllr data make spoken_digits DIR`` writes a set. ``load_dataset("spoken_digits")``
generates one into ``~/.cache/stllr/spoken_digits/<parameters>/`` on first use (under a
lock, so concurrent runs generate it once) and bins it like SHD (``T``, ``bin_ms``,
``channels``). It needs ``espeak-ng`` (``apt-get install espeak-ng`` on Debian/Ubuntu). It
is never downloaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar, Iterator

import numpy as np

from stllr_engine.datasets import _params
from stllr_engine.datasets.shd import SHDSource
from stllr_engine.errors import StllrError

NAME = "spoken_digits"
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
         "null", "eins", "zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht", "neun")
KEYS = tuple(f"english-{w}" for w in WORDS[:10]) + tuple(f"german-{w}" for w in WORDS[10:])
ACCENTS = ("en-us", "en-gb-x-rp", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-us-nyc", "en-029")
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "adam", "Alex", "Alicia",
            "Andrea", "Andy", "Annie", "aunty", "belinda", "benjamin", "boris", "caleb", "david", "Denis", "ed",
            "edward", "Gene", "gustave", "Henrique", "Hugo", "iven", "Jacky", "john", "Lee", "linda", "Marco",
            "Mario", "max", "Michael", "michel", "Mike", "norbert", "pablo", "paul", "pedro", "quincy", "rob",
            "robert", "sandro", "shelby", "steph", "travis", "victor", "zac", "grandma", "grandpa")
CHANNELS = 700
SAMPLE_RATE = 22050  # espeak-ng's
GENERATION: dict[str, Any] = {"speakers": 24, "test_speakers": 6, "repeats": 3, "snr_db": (5.0, 25.0), "seed": 0}
DEFAULTS: dict[str, Any] = {"T": 100, "bin_ms": 10.0, "channels": 700, **GENERATION}
FORMAT = 1  # bump when the generator's output changes: a cached set is then remade


def espeak() -> str:
    """The espeak-ng executable, or a one-line error saying how to install it."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise StllrError(f"dataset {NAME!r} is generated with espeak-ng, which is not installed: install it "
                         "(Debian/Ubuntu: apt-get install espeak-ng; macOS: brew install espeak-ng) or point "
                         "data_dir at a set made elsewhere with `stllr data make spoken_digits DIR`")
    return exe


def validate_generation(params: dict[str, Any]) -> dict[str, Any]:
    out = {k: params[k] for k in GENERATION}
    out["speakers"] = _params.positive_int(NAME, "speakers", params["speakers"], 1)
    out["test_speakers"] = _params.positive_int(NAME, "test_speakers", params["test_speakers"], 1)
    out["repeats"] = _params.positive_int(NAME, "repeats", params["repeats"], 1)
    out["seed"] = _params.any_int(NAME, "seed", params["seed"])
    snr = params["snr_db"]
    if (not isinstance(snr, (list, tuple)) or len(snr) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in snr)
            or snr[0] > snr[1]):
        raise StllrError(f"dataset {NAME!r}: snr_db={snr!r} must be [low, high] in dB with low <= high")
    out["snr_db"] = (float(snr[0]), float(snr[1]))
    if out["speakers"] + out["test_speakers"] > len(VARIANTS) * len(ACCENTS):
        raise StllrError(f"dataset {NAME!r}: {out['speakers'] + out['test_speakers']} speakers is more than the "
                         f"{len(VARIANTS) * len(ACCENTS)} distinct voices available")
    return out


# -- speakers and utterances ------------------------------------------------------------------


def speakers(n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` distinct speakers (variant, accent, base pitch and speed), in a seeded order."""
    rng = np.random.default_rng([seed, 101])
    pairs = [(v, a) for v in VARIANTS for a in ACCENTS]
    chosen = rng.permutation(len(pairs))[:n]
    # variants first spread over all speakers, accents next: neighbouring speakers differ in voice
    out = []
    for i, j in enumerate(sorted(chosen, key=lambda j: (j % len(VARIANTS), j))):
        variant, accent = pairs[j]
        out.append({"id": i, "variant": variant, "accent": accent,
                    "pitch": float(rng.uniform(25, 75)), "speed": float(rng.uniform(130, 190))})
    return out


def utterances(p: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Every sample's recipe per split: speaker, word, jittered pitch/speed, onset, SNR, noise seed."""
    everyone = speakers(p["speakers"] + p["test_speakers"], p["seed"])
    rng = np.random.default_rng([p["seed"], 202])
    order = rng.permutation(len(everyone))
    split_of = {int(s): ("test" if k < p["test_speakers"] else "train") for k, s in enumerate(order)}
    out: dict[str, list[dict[str, Any]]] = {"train": [], "test": []}
    for s in everyone:
        for label, word in enumerate(WORDS):
            for r in range(p["repeats"]):
                out[split_of[s["id"]]].append({
                    "speaker": s["id"], "label": label, "word": word,
                    "voice": ("de" if label >= 10 else s["accent"]) + "+" + s["variant"],
                    "pitch": int(np.clip(round(s["pitch"] + rng.uniform(-8, 8)), 0, 99)),
                    "speed": int(round(s["speed"] * rng.uniform(0.9, 1.1))),
                    "onset_s": float(rng.uniform(0.0, 0.1)),
                    "snr_db": float(rng.uniform(*p["snr_db"])),
                    "noise_seed": int(rng.integers(2**31)),
                    "repeat": r,
                })
    for split in out:  # interleave speakers and words (a file in speaker order would be a biased prefix)
        perm = np.random.default_rng([p["seed"], 303, split == "test"]).permutation(len(out[split]))
        out[split] = [out[split][i] for i in perm]
    return out


def synthesize(u: dict[str, Any], exe: str) -> np.ndarray:
    """The utterance's waveform, float64 at :data:`SAMPLE_RATE`."""
    with tempfile.TemporaryDirectory(prefix="stllr-tts-") as tmp:
        path = os.path.join(tmp, "w.wav")
        try:
            res = subprocess.run([exe, "-v", u["voice"], "-p", str(u["pitch"]), "-s", str(u["speed"]), "-w", path,
                                  u["word"]], capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            raise StllrError(f"espeak-ng did not finish {u['word']!r} with voice {u['voice']} within 60 s") from None
        if res.returncode != 0 or not os.path.exists(path):
            raise StllrError(f"espeak-ng failed on {u['word']!r} with voice {u['voice']}: "
                             f"{(res.stderr or res.stdout).strip().splitlines()[-1:] or 'no output'}")
        with wave.open(path) as w:
            if w.getframerate() != SAMPLE_RATE or w.getsampwidth() != 2:
                raise StllrError(f"espeak-ng wrote {w.getframerate()} Hz, {8 * w.getsampwidth()}-bit audio; "
                                 f"expected {SAMPLE_RATE} Hz 16-bit")
            audio = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64) / 32768.0
    return audio


# -- the front end ----------------------------------------------------------------------------


def _erb(f: np.ndarray) -> np.ndarray:
    return 24.7 * (4.37e-3 * f + 1.0)


def centre_frequencies(n: int = CHANNELS, low: float = 50.0, high: float = 8000.0) -> np.ndarray:
    """``n`` centre frequencies equally spaced on the ERB-number scale (Glasberg & Moore)."""
    def erb_number(f: float) -> float:
        return 21.4 * np.log10(4.37e-3 * f + 1.0)

    e = np.linspace(erb_number(low), erb_number(high), n)
    return (10 ** (e / 21.4) - 1.0) / 4.37e-3


N_FFT = 512
HOP = SAMPLE_RATE // 1000  # ~1 ms
_WEIGHTS: np.ndarray | None = None


def filterbank() -> np.ndarray:
    """``[700, N_FFT/2+1]`` power weights: fourth-order gammatone magnitude responses, each
    row summing to one."""
    global _WEIGHTS
    if _WEIGHTS is None:
        f = np.fft.rfftfreq(N_FFT, 1.0 / SAMPLE_RATE)
        fc = centre_frequencies()
        b = 1.019 * _erb(fc)
        w = (1.0 + ((f[None, :] - fc[:, None]) / b[:, None]) ** 2) ** -4.0  # |H|^2 of a 4th-order gammatone
        _WEIGHTS = w / w.sum(1, keepdims=True)
    return _WEIGHTS


REFERENCE = 1.0    # envelope level of compression 0 (speech is scaled to RMS 0.1 first)
THRESHOLD = 0.5    # compressed envelope a unit needs before it charges
GAIN = 0.03       # charge per ms per unit of compressed envelope above threshold


def cochlea(audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Spikes ``(times in seconds, units)`` of the 700 channels for ``audio`` at :data:`SAMPLE_RATE`."""
    pad = np.concatenate([np.zeros(N_FFT // 2), audio, np.zeros(N_FFT // 2)])
    frames = np.lib.stride_tricks.sliding_window_view(pad, N_FFT)[::HOP] * np.hanning(N_FFT)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # [steps, bins]
    envelope = power @ filterbank().T  # [steps, 700]
    drive = np.maximum(np.log(envelope / REFERENCE + 1.0) - THRESHOLD, 0.0) * GAIN
    charge = np.cumsum(drive, axis=0)
    # an integrate-and-fire unit without leak spikes each time its charge crosses an integer;
    # at most one spike per step (1 ms refractory): the count per step is capped at 1
    crossings = np.diff(np.floor(charge), axis=0, prepend=0.0) > 0
    steps, units = np.nonzero(crossings)
    return steps * (HOP / SAMPLE_RATE), units


def make_sample(u: dict[str, Any], exe: str) -> tuple[np.ndarray, np.ndarray]:
    """One utterance from recipe to spikes (``float16`` seconds, ``uint16`` units, in time order)."""
    speech = synthesize(u, exe)
    rms = np.sqrt(np.mean(speech**2)) if speech.size else 0.0
    if rms <= 0:
        raise StllrError(f"espeak-ng produced silence for {u['word']!r} with voice {u['voice']}")
    speech = speech * (0.1 / rms)
    onset = int(round(u["onset_s"] * SAMPLE_RATE))
    audio = np.concatenate([np.zeros(onset), speech, np.zeros(SAMPLE_RATE // 20)])
    noise = np.random.default_rng(u["noise_seed"]).standard_normal(audio.size)
    audio = audio + noise * (0.1 / 10 ** (u["snr_db"] / 20.0))
    t, units = cochlea(audio)
    order = np.lexsort((units, t))
    return t[order].astype(np.float16), units[order].astype(np.uint16)


# -- writing the set -----------------------------------------------------------------------------


def make(folder: str | os.PathLike[str], workers: int | None = None, progress: bool = False,
         **params: Any) -> dict[str, Any]:
    """Generate a set into ``folder/SHD/shd_{train,test}.h5``; return what was made.

    ``params``: :data:`GENERATION` keys (``speakers``, ``test_speakers``, ``repeats``,
    ``snr_db``, ``seed``). Files are written under temporary names and renamed when
    complete: an interrupted run leaves no half set that a loader would take.
    """
    import h5py

    p = validate_generation({**GENERATION, **params})
    exe = espeak()
    root = Path(folder) / "SHD"
    root.mkdir(parents=True, exist_ok=True)
    recipes = utterances(p)
    workers = workers or max(1, min(8, os.cpu_count() or 1))
    summary: dict[str, Any] = {"params": {**p, "snr_db": list(p["snr_db"])}, "format": FORMAT}
    for split in ("train", "test"):
        todo = recipes[split]
        done = 0
        with ThreadPoolExecutor(workers) as pool:  # espeak-ng and numpy release the GIL
            samples = []
            for sample in pool.map(lambda u: make_sample(u, exe), todo):
                samples.append(sample)
                done += 1
                if progress and done % 200 == 0:
                    print(f"  {split}: {done}/{len(todo)}", flush=True)
        path = root / f"shd_{split}.h5"
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with h5py.File(tmp, "w") as f:
                times = f.create_dataset("spikes/times", (len(samples),), dtype=h5py.vlen_dtype(np.float16))
                units = f.create_dataset("spikes/units", (len(samples),), dtype=h5py.vlen_dtype(np.uint16))
                for i, (t, un) in enumerate(samples):
                    times[i], units[i] = t, un
                f["labels"] = np.array([u["label"] for u in todo], dtype=np.uint8)
                f["extra/speaker"] = np.array([u["speaker"] for u in todo], dtype=np.uint8)
                f["extra/keys"] = np.array([k.encode() for k in KEYS])
                f["extra/meta_info/voice"] = np.array([u["voice"].encode() for u in todo])
                f["extra/meta_info/generator"] = np.bytes_(json.dumps(summary["params"]))
            os.replace(tmp, path)
            # the archive too, as SHD is distributed: tonic.datasets.SHD checks that it is there
            _zip(path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise
        counts = np.array([len(t) for t, _ in samples])
        summary[split] = {"samples": len(samples), "speakers": sorted({u["speaker"] for u in todo}),
                          "spikes_per_sample": [int(counts.min()), int(np.median(counts)), int(counts.max())]}
    return summary


def _zip(path: Path) -> None:
    import zipfile

    final = path.with_name(path.name + ".zip")
    tmp = path.with_name(f".{final.name}.{os.getpid()}.tmp")
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
            z.write(path, path.name)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def generation_key(p: dict[str, Any]) -> str:
    g = {k: (list(p[k]) if k == "snr_db" else p[k]) for k in GENERATION}
    return hashlib.sha256(json.dumps([g, FORMAT], sort_keys=True).encode()).hexdigest()[:12]


def default_root(p: dict[str, Any]) -> Path:
    base = os.environ.get("STLLR_DATA_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "stllr")
    return Path(base) / NAME / generation_key(p)


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".generate.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure(p: dict[str, Any]) -> Path:
    """The generated set for ``p`` (made now, once, under a lock, if it is not there)."""
    root = default_root(p)
    if not all((root / "SHD" / f"shd_{s}.h5").is_file() for s in ("train", "test")):
        espeak()  # before any folder is made: without it, one line and nothing written
        try:
            with _locked(root):
                if not all((root / "SHD" / f"shd_{s}.h5").is_file() for s in ("train", "test")):
                    make(root, **{k: p[k] for k in GENERATION})
        except OSError as exc:  # a read-only or full disk: say where, and how to choose another place
            raise StllrError(f"cannot generate {NAME!r} into {root}: {exc.strerror or exc}; free space there, "
                             "or set STLLR_DATA_CACHE (or data_dir, with a set from `stllr data make "
                             "spoken_digits DIR`)") from None
    return root


class SpokenDigitsSource(SHDSource):
    """The generated set, read exactly as SHD (same folder layout and fields)."""

    name: ClassVar[str] = NAME
    source: ClassVar[str] = "generated: `stllr data make spoken_digits DIR` (needs espeak-ng)"
    defaults: ClassVar[dict[str, Any]] = {"T": 100, "bin_ms": 10.0, "channels": 700}
