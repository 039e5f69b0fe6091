"""A trained run and what is done with it: the run folder's files (``rundir``), stores made
like a run (``like``), prediction, export, and the table of runs."""
