/* lb.c - load-balancing algorithms: smooth weighted round robin (nginx),
 * least connections (HAProxy/Envoy), Maglev consistent hashing (Google),
 * power of two random choices (Envoy/HAProxy random(2)) and weighted
 * rendezvous hashing for source affinity.
 *
 * Every algorithm works in tiers: the primaries first, and the backups only
 * when no primary is usable. Weight 0 origins are never picked.
 *
 * Where nginx/HAProxy are weak and what is done instead:
 * - nginx's ip_hash/hash use the origin's index in the list, so every set
 *   rebuild (a DNS change, a reload) moves clients; here both consistent
 *   algorithms hash the origin's identity (address and port), so a set
 *   rebuilt without one origin moves only that origin's clients (maglev:
 *   plus Maglev's small documented disruption).
 * - HAProxy's consistent hash uses a ring with a fixed number of points per
 *   weight unit, whose balance is only within ~10%; Maglev's table keeps
 *   each origin's share within ~1% of its weight.
 * - source_hash uses weighted rendezvous hashing (score w / -ln(u)), which
 *   is exactly weight-proportional and perfectly consistent, at O(n) per
 *   pick with no table at all.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "lb.h"

/* Maglev's recommended minimum table size (a prime). */
#define MAGLEV_MIN_SIZE 65537u
/* Table entries per origin at least, so each share is within ~1%. */
#define MAGLEV_PER_ORIGIN 100u
/* Draws by weight before random_two falls back to a scan of the tier. */
#define R2_TRIES 4

#define SEED_CLIENT 0x9e3779b97f4a7c15ull
#define SEED_OFFSET 0xc2b2ae3d27d4eb4full
#define SEED_SKIP   0x165667b19e3779f9ull
#define SEED_HRW    0x27d4eb2f165667c5ull

/* One tier (primaries or backups) of the set, weight > 0 only. */
struct lb_tier {
	uint32_t *idx; /* indexes into set->v */
	size_t n;
	uint64_t *cum; /* random_two: cumulative weights, cum[n-1] = total */
	uint32_t *tab; /* maglev: m entries, each an index into set->v */
};

struct lb_table {
	enum cfg_balance algo;
	size_t n;		/* origins in the set it was built for */
	uint32_t m;		/* maglev table size (prime) */
	struct lb_tier tier[2]; /* [0] primaries, [1] backups */
	uint64_t *id;		/* per origin of the set: identity hash */
	double *inv_w;		/* per origin: 1 / weight (source_hash) */
	bool equal_w[2];	/* source_hash: all weights of the tier equal */
};

/* Murmur3's 64-bit finalizer: a full-avalanche mix. */
static uint64_t mix64(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdull;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ull;
	x ^= x >> 33;
	return x;
}

static uint64_t hash_addr(const uint8_t a[16], uint64_t extra, uint64_t seed)
{
	uint64_t hi, lo;

	memcpy(&hi, a, 8);
	memcpy(&lo, a + 8, 8);
	return mix64(lo ^ mix64(hi ^ mix64(extra ^ seed)));
}

/* The origin's identity as 16 address bytes (v4-mapped), a port and an
 * IPv6 scope: stable across set rebuilds, unlike its index.
 */
static void origin_identity(const struct origin *o, uint8_t a[16], uint16_t *port, uint32_t *scope)
{
	memset(a, 0, 16);
	*port = 0;
	*scope = 0;
	if (o->addr.ss_family == AF_INET) {
		const struct sockaddr_in *s = (const struct sockaddr_in *)&o->addr;

		a[10] = a[11] = 0xff;
		memcpy(a + 12, &s->sin_addr, 4);
		*port = ntohs(s->sin_port);
	} else if (o->addr.ss_family == AF_INET6) {
		const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)&o->addr;

		memcpy(a, &s->sin6_addr, 16);
		*port = ntohs(s->sin6_port);
		*scope = s->sin6_scope_id;
	}
}

/* An origin with a fixed port hashes its address and port. One whose port
 * comes from the client (none, or a range mapped by offset) has port 0 in
 * its address, so its configured port and mode go in as well: two such
 * origins on one address (ranges 9000-9999 and 10000-10999) are two
 * identities, where they used to tie in every source_hash pick, and the
 * first took every client. A link-local address's scope goes in too.
 */
