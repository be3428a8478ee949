"""The official python archives of CIFAR-10 and CIFAR-100: where each keeps what (one
description per dataset; ``cifar.py`` reads any of them the same way)."""

from __future__ import annotations

from swa_recipe.data.datacheck import Layout

# ``label_names`` of CIFAR-10's ``batches.meta`` and ``fine_label_names`` of CIFAR-100's
# ``meta``, in label order: what predictions print, with no archive at hand.
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
CIFAR100_CLASSES = tuple("""
    apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle
    bowl boy bridge bus butterfly camel can castle caterpillar cattle
    chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur
    dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard
    lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle mountain
    mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree
    plain plate poppy porcupine possum rabbit raccoon ray road rocket
    rose sea seal shark shrew skunk skyscraper snail snake spider
    squirrel streetcar sunflower sweet_pepper table tank telephone television tiger tractor
    train trout tulip turtle wardrobe whale willow_tree wolf woman worm
""".split())

DATASETS = {
    "CIFAR10": Layout(
        name="CIFAR-10", archive="cifar-10-python.tar.gz", folder="cifar-10-batches-py",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",), meta_member="batches.meta", label_key=b"labels",
        num_classes=10, train_size=50000, test_size=10000, class_names=CIFAR10_CLASSES),
    "CIFAR100": Layout(
        name="CIFAR-100", archive="cifar-100-python.tar.gz", folder="cifar-100-python",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        train_files=("train",), test_files=("test",), meta_member="meta",
        label_key=b"fine_labels",  # the 100 classes; ``coarse_labels`` are the 20 superclasses
        num_classes=100, train_size=50000, test_size=10000, class_names=CIFAR100_CLASSES),
}
CIFAR10 = DATASETS["CIFAR10"]
