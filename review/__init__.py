"""The browser review app of review.py: see review/app.py (routes), store.py (the results folder and
what a save writes), edits.py (edits and what follows from them), result.py (reading the pipeline's files),
cases.py (cells grouped into cases, a case's sign-off) and report.py (a case's PDF report)."""