static uint64_t origin_hash(const struct origin *o, uint64_t seed)
{
	uint8_t a[16];
	uint16_t port;
	uint32_t scope;
	uint64_t extra;

	origin_identity(o, a, &port, &scope);
	extra = port;
	if (o->co && o->co->port_mode != CFG_PORT_FIXED)
		extra |= (uint64_t)o->co->port << 16 | (uint64_t)(o->co->port_mode + 1) << 32;
	if (scope)
		extra ^= mix64((uint64_t)scope << 1 | 1);
	return hash_addr(a, extra, seed);
}

static uint64_t client_hash(const struct in6_addr *client)
{
	return hash_addr(client->s6_addr, 0, SEED_CLIENT);
}

static bool eligible(const struct origin_set *set, size_t i, int tier)
{
	const struct origin *o = set->v[i];

	return o->weight > 0 && (int)o->backup == tier;
}

static bool is_prime(uint32_t x)
{
	if (x < 2)
		return false;
	for (uint32_t d = 2; (uint64_t)d * d <= x; d++)
		if (x % d == 0)
			return false;
	return true;
}

/* The Maglev table size for <n> origins: the first prime at or above
 * 65537 * 2^k that gives each origin MAGLEV_PER_ORIGIN entries, or 0 when
 * that is too large.
 */
static uint32_t maglev_size(size_t n)
{
	uint64_t need = (uint64_t)n * MAGLEV_PER_ORIGIN, m = MAGLEV_MIN_SIZE;

	while (m < need)
		m *= 2;
	if (m > UINT32_MAX / 2)
		return 0;
	while (!is_prime((uint32_t)m))
		m++;
	return (uint32_t)m;
}

/* The size for a table of <n> origins that replaces <prev>. Any change of
 * size moves nearly every client (each origin's permutation is taken
 * modulo the size), so <prev>'s size is kept while it gives each origin
 * its entries and is not more than 8 times what <n> needs: a name's
 * answer that grows or shrinks by an address moves only that address's
 * clients, and the sizes a set grows through double, so a set that grows
 * from 1 to 64,000 addresses changes size 7 times at most.
 */
static uint32_t maglev_size_after(size_t n, const struct lb_table *prev)
{
	uint32_t m = maglev_size(n);

	if (m && prev && prev->algo == CFG_LB_MAGLEV && prev->m >= n * MAGLEV_PER_ORIGIN &&
	    prev->m <= (uint64_t)m * 8)
		return prev->m;
	return m;
}

/* Fills <t>'s Maglev table (Eisenbud et al., NSDI 2016, "Maglev: A Fast
 * and Reliable Software Network Load Balancer", section 3.4), weighted as
 * Envoy does: in round k an origin takes a turn only once k * weight has
 * reached its target, and each turn raises the target by the largest
 * weight, so over the rounds each origin fills a share of entries
 * proportional to its weight; the heaviest takes a turn every round.
 */
static int maglev_fill(struct lb_table *t, const struct origin_set *set, struct lb_tier *tier)
{
	uint32_t m = t->m, filled = 0, max_w = 0;
	uint64_t *next = NULL, *skip = NULL, *target = NULL;
	int ret = -ENOMEM;

	tier->tab = malloc(sizeof(*tier->tab) * m);
	next = calloc(tier->n, sizeof(*next));
	skip = calloc(tier->n, sizeof(*skip));
	target = calloc(tier->n, sizeof(*target));
	if (!tier->tab || !next || !skip || !target)
		goto out;
	for (uint32_t e = 0; e < m; e++)
		tier->tab[e] = UINT32_MAX;
	for (size_t j = 0; j < tier->n; j++) {
		const struct origin *o = set->v[tier->idx[j]];

		/* next[j] holds the current position of j's permutation:
		 * starts at offset, advances by skip (coprime with prime m). */
		next[j] = origin_hash(o, SEED_OFFSET) % m;
		skip[j] = origin_hash(o, SEED_SKIP) % (m - 1) + 1;
		if (o->weight > max_w)
			max_w = o->weight;
	}
	for (size_t j = 0; j < tier->n; j++)
		target[j] = max_w;
	for (uint64_t round = 1; filled < m; round++) {
		for (size_t j = 0; j < tier->n && filled < m; j++) {
			uint32_t w = set->v[tier->idx[j]]->weight;

			if (round * w < target[j])
				continue;
			target[j] += max_w;
			while (tier->tab[next[j]] != UINT32_MAX)
				next[j] = (next[j] + skip[j]) % m;
			tier->tab[next[j]] = tier->idx[j];
			next[j] = (next[j] + skip[j]) % m;
			filled++;
		}
	}
	ret = 0;
out:
	free(next);
	free(skip);
	free(target);
	return ret;
}

