#!/bin/bash
# Builds rxen's Debian package, rxen_VERSION_ARCH.deb, with dpkg-deb from a staging tree:
# /usr/bin/{rxl,rxend,rxen-vmm,rxen-shell}, the manual pages and bash/zsh completion that
# rxl-gen-man generates, the systemd units of contrib/systemd, /etc/rxen/rxend.toml (a
# conffile) and the documentation.
#
#   scripts/package-deb.sh [--bin-dir DIR] [--out DIR] [--fast]
#
# --bin-dir takes the binaries (rxl, rxend, rxen-vmm, rxen-shell, rxl-gen-man) already built
# there, e.g. target/debug, and runs no cargo; without it, the release binaries are built.
# --out is where the package goes (default target/deb). --fast compresses with gzip -1
# (1.7 s instead of 11 s for debug binaries here, 15% larger; the tests use it). The binaries
# are stripped in the staging copy. Prints the package's path.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin_dir=""
out="$root/target/deb"
level=9
while [ $# -gt 0 ]; do
    case "$1" in
        --bin-dir) bin_dir=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --fast) level=1; shift ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "package-deb.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

for tool in dpkg-deb dpkg strip objdump gzip; do
    command -v "$tool" >/dev/null || { echo "package-deb.sh: $tool is missing (dpkg, binutils, gzip)" >&2; exit 1; }
done

if [ -z "$bin_dir" ]; then
    (cd "$root" && cargo build --release --bins -p rxl -p rxend -p rxen-vmm >&2)
    bin_dir="$root/target/release"
fi
bins=(rxl rxend rxen-vmm rxen-shell)
for b in "${bins[@]}" rxl-gen-man; do
    [ -x "$bin_dir/$b" ] || { echo "package-deb.sh: $bin_dir/$b is missing: build it first" >&2; exit 1; }
done

version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' "$root/Cargo.toml")
[ -n "$version" ] || { echo "package-deb.sh: no version in Cargo.toml's [workspace.package]" >&2; exit 1; }
arch=$(dpkg --print-architecture)

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
chmod 0755 "$stage"
umask 022

install -d "$stage/usr/bin"
for b in "${bins[@]}"; do
    install -m 0755 "$bin_dir/$b" "$stage/usr/bin/$b"
    strip --strip-unneeded "$stage/usr/bin/$b"
done

gen="$stage/gen"
"$bin_dir/rxl-gen-man" "$gen" >/dev/null
for section in 1 5 8; do
    install -d "$stage/usr/share/man/man$section"
    for page in "$gen/man$section"/*."$section"; do
        gzip -9n <"$page" >"$stage/usr/share/man/man$section/$(basename "$page").gz"
    done
done
install -D -m 0644 "$gen/bash-completion/rxl" "$stage/usr/share/bash-completion/completions/rxl"
install -D -m 0644 "$gen/zsh/_rxl" "$stage/usr/share/zsh/vendor-completions/_rxl"
rm -rf "$gen"

# The units as contrib/systemd has them, with the package's paths.
install -d "$stage/lib/systemd/system"
for unit in "$root"/contrib/systemd/*.service; do
    sed -e 's|/usr/local/bin/|/usr/bin/|g' \
        -e 's|/usr/local/share/doc/rxen/|/usr/share/doc/rxen/|g' \
        "$unit" >"$stage/lib/systemd/system/$(basename "$unit")"
    chmod 0644 "$stage/lib/systemd/system/$(basename "$unit")"
done

install -D -m 0644 "$root/contrib/debian/rxend.toml" "$stage/etc/rxen/rxend.toml"

doc="$stage/usr/share/doc/rxen"
install -d "$doc/docs"
install -m 0644 "$root/README.md" "$doc/"
install -m 0644 "$root"/docs/*.md "$doc/docs/"
install -m 0644 "$root/examples/hello.cfg" "$doc/"
cat >"$doc/copyright" <<'COPYRIGHT'
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: rxen

Files: *
Copyright: the rxen developers
License: Apache-2.0
 On Debian systems, the full text of the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
COPYRIGHT

# libc6 as new as the newest glibc symbol version the binaries use.
glibc=$(for b in "${bins[@]}"; do objdump -T "$stage/usr/bin/$b"; done |
    grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)

install -d "$stage/DEBIAN"
cat >"$stage/DEBIAN/control" <<CONTROL
Package: rxen
Version: $version
Architecture: $arch
Maintainer: rxen developers <rxen@localhost>
Installed-Size: $size
Depends: libc6 (>= $glibc), libgcc-s1, iproute2
Recommends: bash-completion
Section: admin
Priority: optional
Homepage: https://localhost/rxen
Description: Xen-style virtualization on KVM: rxl, rxend, rxen-vmm
 rxen runs domains described by xl.cfg files on Linux's KVM. rxl is the
 xl-compatible command line, rxend the host daemon that supervises domains,
 rxen-vmm the confined virtual machine monitor (one process per domain), and
 rxen-shell the login shell that lets customers manage their own domains.
CONTROL
echo /etc/rxen/rxend.toml >"$stage/DEBIAN/conffiles"
# systemd learns about the units; nothing is enabled or started (see docs/install.md).
cat >"$stage/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
if [ "$1" = configure ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || true
fi
POSTINST
cat >"$stage/DEBIAN/postrm" <<'POSTRM'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || true
fi
if [ "$1" = purge ]; then
    rmdir /etc/rxen 2>/dev/null || true
fi
POSTRM
chmod 0755 "$stage/DEBIAN/postinst" "$stage/DEBIAN/postrm"

mkdir -p "$out"
deb="$out/rxen_${version}_${arch}.deb"
# gzip rather than dpkg-deb's default xz: xz takes far longer for a few MiB less.
dpkg-deb --root-owner-group -Zgzip -z"$level" --build "$stage" "$deb" >/dev/null
echo "$deb"
