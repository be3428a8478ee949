#!/usr/bin/env bash
# Reading a TIPC config (sections of KEY:VALUE lines) and forming argument arrays. Values are
# data: a command value is split into words (no quotes, globs, ';', '$' or backticks are
# interpreted) and a parameter value is one argument, KEY=VALUE; nothing is ever eval'd.

param() {  # param SECTION KEY: the value of KEY in SECTION of $CONFIG
    awk -v sec="$1" -v key="$2" '
        /^=+[a-z_]+=+$/ { s = $0; gsub(/=/, "", s); next }
        s == sec && index($0, key ":") == 1 { print substr($0, length(key) + 2); exit }' "$CONFIG"
}

key_of() {  # key_of SECTION N: the key of the N-th line (1-based) of SECTION
    awk -v sec="$1" -v n="$2" '
        /^=+[a-z_]+=+$/ { s = $0; gsub(/=/, "", s); i = 0; next }
        s == sec && ++i == n { sub(/:.*/, ""); print; exit }' "$CONFIG"
}

require() {  # require NAME VALUE...: exit 2 naming the config key NAME when a VALUE is empty
    local name=$1 value
    shift
    for value in "$@"; do
        if [ -z "$value" ]; then
            echo "error: $CONFIG lacks a value for '$name' (required in mode $MODE)" >&2
            exit 2
        fi
    done
}

for_mode() {  # for_mode "m1=v1|m2=v2": the value for $MODE; a value without modes as it is
    local item
    case $1 in *"$MODE="*) ;; *) echo "$1"; return ;; esac
    IFS='|' read -ra items <<< "$1"
    for item in "${items[@]}"; do
        case $item in "$MODE="*) echo "${item#"$MODE="}"; return ;; esac
    done
}

add_words() {  # add_words TEXT: TEXT's words (a command, as the config writes it) onto CMD
    local -a words
    read -ra words <<< "$1"
    CMD+=("${words[@]}")
}

add_param() {  # add_param KEY VALUE: KEY=VALUE onto CMD, one argument; nothing when null/empty
    [ -n "$2" ] && [ "$2" != null ] || return 0
    local -a words
    read -ra words <<< "$1"  # a key may be two words: "-o Global.device"
    [ ${#words[@]} -gt 0 ] || return 0
    local last=$((${#words[@]} - 1))
    words[last]="${words[last]}=$2"
    CMD+=("${words[@]}")
}

add_flag() {  # add_flag KEY True|False: KEY onto CMD when True
    if [ "$2" = True ]; then CMD+=("$1"); fi
}