struct lb_table *lb_table_new(enum cfg_balance algo, const struct origin_set *set,
			      const struct lb_table *prev)
{
	struct lb_table *t = calloc(1, sizeof(*t));

	if (!t)
		return NULL;
	t->algo = algo;
	t->n = set->n;
	t->id = calloc(set->n ? set->n : 1, sizeof(*t->id));
	if (!t->id)
		goto fail;
	t->inv_w = calloc(set->n ? set->n : 1, sizeof(*t->inv_w));
	if (!t->inv_w)
		goto fail;
	for (size_t i = 0; i < set->n; i++) {
		t->id[i] = origin_hash(set->v[i], SEED_HRW);
		t->inv_w[i] = set->v[i]->weight ? 1.0 / set->v[i]->weight : 0;
	}

	if (algo == CFG_LB_MAGLEV) {
		t->m = maglev_size_after(set->n, prev);
		if (!t->m)
			goto fail;
	}
	for (int k = 0; k < 2; k++) {
		struct lb_tier *tier = &t->tier[k];
		uint64_t sum = 0;
		uint32_t w0 = 0;

		tier->idx = calloc(set->n ? set->n : 1, sizeof(*tier->idx));
		tier->cum = calloc(set->n ? set->n : 1, sizeof(*tier->cum));
		if (!tier->idx || !tier->cum)
			goto fail;
		t->equal_w[k] = true;
		for (size_t i = 0; i < set->n; i++) {
			if (!eligible(set, i, k))
				continue;
			if (!w0)
				w0 = set->v[i]->weight;
			if (set->v[i]->weight != w0)
				t->equal_w[k] = false;
			sum += set->v[i]->weight;
			tier->cum[tier->n] = sum;
			tier->idx[tier->n++] = (uint32_t)i;
		}
		if (algo == CFG_LB_MAGLEV && tier->n && maglev_fill(t, set, tier) < 0)
			goto fail;
	}
	return t;
fail:
	lb_table_free(t);
	return NULL;
}

void lb_table_free(struct lb_table *t)
{
	if (!t)
		return;
	for (int k = 0; k < 2; k++) {
		free(t->tier[k].idx);
		free(t->tier[k].cum);
		free(t->tier[k].tab);
	}
	free(t->id);
	free(t->inv_w);
	free(t);
}

void lb_worker_init(struct lb_worker *w, uint64_t seed)
{
	memset(w, 0, sizeof(*w));
	/* splitmix the seed so workers seeded 1, 2, 3... get unrelated
	 * streams; xorshift must not start at 0. */
	w->rng = mix64(seed + SEED_CLIENT);
	if (!w->rng)
		w->rng = SEED_CLIENT;
	w->rr = (uint32_t)(w->rng >> 32);
}

void lb_worker_deinit(struct lb_worker *w)
{
	free(w->cur);
	w->cur = NULL;
	w->n = 0;
	w->set = NULL;
}

/* xorshift64* (Vigna). */
static uint64_t rng_next(struct lb_worker *w)
{
	uint64_t x = w->rng;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	w->rng = x;
	return x * 0x2545f4914f6cdd1dull;
}

static bool ok(const struct origin_set *set, size_t i, int tier,
	       bool (*usable)(size_t i, void *arg), void *arg)
{
	return eligible(set, i, tier) && usable(i, arg);
}

/* The table built for <set> and <algo>, or NULL (then the algorithms fall
 * back to what needs no table).
 */
static const struct lb_table *table_of(const struct origin_set *set, enum cfg_balance algo)
{
	const struct lb_table *t = set->lb;

	return t && t->algo == algo && t->n == set->n ? t : NULL;
}

/* The <k>th of <n> indices counting from <start> (< n), wrapping around. */
static inline size_t rotated(size_t start, size_t k, size_t n)
{
	return start + k < n ? start + k : start + k - n;
}

