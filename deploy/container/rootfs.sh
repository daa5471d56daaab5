#!/bin/sh
# Assembles the container's run-time file tree under OUT from a built binary:
#   usr/local/bin/embedgate        the binary, stripped of symbols and debug sections
#   etc/embedgate/embedgate.toml   container defaults (listeners on all interfaces, JSON logs)
#   etc/passwd, etc/group          the unprivileged user embedgate (10001) and no login shell
# Used by deploy/container/Dockerfile and by the test suite (tests/python/test_deploy.py).
# POSIX sh: it also runs in the Rust build image.
set -eu
if [ $# -ne 2 ]; then
  echo "usage: $0 OUT BINARY" >&2
  exit 2
fi
out=$1
binary=$2
here=$(cd "$(dirname "$0")" && pwd)

mkdir -p "$out/usr/local/bin" "$out/etc/embedgate"
cp "$binary" "$out/usr/local/bin/embedgate"
strip --strip-all "$out/usr/local/bin/embedgate"
chmod 0755 "$out/usr/local/bin/embedgate"
cp "$here/embedgate.toml" "$out/etc/embedgate/embedgate.toml"
chmod 0644 "$out/etc/embedgate/embedgate.toml"
cat > "$out/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
embedgate:x:10001:10001:embedgate:/nonexistent:/sbin/nologin
PASSWD
cat > "$out/etc/group" <<'GROUP'
root:x:0:
nogroup:x:65534:
embedgate:x:10001:
GROUP
