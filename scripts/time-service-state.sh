#!/usr/bin/env bash
# Prints the host's time-service state: the dpkg status of every time-service
# package (chrony, ntp, ntpsec, openntpd, systemd-timesyncd, ...) and the
# enablement of their units, one sorted line each. Reads only; changes nothing.
#
#   scripts/time-service-state.sh               print the state
#   scripts/time-service-state.sh --check FILE  compare with a state saved in FILE;
#                                               exit 1 with a diff when it differs
#
# scripts/install-peers.sh and `make test` use it to prove that the test setup
# leaves the host's time service exactly as it found it.
set -euo pipefail

PKG_RE='chrony|ntp|timesync|openntpd|ptpd|linuxptp'
UNITS=(chrony.service chronyd.service ntp.service ntpd.service ntpsec.service
    openntpd.service systemd-timesyncd.service systemd-timedated.service)

state() {
    dpkg-query -W -f='package ${Package} ${db:Status-Abbrev} ${Version}\n' 2>/dev/null \
        | grep -E "^package [^ ]*($PKG_RE)" | sed -E 's/ +/ /g' | sort || true
    if command -v systemctl >/dev/null 2>&1; then
        local unit enabled
        for unit in "${UNITS[@]}"; do
            # is-enabled exits non-zero for disabled/masked/not-found units: keep its word.
            enabled=$(systemctl is-enabled "$unit" 2>/dev/null || true)
            printf 'unit %s %s\n' "$unit" "${enabled:-not-found}"
        done
    fi
    local f
    for f in /etc/rc[2-5].d/S*; do
        [[ -e $f ]] || continue
        case ${f##*/} in *chrony*|*ntp*|*timesync*) printf 'rc %s\n' "$f" ;; esac
    done
}

case ${1:-} in
    "") state ;;
    --check)
        [[ -r ${2:-} ]] || { echo "time-service-state: no saved state to compare (${2:-})" >&2; exit 2; }
        if ! diff -u --label before --label after "$2" <(state) >&2; then
            echo "time-service-state: the host's time service CHANGED (see the diff above)." >&2
            echo "time-service-state: nothing in gnomon's setup or tests may install, remove," >&2
            echo "time-service-state: enable or disable a time-service package or unit." >&2
            exit 1
        fi
        ;;
    *) echo "usage: $0 [--check FILE]" >&2; exit 2 ;;
esac
