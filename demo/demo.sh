#!/bin/bash
# demo.sh - prism end to end in three network namespaces:
#
#   client 203.0.113.2 / 2001:db8:c::2
#     | veth
#   edge   203.0.113.1 / 2001:db8:c::1  (prism)  198.51.100.1 / 2001:db8:1::1
#     | veth
#   origin 198.51.100.10, .11 / 2001:db8:1::10  (demo/origin.py)
#
# The client reaches whole prefixes (192.0.2.0/24, 198.18.0.0/16,
# 2001:db8::/64) through the edge, where prism accepts any address and port
# in them and relays to the origins. Run as root: `make demo`, or
# PRISM=/path/to/prism bash demo/demo.sh. DEMO_SECONDS=N keeps it up N
# seconds (default: until Ctrl-C on a terminal, else stop right away).
set -euo pipefail

PRISM=${PRISM:-$(cd "$(dirname "$0")/.." && pwd)/build/prism}
DEMO_DIR=$(cd "$(dirname "$0")" && pwd)
PY=/usr/bin/python3
CLIENT=prism-demo-client-$$
EDGE=prism-demo-edge-$$
ORIGIN=prism-demo-origin-$$
TMP=
PRISM_PID=
SLEEP_PID=
ORIGIN_PIDS=()
NETNS_MADE=()

say() { printf '\n== %s\n' "$*"; }
die() {
	printf 'demo: %s\n' "$*" >&2
	exit 1
}

