"""The study folder's ledger: the only writer of its results and the only owner of its locks.

Everything of a study lives in its folder::

    DIR/study.yaml        the frozen study file (what ran; --resume reads it)
    DIR/ledger.json       the study as it was first run (resume compares with it) and its hash
    DIR/budget.json       the budget: S-TLLR configurations to train (--trials grows it)
    DIR/optuna.journal    the Optuna storage (``optuna-dashboard DIR/optuna.journal``)
    DIR/results.parquet   one row per run (configuration × seed); rebuilt from runs/*/row.json
    DIR/runs/<trial_id>/  each run's checkpoint (every epoch), curves.json and row.json
    DIR/ray/              Ray Tune's trial folders and logs
    DIR/sweep.log         the driver's log

The journal and the results table are the ledger (DESIGN §6), not Ray's experiment state.
:meth:`Ledger.open` is the one resume rule: it refuses a study file that differs from what
the folder ran, repairs what a killed process leaves behind (a torn last journal line, a
journal lock of a dead process, an unreadable results table), takes in the rows of runs
that ended while no driver listened, marks runs left ``running`` as ``interrupted`` and
closes the Optuna trials left RUNNING (FAIL; a search trial's parameters are enqueued
again). The planner then trains only the seeds whose runs have not ended, each from its
last checkpoint.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from typing import Any, Iterable

from stllr_engine.errors import StllrError
from study.schema import ENDED, frame, read_results, rows_from_files

__all__ = ["Ledger", "FolderLock", "PidFileLock", "repair_journal", "read_results", "check_out_folder",
           "check_free_space", "free_bytes", "min_free_bytes", "disk_error",
           "RESUME_EXEMPT", "say"]

#: Study-file keys a resume may change: where the data lives, and the budget (``--trials``).
RESUME_EXEMPT = ("dataset.data_dir", "dataset.cache_dir", "budget.trials", "description", "fixed.training.fused")


def say(line: str) -> None:
    """One line for the person at the terminal (stderr, so that stdout stays parseable)."""
    print(f"stllr: {line}", file=sys.stderr, flush=True)


def _now() -> str:
    return datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write_atomic(path: str, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def disk_error(folder: str, exc: OSError) -> Exception:
    """A write of the ledger failed: one line (what is kept, what to do), or the error itself."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
        return StllrError(f"{folder}: cannot write the results ({exc.strerror}): what was recorded before is "
                          "intact; free space (or fix the permissions), then resume with stllr sweep --resume "
                          f"{folder}")
    return exc


def min_free_bytes() -> int:
    """Free space a sweep keeps on its folder's disk (``STLLR_MIN_FREE_MB``, default 200 MB)."""
    try:
        return int(float(os.environ.get("STLLR_MIN_FREE_MB", "200")) * 2**20)
    except ValueError:
        raise StllrError(f"STLLR_MIN_FREE_MB={os.environ['STLLR_MIN_FREE_MB']!r}: give megabytes, e.g. 200") from None


def free_bytes(folder: str) -> int:
    """Free space on the disk holding ``folder`` (or its nearest existing parent)."""
    path = os.path.abspath(folder)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return int(shutil.disk_usage(path).free)


def check_free_space(folder: str) -> None:
    """Refuse to start on a disk that cannot hold checkpoints and results (one line)."""
    free, need = free_bytes(folder), min_free_bytes()
    if free < need:
        raise StllrError(f"{folder}: its disk has {free / 2**20:.0f} MB free, below the {need / 2**20:.0f} MB a sweep "
                         "keeps for checkpoints and results: free space, choose another --out, or set "
                         "STLLR_MIN_FREE_MB")