/* One pass of weighted random choice over the usable origins of a tier,
 * except <skip> (reservoir sampling: keep i with probability w_i / sum).
 */
static size_t weighted_scan(const struct origin_set *set, int tier, size_t skip,
			    struct lb_worker *w, bool (*usable)(size_t i, void *arg), void *arg)
{
	uint64_t sum = 0;
	size_t best = LB_NONE;

	for (size_t i = 0; i < set->n; i++) {
		if (i == skip || !ok(set, i, tier, usable, arg))
			continue;
		sum += set->v[i]->weight;
		if (rng_next(w) % sum < set->v[i]->weight)
			best = i;
	}
	return best;
}

/* Smooth weighted round robin, as nginx's ngx_http_upstream_get_peer():
 * every usable origin's current weight grows by its weight, the largest
 * wins and drops by the total. Over sum(w) picks each origin is chosen
 * exactly w times, spread out rather than in bursts. Ties go to the first
 * in the worker's own rotation (w->rr, the worker's number): the current
 * weights start at zero in every worker, so with equal weights the first
 * picks all tie, and breaking them by index would send each worker's first
 * connection to origin 0 (nginx's workers do that).
 */
static size_t pick_rr(const struct origin_set *set, struct lb_worker *w, int tier,
		      bool (*usable)(size_t i, void *arg), void *arg)
{
	int64_t total = 0;
	size_t best = LB_NONE, start;

	if (!set->n)
		return LB_NONE;
	start = w->rr % set->n;
	for (size_t k = 0; k < set->n; k++) {
		size_t i = rotated(start, k, set->n);

		if (!ok(set, i, tier, usable, arg))
			continue;
		w->cur[i] += set->v[i]->weight;
		total += set->v[i]->weight;
		if (best == LB_NONE || w->cur[i] > w->cur[best])
			best = i;
	}
	if (best != LB_NONE)
		w->cur[best] -= total;
	return best;
}

/* Makes w->cur belong to <set>. Returns false on ENOMEM. */
static bool rr_state(const struct origin_set *set, struct lb_worker *w)
{
	if (w->set == set && w->set_id == set->id && w->n == set->n && (w->cur || !set->n))
		return true;
	if (w->n != set->n || !w->cur) {
		int64_t *cur = realloc(w->cur, sizeof(*cur) * (set->n ? set->n : 1));

		if (!cur)
			return false;
		w->cur = cur;
	}
	memset(w->cur, 0, sizeof(*w->cur) * set->n);
	w->n = set->n;
	w->set = set;
	w->set_id = set->id;
	return true;
}

/* Least active/weight, compared without division: a/wa < b/wb iff
 * a*wb < b*wa (32x32 bits fit 64). Ties, frequent at low load, are broken
 * as nginx's least_conn does, by smooth weighted round robin among the
 * tied origins, so that idle origins still share by weight instead of the
 * first one winning; without that state (ENOMEM) the scan start rotates.
 */
static size_t pick_least(const struct origin_set *set, struct lb_worker *w, int tier,
			 bool (*usable)(size_t i, void *arg), void *arg)
{
	size_t best = LB_NONE, tied = LB_NONE, ties = 0, start;
	uint64_t ba = 0, bw = 1;
	int64_t total = 0;

	if (!set->n)
		return LB_NONE;
	start = w->rr++ % set->n;
	for (size_t k = 0; k < set->n; k++) {
		size_t i = rotated(start, k, set->n);
		uint64_t a, wi;

		if (!ok(set, i, tier, usable, arg))
			continue;
		a = __atomic_load_n(&set->v[i]->active, __ATOMIC_RELAXED);
		wi = set->v[i]->weight;
		if (best == LB_NONE || a * bw < ba * wi) {
			best = i;
			ba = a;
			bw = wi;
			ties = 1;
		} else if (a * bw == ba * wi) {
			ties++;
		}
	}
	if (ties < 2 || !rr_state(set, w))
		return best;
	/* The counts may change under us (other workers): if none of the
	 * tied is found again, the first pass's choice stands. Ties of the
	 * current weights go to the first in this pick's rotation, as in
	 * pick_rr. */
	for (size_t k = 0; k < set->n; k++) {
		size_t i = rotated(start, k, set->n);
		uint64_t wi = set->v[i]->weight;

		if (!eligible(set, i, tier) ||
		    __atomic_load_n(&set->v[i]->active, __ATOMIC_RELAXED) * bw != ba * wi ||
		    !usable(i, arg))
			continue;
		w->cur[i] += (int64_t)wi;
		total += (int64_t)wi;
		if (tied == LB_NONE || w->cur[i] > w->cur[tied])
			tied = i;
	}
	if (tied == LB_NONE)
		return best;
	w->cur[tied] -= total;
	return tied;
}

