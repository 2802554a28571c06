#!/usr/bin/env bash
# Makes Debian 13 (trixie)'s chronyd/chronyc runnable from .peers/chrony-modern/
# on a Debian 12 machine, without touching the system.
#
# Debian 12's chrony 4.3 cannot negotiate AEAD 30 (AES-128-GCM-SIV) nor the
# NTS-KE record 1024; trixie's chrony 4.6.1 can, but it needs glibc >= 2.38 and
# gnutls >= 3.8.1. So:
#
#   - a private apt configuration (.peers/chrony-modern/apt/: a sources file for
#     trixie main on the mirror this machine's apt sources already use for its
#     own release (scripts/apt-source.py), its own lists and cache; the system's
#     lists and dpkg status are neither read nor written) downloads chrony and
#     every shared library it needs, transitively, libc6 included;
#   - each .deb is unpacked with `dpkg -x` into .peers/chrony-modern/root/;
#   - .peers/chrony-modern/chronyd and .../chronyc are wrappers that exec
#     trixie's own dynamic loader with --library-path on the unpacked libraries
#     and --inhibit-cache (the system's /etc/ld.so.cache lists bookworm's).
#
# Nothing is installed or configured system-wide; trixie is never added to the
# system's apt sources. Run as root (apt-get needs it for its lock files and
# the _apt sandbox). Idempotent; when everything is in place it only checks
# `chronyd --version` and exits.
#
# Running the result: exactly like the unpacked chrony 4.3 (tests/peers/chrony.py),
# `.peers/chrony-modern/chronyd -x -d -u nobody -f CONF` as root (-x: the system
# clock is never touched; -u: the user it drops to, its folders owned by it).
set -euo pipefail

cd "$(dirname "$0")/.."
TOP="$PWD/.peers/chrony-modern"
APT_DIR="$TOP/apt"
DEBS_DIR="$TOP/debs"
ROOT="$TOP/root"
LIBDIR="$ROOT/usr/lib/x86_64-linux-gnu"
STAMP="$TOP/.installed"
SUITE=trixie
WANT_VERSION="4.6"   # any 4.6.x (trixie ships 4.6.1)

log() { printf 'install-chrony-modern: %s\n' "$*" >&2; }

# --- already done? -----------------------------------------------------------
if [[ -f $STAMP && -x $TOP/chronyd && -x $TOP/chronyc ]] \
    && "$TOP/chronyd" --version 2>/dev/null | grep -q "^chronyd (chrony) version $WANT_VERSION" \
    && "$TOP/chronyc" --version 2>/dev/null | grep -q "^chronyc (chrony) version $WANT_VERSION"; then
    exit 0
fi

[[ $(dpkg --print-architecture) == amd64 ]] || { log "only amd64 is supported"; exit 1; }
if [[ $EUID -ne 0 ]]; then
    log "run as root (apt-get update needs it, and chronyd is started as root)"
    exit 1
fi

