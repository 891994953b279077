"""The training engine: settings and recipes, data, augmentation, models, the loop, checkpoints, processes."""
