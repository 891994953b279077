// The Runs view (#runs-view): filled in by the run-browser work (issue #16).
