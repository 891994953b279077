// The Train view (#train-view): filled in by the training-from-the-page work (issue #16).