/* A random usable origin of the tier drawn by weight, other than <skip>:
 * a few binary-searched draws from the cumulative weights, then a scan.
 */
static size_t draw(const struct origin_set *set, const struct lb_table *t, int tier, size_t skip,
		   struct lb_worker *w, bool (*usable)(size_t i, void *arg), void *arg)
{
	const struct lb_tier *tr = t ? &t->tier[tier] : NULL;

	if (tr && tr->n) {
		uint64_t total = tr->cum[tr->n - 1];

		for (int k = 0; k < R2_TRIES; k++) {
			/* Lemire's multiply-shift: uniform in [0,total)
			 * without a division. */
			uint64_t r = (uint64_t)(((unsigned __int128)rng_next(w) * total) >> 64);
			size_t lo = 0, hi = tr->n - 1;

			while (lo < hi) {
				size_t mid = lo + (hi - lo) / 2;

				if (tr->cum[mid] > r)
					hi = mid;
				else
					lo = mid + 1;
			}
			if (tr->idx[lo] != skip && usable(tr->idx[lo], arg))
				return tr->idx[lo];
		}
	}
	return weighted_scan(set, tier, skip, w, usable, arg);
}

/* Power of two choices (Mitzenmacher): two distinct origins drawn by
 * weight, the less loaded (active/weight) wins; ties go to the first draw.
 */
static size_t pick_r2(const struct origin_set *set, const struct lb_table *t, struct lb_worker *w,
		      int tier, bool (*usable)(size_t i, void *arg), void *arg)
{
	size_t a = draw(set, t, tier, LB_NONE, w, usable, arg), b;
	uint64_t la, lb;

	if (a == LB_NONE)
		return LB_NONE;
	b = draw(set, t, tier, a, w, usable, arg);
	if (b == LB_NONE)
		return a;
	la = __atomic_load_n(&set->v[a]->active, __ATOMIC_RELAXED);
	lb = __atomic_load_n(&set->v[b]->active, __ATOMIC_RELAXED);
	return lb * set->v[a]->weight < la * set->v[b]->weight ? b : a;
}

/* ln(u) for u in (0,1), to ~1e-14: u = m * 2^e with m in [1/sqrt2, sqrt2],
 * ln(m) = 2 atanh((m-1)/(m+1)) by its series. Here rather than libm's log()
 * so that prism does not link libm for one function.
 */
static double ln_unit(double u)
{
	const double ln2 = 0.693147180559945309417;
	uint64_t bits;
	int e;
	/* 1/15, 1/13, ..., 1/1: the series' coefficients, Horner order. */
	static const double c[] = {1.0 / 15, 1.0 / 13, 1.0 / 11, 1.0 / 9,
				   1.0 / 7,  1.0 / 5,  1.0 / 3,	 1.0};
	double m, s, s2, sum = 0;

	memcpy(&bits, &u, 8);
	e = (int)((bits >> 52) & 0x7ff) - 1023;
	bits = (bits & 0x000fffffffffffffull) | 0x3ff0000000000000ull;
	memcpy(&m, &bits, 8);
	if (m > 1.41421356237309504880) {
		m /= 2;
		e++;
	}
	s = (m - 1) / (m + 1);
	s2 = s * s;
	for (size_t k = 0; k < sizeof(c) / sizeof(c[0]); k++)
		sum = sum * s2 + c[k];
	return e * ln2 + 2 * s * sum;
}

/* Weighted rendezvous (highest random weight) hashing: each origin scores
 * w / -ln(u) with u uniform in (0,1) from hash(client, origin identity);
 * the highest wins. P(i wins) = w_i / sum(w) exactly, and an origin that
 * becomes unusable or leaves the set only hands its own clients on.
 */
