"""Data input, framework-free: the CIFAR-10/100 archive readers, layouts and checks, the
augmentation and epoch batches, safe unpickling and regular-file rules, and sample images."""