def check_out_folder(out: str) -> None:
    """Refuse a ``--out`` that is not a local folder path (a URI, an existing file)."""
    if "://" in out:
        raise StllrError(f"--out {out}: a study folder must be on a filesystem (it holds a journal with a file "
                         "lock); give a local or shared path, e.g. --out runs/my_study")
    if not out.strip():
        raise StllrError("--out '': give a folder path, e.g. --out runs/my_study")
    if os.path.exists(out) and not os.path.isdir(out):
        raise StllrError(f"--out {out}: that is a file, not a folder: give a new folder path")
    if any(len(part.encode()) > 255 for part in out.split(os.sep)):
        raise StllrError(f"--out {out[:60]}...: a folder name is longer than 255 bytes: choose a shorter name")
    parent = os.path.dirname(os.path.abspath(out))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise StllrError(f"--out {out}: {parent} is a file, not a folder: give a path under a folder")
    if not os.access(parent, os.W_OK):
        raise StllrError(f"--out {out}: cannot create it ({parent} is not writable): choose a writable place")


# -- locks -----------------------------------------------------------------------------------


class FolderLock:
    """An exclusive lock on a study folder, held by the driver for the whole sweep.

    ``flock`` on ``DIR/.sweep.lock``: the kernel releases it when the holder dies, so a
    killed driver never leaves it stale; the file names the holder for the error message.
    """

    def __init__(self, folder: str):
        self.path = os.path.join(folder, ".sweep.lock")
        self.fh: Any = None

    def acquire(self) -> None:
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise StllrError(f"study folder {os.path.dirname(self.path)} is in use by a running sweep ({holder}): "
                             "wait for it to end, or stop it, then resume with --resume") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        fh.flush()
        self.fh = fh

    def release(self) -> None:
        if self.fh is not None:
            fcntl.flock(self.fh, fcntl.LOCK_UN)
            self.fh.close()
            self.fh = None

    def __enter__(self) -> "FolderLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _lock_base() -> type:
    from optuna.storages.journal._file import BaseJournalFileLock

    return BaseJournalFileLock  # type: ignore[no-any-return]


class PidFileLock:
    """The journal's write lock: ``optuna.journal.lock`` created exclusively, naming its pid.

    A lock whose process is gone (same host) is removed at once with one line, instead of
    Optuna's silent 30 s grace period; a lock of a live process is waited for, saying so
    every few seconds. Build with :meth:`make` (an Optuna ``BaseJournalFileLock``).
    """

    def __init__(self, journal: str, wait_note_s: float = 5.0):
        self.path = journal + ".lock"
        self.wait_note_s = wait_note_s

    @classmethod
    def make(cls, journal: str) -> Any:
        kind = type("PidJournalLock", (cls, _lock_base()), {})
        return kind(journal)

    def holder(self) -> tuple[int | None, str]:
        """``(pid, host)`` written in the lock, ``(None, "")`` if it names none (Optuna's own lock)."""
        try:
            text = os.readlink(self.path) if os.path.islink(self.path) else open(self.path).read()
        except OSError:
            return None, ""
        parts = text.split()
        if len(parts) >= 2 and parts[0].isdigit():
            return int(parts[0]), parts[1]
        return None, ""

    def stale(self) -> str | None:
        """Why the current lock is stale (its process is gone), or ``None``."""
        if not os.path.lexists(self.path):
            return None
        pid, host = self.holder()
        if pid is not None and host == socket.gethostname() and not _pid_alive(pid):
            return f"left by pid {pid}, which is no longer running"
        try:  # a journal write holds the lock for milliseconds: 30 s untouched is stale (Optuna's own rule)
            age = time.time() - os.lstat(self.path).st_mtime
        except OSError:
            return None
        if age > 30:
            who = f"pid {pid} on {host}" if pid is not None else "no process named"
            return f"{who}, untouched for {age:.0f} s"
        return None

    def acquire(self) -> bool:
        t0 = last_note = time.monotonic()
        delay = 0.001
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                why = self.stale()
                if why:
                    self.remove(why)
                    continue
                if time.monotonic() - last_note > self.wait_note_s:
                    pid, host = self.holder()
                    say(f"waiting {time.monotonic() - t0:.0f} s for the journal lock {self.path} "
                        f"(held by {f'pid {pid} on {host}' if pid else 'another process'})")
                    last_note = time.monotonic()
                time.sleep(delay)
                delay = min(delay * 2, 0.2)
                continue
            try:
                with os.fdopen(fd, "w") as fh:
                    fh.write(f"{os.getpid()} {socket.gethostname()}\n")
            except OSError as exc:  # a full disk: leave no lock behind
                self.release()
                raise disk_error(os.path.dirname(self.path), exc) from None
            return True

    def release(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def remove(self, why: str) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            return
        say(f"removed the stale journal lock {self.path} ({why})")


def repair_journal(path: str) -> str | None:
    """Cut a torn last line of an Optuna journal (a write killed half-way), keeping the
    original as ``<path>.bak-<time>``; returns the backup's path, or ``None`` if intact.

    Optuna would append after the torn bytes, gluing them to the next record, and then
    refuse to read the journal at all.
    """
    if not os.path.exists(path):
        return None
    with open(path, "rb") as fh:
        data = fh.read()
    if not data or data.endswith(b"\n"):
        cut = len(data)
        tail = data.rsplit(b"\n", 2)
        last = tail[-2] if len(tail) >= 2 else b""
        try:
            if last:
                json.loads(last)
            return None
        except ValueError:  # a complete-looking last line that is not JSON: torn in the middle
            cut = len(data) - len(last) - 1
    else:
        cut = data.rfind(b"\n") + 1
    backup = f"{path}.bak-{_now()}"
    shutil.copy2(path, backup)
    with open(path, "rb+") as fh:
        fh.truncate(cut)
        fh.flush()
        os.fsync(fh.fileno())
    return backup


# -- the results table -----------------------------------------------------------------------


def _clean(v: Any) -> Any:
    import pandas as pd

    if v is pd.NA or v is None or (isinstance(v, float) and v != v):
        return None
    return v.item() if hasattr(v, "item") else v


# -- the ledger ------------------------------------------------------------------------------


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: d}


