"""What a job's results become: AUC metrics, alert events, plots and written outputs (CSV,
annotated video). Plain numpy/scikit-learn/matplotlib; no model, no runner."""
