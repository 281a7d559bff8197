#!/bin/sh
# coverage.sh BUILD - line coverage of each src/*.c and in total, from the
# gcov data that a `--coverage` build in BUILD collected while the tests ran
# (`make coverage`). Run from the top of the tree. The annotated sources go
# to BUILD/gcov/*.c.gcov, where lines marked ##### never ran.
set -eu
build=$(cd "$1" && pwd)
top=$(pwd)
mkdir -p "$build/gcov"
cd "$build/gcov"
ln -sfn "$top/src" src # gcov names sources as they were compiled: src/X.c
for f in src/*.c; do
	gcov -o "$build/obj" "$f" 2>/dev/null | awk -v want="$f" '
		/^File / { cur = substr($2, 2, length($2) - 2); next }
		/^Lines executed:/ && cur == want && !seen {
			seen = 1
			pct = substr($2, 10); sub(/%/, "", pct)
			n = split(want, p, "/")
			printf "%-16s %6.2f%% of %5d lines\n", p[n], pct, $4
		}'
done | awk '{ print; run += $2 * $4 / 100; all += $4 }
	END { if (all) printf "%-16s %6.2f%% of %5d lines\n", "total", 100 * run / all, all }'
