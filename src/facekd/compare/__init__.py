"""`facekd compare`: methods x seeds under one protocol, with paired intervals (see runner.py)."""
