#!/usr/bin/env bash
# Data for the TIPC chain, made from the CIFAR-10 archive in $CIFAR10_ARCHIVE (nothing is
# downloaded):  CIFAR10_ARCHIVE=PATH/cifar-10-python.tar.gz bash test_tipc/prepare.sh CONFIG MODE
# lite_train_lite_infer: the first 256 training and 64 test images, written to the config's
# --data_path; the whole modes link the full archive there.
set -euo pipefail

CONFIG=$(realpath "$1")
MODE=$2
cd "$(dirname "$0")/.."
source test_tipc/common_func.sh

if [ -z "${CIFAR10_ARCHIVE:-}" ] || [ ! -e "$CIFAR10_ARCHIVE" ]; then
    echo "error: set CIFAR10_ARCHIVE to an existing cifar-10-python.tar.gz (or its extracted folder)" >&2
    exit 2
fi
python=$(param train_params python)
data_path=$(param train_params --data_path)
require python "$python"
require --data_path "$data_path"
read -ra python_words <<< "$python"  # a command as words, never eval'd
mkdir -p -- "$(dirname "$data_path")"
if [ "$MODE" = lite_train_lite_infer ]; then
    "${python_words[@]}" tools/cifar_samples.py lite --data_path "$CIFAR10_ARCHIVE" --out "$data_path" --train 256 --test 64
else
    ln -sfn "$(realpath "$CIFAR10_ARCHIVE")" "$data_path"
    echo "linked $data_path -> $CIFAR10_ARCHIVE"
fi
