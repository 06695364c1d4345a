"""Store layer: the run folder and its journal, written by the coordinator alone."""
