"""unifairseq-search: a walk through the paper's design space on Optuna (docs/search.md).

    space.py   the points and dimensions, read from the method registry; budgets; --space files
    trial.py   one point as a real fairseq-train run (scripts/train_*.sh), its metric from the JSON log
    study.py   the Optuna study: storage, samplers, workers, resume after a kill
    report.py  trials.csv, pareto.png, best.json
    cli.py     the command line (light: --help imports neither torch, fairseq nor optuna)
"""
