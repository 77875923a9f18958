"""Studies: S-TLLR searched with Optuna inside Ray Tune, against matched BPTT baselines.

Read in this order, one job per file, plain data between them:

* ``schema.py``    statuses, objectives, the results columns and ``run_row`` (``reports`` reads these too)
* ``plan.py``      configurations and their runs (``config_id``, ``arch_id``), missing seeds, outcomes
* ``ledger.py``    the study folder: locks, journal, ``results.parquet``; the one resume rule
* ``searcher.py``  Ray Tune's ``Searcher`` over Optuna's ask/tell (pickles: nothing live in it)
* ``callbacks.py`` the results writer and the progress line (driver side)
* ``trial.py``     what one Tune trial runs: a configuration, once per seed
* ``runner.py``    ``sweep()``: load, join Ray, open the ledger, plan, run, interrupts
* ``status.py``, ``commands.py``, ``cli.py``  the command line on top
"""
