#!/usr/bin/env bash
# TIPC basic chain: train, evaluate, export, infer; exit 1 as soon as a stage fails.
#   bash test_tipc/test_train_inference_python.sh CONFIG MODE
# MODE: lite_train_lite_infer | whole_train_whole_infer | whole_infer (export train_model, infer).
# Paths in CONFIG are relative to the repository root; run test_tipc/prepare.sh first.
# Each mode writes its own folders, --dir/MODE and --save_dir/MODE, and starts them clean
# (train.py --overwrite), so a chain can run again, and after another mode.
# Config values are data: commands run as argument arrays, never through eval (common_func.sh);
# a missing required key is exit 2, a stage without a command fails.
set -uo pipefail

if [ $# -ne 2 ]; then
    echo "usage: bash test_tipc/test_train_inference_python.sh CONFIG MODE" >&2
    exit 2
fi
CONFIG=$(realpath -- "$1") || exit 2
MODE=$2
cd "$(dirname "$0")/.." || exit 1
source test_tipc/common_func.sh

case $MODE in
    lite_train_lite_infer|whole_train_whole_infer|whole_infer) ;;
    *) echo "error: unknown MODE '$MODE'; use lite_train_lite_infer, whole_train_whole_infer or whole_infer" >&2
       exit 2 ;;
esac
[ -f "$CONFIG" ] || { echo "error: $CONFIG is not a file" >&2; exit 2; }

python=$(param train_params python)
gpu_list=$(param train_params gpu_list)
device_key=$(key_of train_params 4)
device=$(param train_params "$device_key")
epochs=$(for_mode "$(param train_params --epochs)")
out_dir=$(param train_params --dir)
batch_size=$(for_mode "$(param train_params --batch_size)")
train_model_name=$(for_mode "$(param train_params train_model_name)")
data_path=$(param train_params --data_path)
trainer=$(param train_params trainer)
train_py=$(for_mode "$(param train_params "$trainer")")
eval_py=$(param eval_params eval)
save_dir=$(param infer_params --save_dir)
export_py=$(param infer_params norm_export)
train_model=$(param infer_params train_model)
infer_export_py=$(param infer_params infer_export)
infer_py=$(param infer_params inference)
infer_device=$(param infer_params --device)
infer_batch_sizes=$(param infer_params --batch_size)
img_path=$(param infer_params --img_path)
benchmark=$(param infer_params --benchmark)

require python "$python"
require --dir "$out_dir"
require --save_dir "$save_dir"
require inference "$infer_py"
require "--batch_size (infer_params)" "$infer_batch_sizes"
require --img_path "$img_path"
if [ "$MODE" = whole_infer ]; then
    require infer_export "$infer_export_py"
else
    require trainer "$trainer"
    require "$trainer" "$train_py"
    require train_model_name "$train_model_name"
    require eval "$eval_py"
    require norm_export "$export_py"
fi
case $(realpath -m -- "$out_dir") in
    /) echo "error: --dir in $CONFIG is the file-system root; logs go under --dir/logs" >&2
       exit 2 ;;
esac

[ -n "$gpu_list" ] && [ "$gpu_list" != "-1" ] && export CUDA_VISIBLE_DEVICES=${gpu_list%%,*}
log_dir="$out_dir/logs/$MODE"
mkdir -p -- "$log_dir" || exit 1
status_log="$log_dir/results_python.log"
: > "$status_log"

run_stage() {  # run_stage NAME: run CMD (an argument array), log its output, stop on failure
    local name=$1 log="$log_dir/$1.log" shown status
    if [ ${#CMD[@]} -eq 0 ] || [ -z "${CMD[0]}" ]; then
        echo "Run failed with command - $name - (no command in $CONFIG)" | tee -a "$status_log"
        exit 1
    fi
    shown=$(printf '%q ' "${CMD[@]}")
    echo "$shown"
    "${CMD[@]}" > "$log" 2>&1
    status=$?
    cat "$log"
    if [ $status -eq 0 ]; then
        echo "Run successfully with command - $name - $shown" | tee -a "$status_log"
    else
        echo "Run failed with command - $name - $shown (exit $status, log $log)" | tee -a "$status_log"
        exit 1
    fi
}

infer_all() {  # infer_all MODEL_DIR: every batch size of the config
    local bs
    IFS='|' read -ra sizes <<< "$infer_batch_sizes"
    for bs in "${sizes[@]}"; do
        CMD=()
        add_words "$python"
        add_words "$infer_py"
        add_param --model_dir "$1"
        add_param --device "$infer_device"
        add_param --batch_size "$bs"
        add_param --img_path "$img_path"
        add_flag --benchmark "$benchmark"
        run_stage "infer_${infer_device}_batchsize_${bs}"
    done
}

export_stage() {  # export_stage EXPORT_PY CHECKPOINT: export, then infer every batch size
    CMD=()
    add_words "$python"
    add_words "$1"
    add_param --model_path "$2"
    add_param --save_dir "$save_dir/$MODE"
    run_stage export
    infer_all "$save_dir/$MODE"
}

if [ "$MODE" = whole_infer ]; then
    if [ -z "$train_model" ] || [ "$train_model" = null ]; then
        echo "error: whole_infer needs train_model: CHECKPOINT in $CONFIG" >&2
        exit 2
    fi
    export_stage "$infer_export_py" "$train_model"
    exit 0
fi

run_dir="$out_dir/$MODE"
CMD=()
add_words "$python"
add_words "$train_py"
add_param --dir "$run_dir"
CMD+=(--overwrite)
add_param --epochs "$epochs"
add_param --batch_size "$batch_size"
add_param --data_path "$data_path"
add_param "$device_key" "$device"
run_stage train
model="$run_dir/$train_model_name"
if [ "$eval_py" != null ]; then
    CMD=()
    add_words "$python"
    add_words "$eval_py"
    add_param --model_path "$model"
    add_param "$device_key" "$device"
    run_stage eval
fi
[ "$export_py" != null ] && export_stage "$export_py" "$model"
exit 0
