#!/bin/sh
# deps.sh [PKG...] - install the Debian packages prism needs to build, test
# and demo, and any given as arguments (gcovr for `make coverage`), but only
# those that are missing, so a second run costs one dpkg query.
set -e
PKGS="build-essential pkg-config clang clang-format libclang-rt-14-dev
libyaml-dev libnftables-dev libnftnl-dev libmnl-dev libcap-dev libcmocka-dev
nftables iproute2 python3 python3-pytest haproxy openssh-server openssh-client
iperf3 procps redis-server hping3 $*"
missing=""
for p in $PKGS; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
		missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
	echo "deps.sh: missing packages:$missing (run as root to install them)" >&2
	exit 1
fi
echo "deps.sh: installing$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# The packages' own services (haproxy, sshd) are not wanted running: tests
# start their own instances inside network namespaces.
created=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
	printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
	chmod +x /usr/sbin/policy-rc.d
	created=1
fi
apt-get install -y -qq --no-install-recommends $missing >/dev/null
[ "$created" = 1 ] && rm -f /usr/sbin/policy-rc.d
exit 0
