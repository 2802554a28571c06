#!/usr/bin/env bash
# Installs the real peers the interop tests start on loopback.
#
#   - redis-server, iproute2 (ip), util-linux (unshare, nsenter, setpriv):
#     installed from Debian's packages when missing (none is a time service);
#   - chrony 4.3 and NTPsec 1.2.2: downloaded with `apt-get download` and
#     unpacked into .peers/chrony/ and .peers/ntpsec/, never installed, never
#     started as a service. Installing Debian's chrony package would remove
#     systemd-timesyncd (the packages conflict) and leave the host without time
#     synchronisation. tests/peers/chrony.py runs .peers/chrony/usr/sbin/chronyd
#     (as `chronyd -x -u nobody`), tests/peers/ntpsec.py .peers/ntpsec/usr/sbin/ntpd.
#     Shared libraries they need and the host lacks are installed from Debian
#     (library packages only);
#   - chrony 4.6 from Debian 13, unpacked: scripts/install-chrony-modern.sh.
#
# The host's time service is left exactly as found: its packages and unit
# enablement are recorded first and compared at the end
# (scripts/time-service-state.sh); any difference fails this script loudly.
# Idempotent and fast when everything is already there (no apt-get update then).
set -euo pipefail

cd "$(dirname "$0")/.."
PEERS_DIR="$PWD/.peers"
DEBS_DIR="$PEERS_DIR/debs"
NTPSEC_DIR="$PEERS_DIR/ntpsec"
CHRONY_DIR="$PEERS_DIR/chrony"
NTPSEC_DEBS=(ntpsec python3-ntp)
CHRONY_DEBS=(chrony)
SYSTEM_PKGS=(redis-server iproute2 util-linux)

log() { printf 'install-peers: %s\n' "$*" >&2; }

TIME_STATE=$(mktemp)
bash scripts/time-service-state.sh >"$TIME_STATE"
check_time_service() {
    local status=$?
    if ! bash scripts/time-service-state.sh --check "$TIME_STATE"; then
        log "FAILED: the host's time service was changed during the setup"
        status=1
    fi
    rm -f "$TIME_STATE"
    exit "$status"
}
trap check_time_service EXIT

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

# apt-get install, quiet: debconf's "delaying package configuration, since apt-utils
# is not installed" is not news on a minimal system.
apt_install() {
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
        2> >(grep -v 'apt-utils is not installed' >&2)
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

# --- system packages (no time service among them) ---------------------------
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
    apt_install "${missing[@]}" || status=$?
    if [[ $own_policy -eq 1 ]]; then
        "${SUDO[@]}" rm -f "$policy"
    fi
    [[ $status -eq 0 ]] || { log "apt-get install failed ($status)"; exit "$status"; }
    for pkg in "${missing[@]}"; do
        case $pkg in
            redis-server) quiesce_service redis-server /run/redis/redis-server.pid ;;
        esac
    done
fi
for cmd in redis-server ip unshare nsenter setpriv; do
    command -v "$cmd" >/dev/null 2>&1 || [[ -x /usr/sbin/$cmd ]] || {
        log "$cmd still missing after installation"
        exit 1
    }
done

# --- chrony and NTPsec, unpacked, not installed -----------------------------
# unpack DIR BINARY PKG...: downloads each PKG's .deb into $DEBS_DIR (once) and
# unpacks them all into DIR, unless DIR/BINARY is already there from the same debs.
unpack() {
    local dir=$1 binary=$2 pkg found deb
    shift 2
    local stamp="$dir/.unpacked" debs=()
    if [[ -f $stamp && -x $dir/$binary ]]; then
        return 0
    fi
    mkdir -p "$DEBS_DIR"
    for pkg in "$@"; do
        found=$(compgen -G "$DEBS_DIR/${pkg}_*.deb" | head -n1 || true)
        if [[ -z $found ]]; then
            log "downloading $pkg"
            (cd "$DEBS_DIR" && apt_retry apt-get -qq -o APT::Sandbox::User=root download "$pkg")
            found=$(compgen -G "$DEBS_DIR/${pkg}_*.deb" | head -n1)
        fi
        debs+=("$found")
    done
    rm -rf "$dir"
    mkdir -p "$dir"
    for deb in "${debs[@]}"; do
        dpkg -x "$deb" "$dir"
    done
    printf '%s\n' "${debs[@]##*/}" >"$stamp"
    log "${*} unpacked into $dir"
}

unpack "$CHRONY_DIR" usr/sbin/chronyd "${CHRONY_DEBS[@]}"
unpack "$NTPSEC_DIR" usr/sbin/ntpd "${NTPSEC_DEBS[@]}"
# ntp/ntpc.py looks for libntpc.so next to itself first.
ln -sf ../../../../lib/x86_64-linux-gnu/ntp/libntpc.so \
    "$NTPSEC_DIR/usr/lib/python3/dist-packages/ntp/libntpc.so"

# Shared libraries chronyd, chronyc, ntpd and libntpc need: install the Debian
# packages that provide the missing ones (they are among the unpacked packages'
# library dependencies; libraries only, never a daemon).
missing_libs() {
    { ldd "$CHRONY_DIR/usr/sbin/chronyd"; ldd "$CHRONY_DIR/usr/bin/chronyc"
      ldd "$NTPSEC_DIR/usr/sbin/ntpd"; ldd "$NTPSEC_DIR"/usr/lib/*/ntp/libntpc.so; } 2>/dev/null \
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
        log "installing libraries for chronyd and ntpd: ${lib_pkgs[*]}"
        apt_update_once
        apt_install "${lib_pkgs[@]}"
    fi
    still=$(missing_libs)
    if [[ -n $still ]]; then
        log "chronyd or ntpd still misses shared libraries: $still"
        exit 1
    fi
fi

"$NTPSEC_DIR/usr/sbin/ntpd" --version >/dev/null 2>&1 || {
    log "unpacked ntpd does not run: $NTPSEC_DIR/usr/sbin/ntpd --version"
    exit 1
}
"$CHRONY_DIR/usr/sbin/chronyd" --version >/dev/null 2>&1 || {
    log "unpacked chronyd does not run: $CHRONY_DIR/usr/sbin/chronyd --version"
    exit 1
}
log "peers ready: $("$CHRONY_DIR/usr/sbin/chronyd" --version | head -n1); $("$NTPSEC_DIR/usr/sbin/ntpd" --version 2>&1 | head -n1)"

# chrony 4.6 from Debian 13, unpacked beside the project: AEAD 30 and record 1024.
bash "$(dirname "$0")/install-chrony-modern.sh"

# roughly 0.3.0 (Roughtime client and server) in a venv of its own: .peers/roughly.
bash "$(dirname "$0")/install-roughly.sh"
