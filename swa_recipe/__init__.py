"""Framework-free half of swa-paddle: config, CIFAR-10/100 and their augmentation, schedules, run
loop, logs and checkpoint plumbing, shared by the Paddle twin (``swa_paddle``) and the PyTorch
twin (``swa_torch``)."""