# Stops what this run started, by pid, and deletes its namespaces. Runs on
# every exit path; each step tolerates "already gone".
cleanup() {
	local rc=$? i pid
	trap - EXIT INT TERM
	set +e
	[ "$rc" = 0 ] || echo "demo: cleaning up (exit status $rc)" >&2
	if [ -n "$PRISM_PID" ] && kill -0 "$PRISM_PID" 2>/dev/null; then
		kill -TERM "$PRISM_PID"
		for ((i = 0; i < 150; i++)); do
			kill -0 "$PRISM_PID" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$PRISM_PID" 2>/dev/null
		wait "$PRISM_PID" 2>/dev/null
	fi
	[ -n "$SLEEP_PID" ] && kill "$SLEEP_PID" 2>/dev/null
	for pid in "${ORIGIN_PIDS[@]}"; do
		kill -TERM "$pid" 2>/dev/null
		wait "$pid" 2>/dev/null
	done
	for ns in "${NETNS_MADE[@]}"; do
		ip netns del "$ns" 2>/dev/null
	done
	[ -n "$TMP" ] && rm -rf "$TMP"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

[ "$(id -u)" = 0 ] || die "needs root (network namespaces, nftables)"
[ -x "$PRISM" ] || die "no prism binary at $PRISM (run make first)"
for tool in ip nft "$PY"; do
	command -v "$tool" >/dev/null || die "$tool not found (run scripts/deps.sh)"
done
TMP=$(mktemp -d /tmp/prism-demo.XXXXXX)

say "Creating namespaces $CLIENT, $EDGE, $ORIGIN"
for ns in "$CLIENT" "$EDGE" "$ORIGIN"; do
	ip netns add "$ns"
	NETNS_MADE+=("$ns")
	# No duplicate address detection, so IPv6 (link-local included) is
	# usable at once rather than after a second or two.
	ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
	ip -n "$ns" link set lo up
done
# veth pairs are created inside the namespaces, so no name can clash with
# the host's or another run's interfaces.
ip -n "$CLIENT" link add eth0 type veth peer name to-client netns "$EDGE"
ip -n "$EDGE" link add to-origin type veth peer name eth0 netns "$ORIGIN"
ip -n "$CLIENT" addr add 203.0.113.2/24 dev eth0
ip -n "$CLIENT" addr add 2001:db8:c::2/64 dev eth0 nodad
ip -n "$EDGE" addr add 203.0.113.1/24 dev to-client
ip -n "$EDGE" addr add 2001:db8:c::1/64 dev to-client nodad
ip -n "$EDGE" addr add 198.51.100.1/24 dev to-origin
ip -n "$EDGE" addr add 2001:db8:1::1/64 dev to-origin nodad
ip -n "$ORIGIN" addr add 198.51.100.10/24 dev eth0
ip -n "$ORIGIN" addr add 198.51.100.11/24 dev eth0
ip -n "$ORIGIN" addr add 2001:db8:1::10/64 dev eth0 nodad
ip -n "$CLIENT" link set eth0 up
ip -n "$EDGE" link set to-client up
ip -n "$EDGE" link set to-origin up
ip -n "$ORIGIN" link set eth0 up
ip -n "$CLIENT" route add 192.0.2.0/24 via 203.0.113.1
ip -n "$CLIENT" route add 198.18.0.0/15 via 203.0.113.1
ip -n "$CLIENT" -6 route add 2001:db8::/64 via 2001:db8:c::1
ip -n "$ORIGIN" route add default via 198.51.100.1
ip -n "$ORIGIN" -6 route add default via 2001:db8:1::1
# Resolve the next hops now (bounded): right after link-up the first IPv6
# neighbor solicitation can go unanswered, which would cost the first demo
# connection a 1 s SYN retransmit.
warm_neigh() { # NS ADDR
	local i
	for ((i = 0; i < 20; i++)); do
		ip netns exec "$1" bash -c "echo >/dev/udp/$2/9" 2>/dev/null || true
		ip -n "$1" neigh show to "$2" | grep -q lladdr && return 0
		sleep 0.25
	done
	echo "  (no neighbor entry for $2 in $1 yet, going on)"
}
warm_neigh "$CLIENT" 203.0.113.1
warm_neigh "$CLIENT" 2001:db8:c::1
warm_neigh "$EDGE" 198.51.100.10
warm_neigh "$EDGE" 198.51.100.11
warm_neigh "$EDGE" 2001:db8:1::10

say "Starting origins in $ORIGIN: echo on 198.51.100.10:7, whoami on 198.51.100.11 (any port) and [2001:db8:1::10]:9000"
# prism dials 198.51.100.11 on whatever port the client dialed; one python
# listener stands in for all 65535 of them via a redirect in the origin ns.
ip netns exec "$ORIGIN" nft -f - <<'EOF'
table ip prism_demo {
	chain prerouting {
		type nat hook prerouting priority dstnat
		ip daddr 198.51.100.11 tcp dport != 9999 dnat to 198.51.100.11:9999
	}
}
EOF
# setsid: a Ctrl-C at the terminal must reach only this script, which then
# stops everything in order (prism first, by SIGTERM).
start_origin() {
	ip netns exec "$ORIGIN" setsid "$PY" "$DEMO_DIR/origin.py" "$@" >"$TMP/origin-$1-$3.log" 2>&1 &
	ORIGIN_PIDS+=($!)
}
start_origin echo 198.51.100.10 7
start_origin whoami 198.51.100.11 9999
start_origin whoami 2001:db8:1::10 9000
# Wait (bounded) for each origin's "listening" line.
for f in echo-7 whoami-9999 whoami-9000; do
	for ((i = 0; i < 100; i++)); do
		grep -q listening "$TMP/origin-$f.log" 2>/dev/null && break
		sleep 0.1
	done
	grep -q listening "$TMP/origin-$f.log" ||
		die "origin $f did not start: $(cat "$TMP/origin-$f.log")"
done

CFG=$TMP/prism.yaml
cat >"$CFG" <<'EOF'
# prism demo config: three apps on whole prefixes.
listen:
  port: 15001
  workers: 2
shutdown_grace: 3s
timeouts:
  connect: 2s
  idle: 30s
apps:
  - name: echo                 # any address in the /24, ports 7000-7999
    edge: 192.0.2.0/24
    ports: "7000-7999"
    origins: 198.51.100.10:7
  - name: whoami               # any address, any port; origin port = dialed port
    edge: 198.18.0.0/16
    ports: "*"
    origins: 198.51.100.11
    proxy_protocol: v2
  - name: whoami6
    edge: "2001:db8::/64"
    ports: "*"
    origins: "[2001:db8:1::10]:9000"
    proxy_protocol: v1
EOF
say "Config ($CFG):"
sed -n '/^apps:/,$p' "$CFG"

LOG=$TMP/prism.log
say "Starting prism in $EDGE: $PRISM run -c $CFG"
: >"$LOG"
# `ip netns exec` and setsid exec prism, so $! is prism's own pid.
ip netns exec "$EDGE" setsid "$PRISM" run -c "$CFG" 2>"$LOG" &
PRISM_PID=$!
for ((i = 0; i < 100; i++)); do
	grep -q ready "$LOG" && break
	kill -0 "$PRISM_PID" 2>/dev/null || break
	sleep 0.1
done
if ! grep -q ready "$LOG"; then
	printf 'prism log:\n' >&2
	sed 's/^/  /' "$LOG" >&2
	kill -0 "$PRISM_PID" 2>/dev/null || die "prism exited before printing its 'ready' line"
	die "prism printed no 'ready' line within 10 s"
fi
sed 's/^/  /' "$LOG"

# Random addresses and ports inside the served ranges.
rnd() { echo $((RANDOM % ($2 - $1 + 1) + $1)); }
A1=192.0.2.$(rnd 1 254)
P1=$(rnd 7000 7999)
A2=198.18.$(rnd 0 255).$(rnd 1 254)
P2=$(rnd 1 65535)
A3=2001:db8::$(printf '%x' "$(rnd 1 65535)")
P3=$(rnd 1 65535)
failed=0
connect() { # APP ADDR PORT MESSAGE
	if [[ $2 == *:* ]]; then
		printf '\n  client -> [%s]:%s (app %s)\n' "$2" "$3" "$1"
	else
		printf '\n  client -> %s:%s (app %s)\n' "$2" "$3" "$1"
	fi
	ip netns exec "$CLIENT" "$PY" "$DEMO_DIR/client.py" "$2" "$3" "$4" || failed=$((failed + 1))
}
say "Client connections from $CLIENT"
connect echo "$A1" "$P1" "hello, echo"
connect whoami "$A2" "$P2" "who am I?"
connect whoami6 "$A3" "$P3" "and over IPv6?"

say "prism's access log for them:"
# A connection's line is written when it ends, just after the client saw
# the close: wait (bounded) for all three.
for ((i = 0; i < 50; i++)); do
	[ "$(grep -c ' access ' "$LOG" || true)" -ge 3 ] && break
	sleep 0.1
done
grep ' access ' "$LOG" | sed 's/^/  /' || echo "  (none)"

say "nftables table in $EDGE (nft list table inet prism):"
ip netns exec "$EDGE" nft list table inet prism | sed 's/^/  /' || true
say "Local (AnyIP) routes and policy rules in $EDGE:"
{
	ip netns exec "$EDGE" ip -4 rule show | grep -v -e 'lookup local' -e 'lookup main' -e 'lookup default' || true
	ip netns exec "$EDGE" ip -6 rule show | grep -v -e 'lookup local' -e 'lookup main' || true
	ip netns exec "$EDGE" ip -4 route show table all type local | grep -v 'proto kernel' || true
	ip netns exec "$EDGE" ip -6 route show table all type local | grep -v 'proto kernel' || true
} | sed 's/^/  /'

if [ -z "${DEMO_SECONDS:-}" ] && [ ! -t 0 ]; then
	DEMO_SECONDS=0
fi
hint="ip netns exec $CLIENT $PY $DEMO_DIR/client.py 198.18.1.2 4242 hi"
if [ -z "${DEMO_SECONDS:-}" ]; then
	say "prism is running; try:  $hint"
	say "Press Ctrl-C to stop."
	duration=infinity
else
	[ "$DEMO_SECONDS" -gt 0 ] && say "prism keeps running for $DEMO_SECONDS s; try:  $hint"
	duration=$DEMO_SECONDS
fi
# Backgrounded so a signal is handled at once; Ctrl-C here just ends the
# wait and the demo stops normally.
trap 'true' INT
sleep "$duration" &
SLEEP_PID=$!
wait "$SLEEP_PID" || true
kill "$SLEEP_PID" 2>/dev/null || true
SLEEP_PID=
trap 'exit 130' INT

say "Stopping prism (SIGTERM to pid $PRISM_PID)"
before=$(wc -l <"$LOG")
kill -TERM "$PRISM_PID" 2>/dev/null || true
rc=0
wait "$PRISM_PID" || rc=$?
PRISM_PID=
tail -n +"$((before + 1))" "$LOG" | sed 's/^/  /'
echo "  prism exited with status $rc"
[ "$rc" = 0 ] || die "prism did not exit cleanly"
[ "$failed" = 0 ] || die "$failed client connection(s) failed"
say "Done; namespaces removed on exit."
