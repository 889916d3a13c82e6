"""Budgeted hyperparameter search of fine-tuning on Optuna (`encoderforge search`): space.py reads the space,
study.py runs and resumes it, worker.py runs trials, estimate.py checks the budget, results.py writes the table,
the plot and the best recipe."""