# --- private apt configuration ----------------------------------------------
mkdir -p "$APT_DIR/lists/partial" "$APT_DIR/cache/archives/partial" "$DEBS_DIR"
# The mirror (and key ring) of the machine's own apt sources, with the newer suite.
source_line=$(python3 "$(dirname "$0")/apt-source.py") || {
    log "cannot find this machine's Debian mirror in /etc/apt/sources.list*"
    exit 1
}
MIRROR=${source_line%%$'\t'*}
KEYRING=${source_line#*$'\t'}
[[ -n $KEYRING ]] || KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
cat >"$APT_DIR/$SUITE.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: $SUITE
Components: main
Signed-By: $KEYRING
EOF
APT_OPTS=(
    -o "Dir::Etc::SourceList=$APT_DIR/$SUITE.sources"
    -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$APT_DIR/lists"
    -o "Dir::Cache=$APT_DIR/cache"
    -o Dir::State::status=/dev/null          # candidates from trixie only, whatever is installed
    -o Dir::Etc::Preferences=/dev/null
    -o Dir::Etc::PreferencesParts=/dev/null
    -o APT::Architectures=amd64
    -o Acquire::Languages=none
    -o APT::Sandbox::User=root               # downloads into $DEBS_DIR, which _apt cannot write
)
export DEBIAN_FRONTEND=noninteractive

UPDATED=0
apt_update() {
    log "apt-get update ($SUITE, private lists in ${APT_DIR#"$PWD"/})"
    apt-get "${APT_OPTS[@]}" -qq update
    UPDATED=1
}
have_lists() { compgen -G "$APT_DIR/lists/*_${SUITE}_main_binary-amd64_Packages*" >/dev/null; }

# The packages to fetch: chrony and the closure of its library dependencies
# (Depends/Pre-Depends of lib* packages; tools such as adduser or iproute2 and
# data such as tzdata are not needed to run the binaries).
package_list() {
    local seeds
    seeds=$(apt-cache "${APT_OPTS[@]}" show chrony \
        | awk '/^Depends:/ {sub(/^Depends: */, ""); print; exit}' \
        | tr ',' '\n' | sed -E 's/\|.*//; s/\(.*\)//; s/:any//; s/^ +//; s/ +$//' \
        | grep -E '^(lib|zlib)')
    [[ -n $seeds ]] || return 1
    echo chrony
    # shellcheck disable=SC2086
    apt-cache "${APT_OPTS[@]}" depends --recurse --no-recommends --no-suggests \
        --no-conflicts --no-breaks --no-replaces --no-enhances $seeds \
        | grep -E '^(lib|zlib)' | sort -u
}

fetch() {
    local pkgs
    mapfile -t pkgs < <(package_list) || return 1
    ((${#pkgs[@]} > 1)) || return 1
    rm -f "$DEBS_DIR"/*.deb
    log "downloading ${pkgs[*]}"
    (cd "$DEBS_DIR" && apt-get "${APT_OPTS[@]}" -qq download "${pkgs[@]}")
}

have_lists || apt_update
if ! fetch; then
    [[ $UPDATED -eq 0 ]] || { log "download failed"; exit 1; }
    apt_update
    fetch || { log "download failed"; exit 1; }
fi

# --- unpack -----------------------------------------------------------------
rm -rf "$ROOT"
mkdir -p "$ROOT"
for deb in "$DEBS_DIR"/*.deb; do
    dpkg -x "$deb" "$ROOT"
done
LOADER="$LIBDIR/ld-linux-x86-64.so.2"
[[ -x $LOADER ]] || { log "no dynamic loader at $LOADER"; exit 1; }
LIBPATH="$LIBDIR"
[[ -d $ROOT/lib/x86_64-linux-gnu ]] && LIBPATH="$LIBPATH:$ROOT/lib/x86_64-linux-gnu"

# --- wrappers -----------------------------------------------------------------
# - --inhibit-cache: never resolve a library through the system's ld.so.cache;
#   --library-path replaces LD_LIBRARY_PATH, and LD_PRELOAD is dropped.
# - GNUTLS_SYSTEM_PRIORITY_FILE: trixie's gnutls would otherwise read
#   /etc/gnutls/config, the system's (bookworm's) crypto policy, if one appears.
# - GCONV_PATH: iconv modules of the same glibc, not bookworm's.
write_wrapper() {
    local name=$1 bin=$2 tmp
    tmp=$(mktemp "$TOP/.$name.XXXXXX")
    cat >"$tmp" <<EOF
#!/bin/sh
# trixie's $name run by trixie's own dynamic loader; written by scripts/install-chrony-modern.sh
unset LD_PRELOAD LD_LIBRARY_PATH
GNUTLS_SYSTEM_PRIORITY_FILE="$TOP/gnutls-priority.conf"
GCONV_PATH="$LIBDIR/gconv"
export GNUTLS_SYSTEM_PRIORITY_FILE GCONV_PATH
exec "$LOADER" --inhibit-cache --library-path "$LIBPATH" --argv0 "$name" "$bin" "\$@"
EOF
    chmod 755 "$tmp"
    mv -f "$tmp" "$TOP/$name"
}
: >"$TOP/gnutls-priority.conf"
write_wrapper chronyd "$ROOT/usr/sbin/chronyd"
write_wrapper chronyc "$ROOT/usr/bin/chronyc"

# --- checks -------------------------------------------------------------------
# Every library must resolve inside $ROOT.
for bin in "$ROOT/usr/sbin/chronyd" "$ROOT/usr/bin/chronyc"; do
    listing=$("$LOADER" --inhibit-cache --library-path "$LIBPATH" --list "$bin")
    outside=$(printf '%s\n' "$listing" | awk '/=>/ && $1 !~ /ld-linux/ && $3 !~ "^'"$ROOT"'/" {print}')
    if [[ -n $outside ]] || grep -q 'not found' <<<"$listing"; then
        log "${bin##*/} resolves libraries outside $ROOT:"
        printf '%s\n' "$listing" >&2
        exit 1
    fi
done
version=$("$TOP/chronyd" --version | head -n1)
[[ $version == "chronyd (chrony) version $WANT_VERSION"* ]] || { log "unexpected: $version"; exit 1; }
"$TOP/chronyc" --version | grep -q "^chronyc (chrony) version $WANT_VERSION" || { log "chronyc does not run"; exit 1; }

(cd "$DEBS_DIR" && ls -1 -- *.deb) >"$STAMP"
log "ready: $version ($TOP/chronyd)"