static size_t pick_hrw(const struct origin_set *set, const struct lb_table *t, uint64_t ch,
		       int tier, bool (*usable)(size_t i, void *arg), void *arg)
{
	size_t best = LB_NONE;
	double bs = 0;
	uint64_t bh = 0;
	bool equal = t && t->equal_w[tier];

	for (size_t i = 0; i < set->n; i++) {
		uint64_t h;
		double s;

		if (!ok(set, i, tier, usable, arg))
			continue;
		h = mix64(ch ^ (t ? t->id[i] : origin_hash(set->v[i], SEED_HRW)));
		if (equal) {
			/* Equal weights: the largest hash wins; no log. */
			if (best == LB_NONE || h > bh) {
				best = i;
				bh = h;
			}
			continue;
		}
		/* u in (0,1) from the top 53 bits, never 0 or 1. */
		/* Lowest -ln(u) / w, i.e. highest w / -ln(u). */
		s = -ln_unit(((double)(h >> 11) + 0.5) * 0x1p-53) *
		    (t ? t->inv_w[i] : 1.0 / set->v[i]->weight);
		if (best == LB_NONE || s < bs) {
			best = i;
			bs = s;
		}
	}
	return best;
}

/* Maglev lookup: the client's entry, or walking on to the next entry whose
 * origin is usable. Bounded by the table size; the caller has checked that
 * some origin of the tier is usable.
 */
static size_t pick_maglev(const struct lb_table *t, uint64_t ch, int tier,
			  bool (*usable)(size_t i, void *arg), void *arg)
{
	const struct lb_tier *tr = &t->tier[tier];
	uint32_t e = (uint32_t)(ch % t->m);

	for (uint32_t k = 0; k < t->m; k++) {
		if (usable(tr->tab[e], arg))
			return tr->tab[e];
		if (++e == t->m)
			e = 0;
	}
	return LB_NONE;
}

static bool any_usable(const struct lb_table *t, int tier, bool (*usable)(size_t i, void *arg),
		       void *arg)
{
	const struct lb_tier *tr = &t->tier[tier];

	for (size_t j = 0; j < tr->n; j++)
		if (usable(tr->idx[j], arg))
			return true;
	return false;
}

static size_t pick_tier(enum cfg_balance algo, const struct origin_set *set,
			const struct lb_table *t, struct lb_worker *w, uint64_t ch, int tier,
			bool (*usable)(size_t i, void *arg), void *arg)
{
	switch (algo) {
	case CFG_LB_LEAST_CONN:
		return pick_least(set, w, tier, usable, arg);
	case CFG_LB_RANDOM_TWO:
		return pick_r2(set, t, w, tier, usable, arg);
	case CFG_LB_MAGLEV:
		if (!t)
			return pick_hrw(set, t, ch, tier, usable, arg);
		if (!t->tier[tier].n)
			return LB_NONE;
		/* The common case, the client's own entry usable, costs one
		 * call; otherwise make sure the walk will end early. */
		if (usable(t->tier[tier].tab[ch % t->m], arg))
			return t->tier[tier].tab[ch % t->m];
		if (!any_usable(t, tier, usable, arg))
			return LB_NONE;
		return pick_maglev(t, ch, tier, usable, arg);
	case CFG_LB_SOURCE_HASH:
		return pick_hrw(set, t, ch, tier, usable, arg);
	case CFG_LB_ROUND_ROBIN:
	default:
		if (!rr_state(set, w))
			return weighted_scan(set, tier, LB_NONE, w, usable, arg);
		return pick_rr(set, w, tier, usable, arg);
	}
}

size_t lb_pick(enum cfg_balance algo, const struct origin_set *set, struct lb_worker *w,
	       const struct in6_addr *client, bool (*usable)(size_t i, void *arg), void *arg)
{
	const struct lb_table *t = table_of(set, algo);
	uint64_t ch = 0;
	size_t i;

	if (algo == CFG_LB_MAGLEV || algo == CFG_LB_SOURCE_HASH)
		ch = client_hash(client);
	i = pick_tier(algo, set, t, w, ch, 0, usable, arg);
	if (i == LB_NONE)
		i = pick_tier(algo, set, t, w, ch, 1, usable, arg);
	return i;
}
