#!/usr/bin/env bash
# Installs the real peers the interop tests start on loopback.
#
#   - chrony (NTS client and server), redis-server, iproute2 (ip), util-linux
#     (unshare, nsenter, setpriv): installed from Debian's packages when missing;
#   - NTPsec 1.2.2: downloaded with `apt-get download` and unpacked into
#     .peers/ntpsec/ (never installed: it conflicts with chrony as a package);
#     its ntpd is run from there by tests/peers/ntpsec.py.
#
# Idempotent and fast when everything is already there (no apt-get update then).
# No daemon of a package installed here is left running or enabled: a system
# chronyd would discipline the clock of a shared machine.
set -euo pipefail

cd "$(dirname "$0")/.."
PEERS_DIR="$PWD/.peers"
DEBS_DIR="$PEERS_DIR/debs"
NTPSEC_DIR="$PEERS_DIR/ntpsec"
NTPSEC_PKGS=(ntpsec python3-ntp)
SYSTEM_PKGS=(chrony redis-server iproute2 util-linux)

log() { printf 'install-peers: %s\n' "$*" >&2; }

SUDO=()
if [[ $EUID -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo -n)
    else
        log "not root and no sudo: package installation may fail"
    fi
fi

export DEBIAN_FRONTEND=noninteractive
APT_UPDATED=0
apt_update_once() {
    if [[ $APT_UPDATED -eq 0 ]]; then
        log "apt-get update"
        "${SUDO[@]}" apt-get update -qq
        APT_UPDATED=1
    fi
}

is_installed() {
    [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" == "install ok installed" ]]
}

# Runs "$@" (an apt-get call); on failure refreshes the package lists once and retries.
apt_retry() {
    if [[ $APT_UPDATED -eq 0 ]] && ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
        apt_update_once
    fi
    if ! "$@"; then
        if [[ $APT_UPDATED -eq 1 ]]; then
            return 1
        fi
        apt_update_once
        "$@"
    fi
}

# Stops and disables the system service of a package this script just installed.
quiesce_service() {
    local unit=$1 pidfile=$2 pid
    if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
        "${SUDO[@]}" systemctl disable --now "$unit" >/dev/null 2>&1 || true
    else
        if [[ -x /etc/init.d/$unit ]]; then
            "${SUDO[@]}" update-rc.d "$unit" disable >/dev/null 2>&1 || true
        fi
        if [[ -r $pidfile ]]; then
            pid=$(cat "$pidfile" 2>/dev/null || true)
            if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
                log "stopping the $unit service the package started (pid $pid)"
                "${SUDO[@]}" service "$unit" stop >/dev/null 2>&1 || "${SUDO[@]}" kill "$pid" || true
            fi
        fi
    fi
}

# --- system packages --------------------------------------------------------
missing=()
for pkg in "${SYSTEM_PKGS[@]}"; do
    is_installed "$pkg" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    # Keep maintainer scripts from starting daemons (policy-rc.d, 101 = action forbidden).
    policy=/usr/sbin/policy-rc.d
    own_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
        "${SUDO[@]}" chmod 755 "$policy"
        own_policy=1
    fi
    status=0
    apt_update_once
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || status=$?
    if [[ $own_policy -eq 1 ]]; then
        "${SUDO[@]}" rm -f "$policy"
    fi
    [[ $status -eq 0 ]] || { log "apt-get install failed ($status)"; exit "$status"; }
    for pkg in "${missing[@]}"; do
        case $pkg in
            chrony) quiesce_service chrony /run/chrony/chronyd.pid ;;
            redis-server) quiesce_service redis-server /run/redis/redis-server.pid ;;
        esac
    done
fi
for cmd in chronyd chronyc redis-server ip unshare nsenter setpriv; do
    command -v "$cmd" >/dev/null 2>&1 || [[ -x /usr/sbin/$cmd ]] || {
        log "$cmd still missing after installation"
        exit 1
    }
done

# --- NTPsec, unpacked, not installed ---------------------------------------
stamp="$NTPSEC_DIR/.unpacked"
if [[ ! -f $stamp || ! -x $NTPSEC_DIR/usr/sbin/ntpd ]]; then
    mkdir -p "$DEBS_DIR"
    debs=()
    for pkg in "${NTPSEC_PKGS[@]}"; do
        found=$(compgen -G "$DEBS_DIR/${pkg}_*.deb" | head -n1 || true)
        if [[ -z $found ]]; then
            log "downloading $pkg"
            (cd "$DEBS_DIR" && apt_retry apt-get -qq -o APT::Sandbox::User=root download "$pkg")
            found=$(compgen -G "$DEBS_DIR/${pkg}_*.deb" | head -n1)
        fi
        debs+=("$found")
    done
    rm -rf "$NTPSEC_DIR"
    mkdir -p "$NTPSEC_DIR"
    for deb in "${debs[@]}"; do
        dpkg -x "$deb" "$NTPSEC_DIR"
    done
    # ntp/ntpc.py looks for libntpc.so next to itself first.
    ln -sf ../../../../lib/x86_64-linux-gnu/ntp/libntpc.so \
        "$NTPSEC_DIR/usr/lib/python3/dist-packages/ntp/libntpc.so"
    printf '%s\n' "${debs[@]##*/}" >"$stamp"
    log "NTPsec unpacked into $NTPSEC_DIR"
fi

# Shared libraries ntpd and libntpc need: install the Debian packages that provide
# the missing ones (they are among ntpsec's and python3-ntp's library dependencies).
missing_libs() {
    { ldd "$NTPSEC_DIR/usr/sbin/ntpd"; ldd "$NTPSEC_DIR"/usr/lib/*/ntp/libntpc.so; } 2>/dev/null \
        | awk '/not found/ {print $1}' | sort -u
}
if [[ -n "$(missing_libs)" ]]; then
    lib_pkgs=()
    for deb in "$DEBS_DIR"/*.deb; do
        # Depends: "a (>= 1), b | c, libfoo0 (>= 2)" -> lib* package names
        while read -r dep; do
            if [[ $dep == lib* ]] && ! is_installed "$dep"; then
                lib_pkgs+=("$dep")
            fi
        done < <(dpkg-deb -f "$deb" Depends | tr ',' '\n' | sed -E 's/\|.*//; s/\(.*\)//; s/:any//; s/^ +//; s/ +$//')
    done
    if ((${#lib_pkgs[@]})); then
        log "installing libraries for ntpd: ${lib_pkgs[*]}"
        apt_update_once
        "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${lib_pkgs[@]}" >/dev/null
    fi
    still=$(missing_libs)
    if [[ -n $still ]]; then
        log "ntpd still misses shared libraries: $still"
        exit 1
    fi
fi

"$NTPSEC_DIR/usr/sbin/ntpd" --version >/dev/null 2>&1 || {
    log "unpacked ntpd does not run: $NTPSEC_DIR/usr/sbin/ntpd --version"
    exit 1
}
log "peers ready: $(chronyd --version | head -n1); $("$NTPSEC_DIR/usr/sbin/ntpd" --version 2>&1 | head -n1)"

# chrony 4.6 from Debian 13, unpacked beside the project: AEAD 30 and record 1024.
bash "$(dirname "$0")/install-chrony-modern.sh"
