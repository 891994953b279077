"""Everything done with a run folder: its format, loading, inference, evaluation, ensembles, prediction, export."""
