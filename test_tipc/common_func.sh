#!/usr/bin/env bash
# Reading a TIPC config (sections of KEY:VALUE lines) and forming KEY=VALUE arguments.

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

for_mode() {  # for_mode "m1=v1|m2=v2": the value for $MODE; a value without modes as it is
    local item
    case $1 in *"$MODE="*) ;; *) echo "$1"; return ;; esac
    IFS='|' read -ra items <<< "$1"
    for item in "${items[@]}"; do
        case $item in "$MODE="*) echo "${item#"$MODE="}"; return ;; esac
    done
}

set_param() {  # set_param KEY VALUE: KEY=VALUE, nothing for a null or empty value
    if [ -n "$2" ] && [ "$2" != null ]; then echo "$1=$2"; fi
}

flag() {  # flag KEY True|False: KEY when True
    if [ "$2" = True ]; then echo "$1"; fi
}
