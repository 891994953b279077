"""The lecture's lessons: the sliding window, pooling, hand-designed kernels, counting parameters."""
