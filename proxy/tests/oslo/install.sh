#!/bin/sh
# Installs unmodified oslo.messaging 8.1.4 (the last release with the ZeroMQ
# driver) from PyPI into the venv $1, then applies the small Python 3
# compatibility fixes its ZeroMQ driver needs to the installed copy.
# Idempotent: a marker file records a finished install. Test processes run
# in parallel (nextest), so the install holds a lock: without it a second
# test could find the venv half-built, before the fixes below are applied.
set -eu
VENV="$1"
MARKER="$VENV/.oslo-messaging-8.1.4-patched"
[ -f "$MARKER" ] && exit 0
mkdir -p "$(dirname "$VENV")"
exec 9>"$VENV.lock"
flock 9
[ -f "$MARKER" ] && exit 0
python3 -m venv "$VENV"
# Versions known to work with 8.1.4 on Python 3.11 (constraints.txt).
"$VENV/bin/pip" install --quiet --disable-pip-version-check \
    -c "$(dirname "$0")/constraints.txt" "oslo.messaging==8.1.4" pyzmq redis
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
OM="$SITE/oslo_messaging"

# 1. collections.Mapping moved to collections.abc (removed in Python 3.10).
sed -i 's/collections\.Mapping/collections.abc.Mapping/g' "$OM/_drivers/common.py"
grep -q '^import collections.abc' "$OM/_drivers/common.py" ||
    sed -i 's/^import collections$/import collections\nimport collections.abc/' "$OM/_drivers/common.py"

# 2. RPCClient in 8.1.x passes call_monitor_timeout, which the ZeroMQ
#    driver's send() does not accept.
sed -i 's/^    def send(self, target, ctxt, message, wait_for_reply=None, timeout=None,$/    def send(self, target, ctxt, message, wait_for_reply=None, timeout=None, call_monitor_timeout=None,/' \
    "$OM/_drivers/impl_zmq.py"

# 3. redis-py returns bytes on Python 3; proxy addresses are used as str
#    (server identities stay bytes: they are routing-key frames).
MM="$OM/_drivers/zmq_driver/matchmaker/zmq_matchmaker_redis.py"
sed -i 's/        return \[tuple(hostname.split(.,.)) for hostname$/        return [tuple(six.ensure_str(hostname).split(",")) for hostname/' "$MM"
sed -i 's/        return self._smembers(_ROUTERS_KEY)$/        return [six.ensure_str(h) for h in self._smembers(_ROUTERS_KEY)]/' "$MM"

grep -q 'collections.abc.Mapping' "$OM/_drivers/common.py"
grep -q 'call_monitor_timeout=None' "$OM/_drivers/impl_zmq.py"
[ "$(grep -c 'six.ensure_str' "$MM")" = 2 ]
touch "$MARKER"
