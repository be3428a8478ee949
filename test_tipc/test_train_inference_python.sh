#!/usr/bin/env bash
# TIPC basic chain: train, evaluate, export, infer; exit 1 as soon as a stage fails.
#   bash test_tipc/test_train_inference_python.sh CONFIG MODE
# MODE: lite_train_lite_infer | whole_train_whole_infer | whole_infer (export train_model, infer).
# Paths in CONFIG are relative to the repository root; run test_tipc/prepare.sh first.
# Each mode writes its own folders, --dir/MODE and --save_dir/MODE, and starts them clean
# (train.py --overwrite), so a chain can run again, and after another mode.
set -uo pipefail

CONFIG=$(realpath "$1")
MODE=$2
cd "$(dirname "$0")/.." || exit 1
source test_tipc/common_func.sh

case $MODE in
    lite_train_lite_infer|whole_train_whole_infer|whole_infer) ;;
    *) echo "error: unknown MODE '$MODE'; use lite_train_lite_infer, whole_train_whole_infer or whole_infer" >&2
       exit 2 ;;
esac

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

[ "$gpu_list" != "-1" ] && export CUDA_VISIBLE_DEVICES=${gpu_list%%,*}
log_dir="$out_dir/logs/$MODE"
mkdir -p "$log_dir"
status_log="$log_dir/results_python.log"
: > "$status_log"

run_stage() {  # run_stage NAME COMMAND: log the output, record the status, stop on failure
    local name=$1 cmd=$2 log="$log_dir/$1.log"
    echo "$cmd"
    eval "$cmd" > "$log" 2>&1
    local status=$?
    cat "$log"
    if [ $status -eq 0 ]; then
        echo "Run successfully with command - $name - $cmd" | tee -a "$status_log"
    else
        echo "Run failed with command - $name - $cmd (exit $status, log $log)" | tee -a "$status_log"
        exit 1
    fi
}

infer_all() {  # infer_all MODEL_DIR: every batch size of the config
    local bs
    IFS='|' read -ra sizes <<< "$infer_batch_sizes"
    for bs in "${sizes[@]}"; do
        run_stage "infer_${infer_device}_batchsize_${bs}" "$python $infer_py $(set_param --model_dir "$1") $(set_param --device "$infer_device") $(set_param --batch_size "$bs") $(set_param --img_path "$img_path") $(flag --benchmark "$benchmark")"
    done
}

if [ "$MODE" = whole_infer ]; then
    if [ "$train_model" = null ]; then
        echo "error: whole_infer needs train_model: CHECKPOINT in $CONFIG" >&2
        exit 2
    fi
    run_stage export "$python $infer_export_py $(set_param --model_path "$train_model") $(set_param --save_dir "$save_dir/$MODE")"
    infer_all "$save_dir/$MODE"
    exit 0
fi

run_dir="$out_dir/$MODE"
run_stage train "$python $train_py $(set_param --dir "$run_dir") --overwrite $(set_param --epochs "$epochs") $(set_param --batch_size "$batch_size") $(set_param --data_path "$data_path") $(set_param "$device_key" "$device")"
model="$run_dir/$train_model_name"
[ "$eval_py" != null ] && run_stage eval "$python $eval_py $(set_param --model_path "$model") $(set_param "$device_key" "$device")"
if [ "$export_py" != null ]; then
    run_stage export "$python $export_py $(set_param --model_path "$model") $(set_param --save_dir "$save_dir/$MODE")"
    infer_all "$save_dir/$MODE"
fi