def study_hash(spec_dict: dict[str, Any]) -> str:
    kept = {k: v for k, v in _flat(spec_dict).items() if k not in RESUME_EXEMPT}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Ledger:
    """A study folder, locked and open (see the module docstring). Use :meth:`create` or
    :meth:`open`; :meth:`close` releases the lock.

    Attributes:
        folder: the folder (absolute).
        rows: ``trial_id -> row``, every row of ``results.parquet``.
        budget: S-TLLR configurations to train in all.
        storage: the Optuna journal storage.
    """

    def __init__(self, folder: str):
        self.folder = os.path.abspath(folder)
        self.rows: dict[str, dict[str, Any]] = {}
        self.budget = 0
        self.storage: Any = None
        self.notes: list[str] = []
        self.budget_given = False
        self.version = 0  # grows with every change of the rows (readers cache what they derive from them)
        self._lock = FolderLock(self.folder)
        # record() runs on the driver's thread, and on the lost-Ray watch's just before it ends the process
        self._record_lock = threading.RLock()

    def path(self, *parts: str) -> str:
        return os.path.join(self.folder, *parts)

    # -- opening ------------------------------------------------------------------------
    @classmethod
    def create(cls, folder: str, spec: Any, budget: int) -> "Ledger":
        """A new study folder: the frozen study file, its hash and the budget."""
        os.makedirs(folder, exist_ok=True)
        led = cls(folder)
        led._lock.acquire()
        try:
            if os.path.exists(led.path("study.yaml")):
                raise StllrError(f"{folder} already holds a study: resume it with 'stllr sweep --resume {folder}' "
                                 "or choose another --out")
            d = spec.to_dict()
            _write_atomic(led.path("ledger.json"), json.dumps({"format": 1, "study_hash": study_hash(d),
                                                               "study": d}, indent=1, default=str))
            _write_atomic(led.path("budget.json"), json.dumps({"trials": int(budget)}))
            _write_atomic(led.path("study.yaml"), spec.to_yaml())  # last: its presence means "a study"
            led.budget = int(budget)
            led._open_journal()
        except BaseException:
            led.close()
            raise
        return led

    @classmethod
    def open(cls, folder: str, spec: Any, trials: int | None = None) -> "Ledger":
        """An existing study folder, for ``--resume`` (the one resume rule)."""
        led = cls(folder)
        led._lock.acquire()
        try:
            led._check_study(spec)
            led._read_budget(trials)
            led._open_journal()
            led._read_rows()
            led._close_interrupted()
        except BaseException:
            led.close()
            raise
        return led

    def _check_study(self, spec: Any) -> None:
        now = spec.to_dict()
        meta_path = self.path("ledger.json")
        if not os.path.exists(meta_path):  # a folder from before ledger.json: what it holds now is the record
            _write_atomic(meta_path, json.dumps({"format": 1, "study_hash": study_hash(now), "study": now},
                                                indent=1, default=str))
            return
        try:
            with open(meta_path) as fh:
                meta = json.load(fh)
            then = meta["study"]
        except (OSError, ValueError, KeyError, TypeError):
            raise StllrError(f"{meta_path} is damaged: it records what the folder ran; restore it, or start a new "
                             "study folder") from None
        if study_hash(now) == meta.get("study_hash"):
            return
        a, b = _flat(then), _flat(now)
        changed = sorted(k for k in set(a) | set(b) if k not in RESUME_EXEMPT and a.get(k) != b.get(k))
        shown = "; ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in changed[:4])
        more = f" (and {len(changed) - 4} more)" if len(changed) > 4 else ""
        raise StllrError(f"--resume {self.folder}: the study differs from what this folder ran ({shown}{more}): "
                         "undo the change, or run it as a new study with another --out (only --trials, "
                         "dataset.data_dir, dataset.cache_dir and fixed.training.fused may change on a resume)")

    def _read_budget(self, trials: int | None) -> None:
        path = self.path("budget.json")
        if trials is not None:  # written by the runner once it is checked against what is trained
            self.budget, self.budget_given = int(trials), True
            return
        try:
            with open(path) as fh:
                value = json.load(fh)["trials"]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(value)
            self.budget = value
        except FileNotFoundError:
            raise StllrError(f"{path} is missing: give the budget again with --trials N (S-TLLR configurations in "
                             "all, those already trained included)") from None
        except (OSError, ValueError, KeyError, TypeError, OverflowError):
            raise StllrError(f"{path} is damaged (its trials must be a whole number >= 1): give the budget again "
                             "with --trials N (S-TLLR configurations in all, those already trained included)") from None

    def set_budget(self, trials: int) -> None:
        self.budget = int(trials)
        _write_atomic(self.path("budget.json"), json.dumps({"trials": self.budget}))

    def mark_exhausted(self) -> None:
        """The sampler proposed only configurations already trained: the space is used up."""
        _write_atomic(self.path("budget.json"), json.dumps({"trials": self.budget, "exhausted": True}))

    def _open_journal(self) -> None:
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        journal = self.path("optuna.journal")
        backup = repair_journal(journal)
        if backup:
            self.note(f"{journal} had a torn last line (a write killed half-way): cut it; the original is kept "
                      f"as {os.path.basename(backup)}")
        lock = PidFileLock.make(journal)
        why = lock.stale()
        if why is None and os.path.lexists(lock.path):
            # while we hold the folder lock no sweep writes this journal: a lock older than a write is left over
            pid, host = lock.holder()
            age = time.time() - os.lstat(lock.path).st_mtime
            if age > 2:
                who = f"pid {pid} on {host}" if pid is not None else "no process named"
                why = f"{who}, {age:.0f} s old, and no sweep holds the folder"
        if why:
            lock.remove(why)
        try:
            self.storage = JournalStorage(JournalFileBackend(journal, lock_obj=lock))
        except (ValueError, UnicodeDecodeError) as exc:
            raise StllrError(f"{journal} cannot be read ({exc}): it is damaged before its last line; move it aside "
                             f"(mv {journal} {journal}.damaged) and resume: results.parquet keeps every run, only "
                             "Optuna's history starts again") from None

    def _read_rows(self) -> None:
        import pandas as pd

        path = self.path("results.parquet")
        on_disk = rows_from_files(self.folder)
        if os.path.exists(path):
            try:
                df = pd.read_parquet(path)
                for rec in df.to_dict("records"):
                    self.rows[str(rec["trial_id"])] = {k: _clean(v) for k, v in rec.items()}
            except Exception as exc:  # pyarrow raises several types for a damaged file
                backup = f"{path}.bad-{_now()}"
                os.replace(path, backup)
                folders = len([d for d in os.listdir(self.path("runs")) if os.path.exists(
                    self.path("runs", d, "attempts.log"))]) if os.path.isdir(self.path("runs")) else 0
                lost = max(0, folders - len(on_disk))
                self.note(f"{path} could not be read ({type(exc).__name__}): rebuilt from {len(on_disk)} "
                          f"runs/*/row.json files; the damaged file is kept as {os.path.basename(backup)}"
                          + (f"; {lost} run folder(s) have no readable row.json: those runs train again" if lost else ""))
                self.rows = {}
        # rows of runs that ended while no driver listened (killed between the run's end and its report)
        fresh = [r for t, r in on_disk.items()
                 if r.get("status") in ENDED + ("infeasible",) and self.rows.get(t, {}).get("status") != r["status"]]
        if fresh or not os.path.exists(path):
            for r in fresh:
                self.rows[str(r["trial_id"])] = r
            self._write_table()

    def _close_interrupted(self) -> None:
        """Runs left ``running`` become ``interrupted``; Optuna trials left RUNNING are closed."""
        import optuna

        stale = [dict(r, status="interrupted", reason="interrupted (the driver stopped)")
                 for r in self.rows.values() if r.get("status") == "running"]
        if stale:
            self.record(stale)
        for summary in optuna.get_all_study_summaries(self.storage):
            study = optuna.load_study(study_name=summary.study_name, storage=self.storage)
            for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
                self.storage.set_trial_user_attr(t._trial_id, "interrupted", True)
                self.storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
                if summary.study_name == "search" and t.params:
                    study.enqueue_trial(dict(t.params), user_attrs={"requeued_from": t.number})

    def note(self, line: str) -> None:
        """A repair made while opening: said once, in one line, and kept for the log."""
        self.notes.append(line)
        say(line)

    # -- writing --------------------------------------------------------------------------
    def record(self, rows: Iterable[dict[str, Any]]) -> None:
        """Store rows (keyed by ``trial_id``; a later row replaces an earlier one, except that
        an ended run is never turned back into a running or interrupted one)."""
        with self._record_lock:
            self._record(rows)

    def _record(self, rows: Iterable[dict[str, Any]]) -> None:
        changed = False
        for row in rows:
            tid = str(row["trial_id"])
            old = self.rows.get(tid)
            if old is not None and old.get("status") in ENDED and row.get("status") not in ENDED:
                continue
            if old == row:
                continue
            self.rows[tid] = dict(row)
            changed = True
            if row.get("status") != "running":
                self._write_row_file(row)
        if changed:
            self.version += 1
            self._write_table()

    def _write_row_file(self, row: dict[str, Any]) -> None:
        folder = self.path("runs", str(row["trial_id"]))
        path = os.path.join(folder, "row.json")
        if os.path.exists(path) and row.get("status") not in ENDED:
            try:
                with open(path) as fh:
                    if json.load(fh).get("status") in ENDED:
                        return  # the run's own record of its end wins
            except (OSError, ValueError):
                pass
        try:
            os.makedirs(folder, exist_ok=True)
            _write_atomic(path, json.dumps(row, default=str))
        except OSError as exc:
            raise disk_error(self.folder, exc) from None

    def _write_table(self) -> None:
        df = frame(self.rows.values())
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".results-", suffix=".parquet")
        os.close(fd)
        try:
            df.to_parquet(tmp, index=False)
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.path("results.parquet"))
        except OSError as exc:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise disk_error(self.folder, exc) from None
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def close(self) -> None:
        self.storage = None
        self._lock.release()

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
