/* rt.c - the routing table: (address, port) -> app, built once per config.
 *
 * Model: a path-compressed binary (Patricia) trie over the distinct claimed
 * prefixes. A node that carries claims owns a sorted, disjoint port-interval
 * map (lo, hi, app) that is the flattening of its own claims AND of every
 * ancestor's claims by priority (longer prefix, then narrower range). So a
 * lookup descends the trie remembering the deepest matching node with a map,
 * then searches that one map; an unclaimed port of a /32 falls back to the
 * /24 above it because the /24's claims were already copied into the /32's
 * map.
 *
 * Layout for lookups (what rt_build leaves behind; the binary trie it builds
 * first is scratch): one array of 32-byte nodes, two per cache line:
 * - a leaf whose map has one interval keeps it inline, so a lookup that
 *   ends there touches no other line (most apps claim one port range);
 * - other nodes have two children and a slice of the shared entry array
 *   (glue nodes, without claims, have no slice);
 * - a jump node has, instead of children, a table of 2^stride slots indexed
 *   by the <stride> key bits below its prefix. The slots are nodes of the
 *   same array: slot c IS the first node of block c (the first node as
 *   long as the block) when that node has a spare word (one-interval leaf,
 *   glue, jump), else a reference to it, or nothing. The spare word holds
 *   the block's fallback, the deepest claimed node that contains the whole
 *   block, which the lookup skipped by jumping. Any node whose subtree is
 *   big enough gets a table, recursively, so a dense cluster deep in the
 *   key space (all of IPv4, or thousands of apps under one IPv6 /24) is
 *   crossed in one step, not only the top bits of the key.
 * Lookups start at the root, or for IPv4 keys at the node below
 * ::ffff:0:0/96 (which gets a table of its own when it is big); when that
 * node is a jump node every key of its family matches, the first jump is
 * taken straight from struct rt. Most lookups end at a one-interval leaf
 * that matches the key, and then no node on the way needs checking (see
 * rt_lookup): a lean loop takes that case, the full one the rest.
 *
 * So a random lookup in a 100,000-app table reads a hot node or two at the
 * top and then, most of the time, one line: the slot that is its leaf. The
 * cost is memory: slots are 32 bytes (see JUMP_MIN for how many), where an
 * index into the node array would be 4 bytes but a second miss.
 * With bench/rt_bench.c's workload (2 vCPU EPYC VM shared with other
 * jobs, gcc -O2, best of rounds; the spread at 100,000 apps is what
 * neighbours leave of the shared L3):
 *   apps     ns/lookup  bytes      before: ns/lookup  bytes
 *   10       12         5 KB               15         5 KB
 *   1,000    17         193 KB             21         201 KB
 *   100,000  33-37      8.6 MB             40-68      13 MB
 * (and 17 / 34 / 195 ns with the layout before that: a binary trie under
 * one top-bits jump table per family, maps out of line.)
 * At 100,000 apps a lookup still takes about one miss past L2 (1 MB): that
 * is the floor of any layout of a 100,000-prefix table, and what is left of
 * the growth. What that miss costs depends on whether the table stays in
 * the L3 (see JUMP_MIN), and on how many lookups' misses the CPU overlaps,
 * which is why rt_lookup's common case is kept to few instructions. A
 * leaf-pushed multibit trie would also end in one line but copies each
 * prefix into up to 2^stride slots; here the trie node itself becomes the
 * slot, one copy of each, so memory stays proportional to the number of
 * prefixes.
 *
 * Design notes:
 * - Build cost is O(n log n) per node for its own claims plus linear in the
 *   parent's map. Maps repeat their ancestors' intervals, so memory is
 *   O(sum over nodes of the ancestors' map sizes): fine for real configs
 *   (few wide claims, many narrow ones); a pathological config with a huge
 *   /0 map and many nested prefixes pays for it at build time, never in
 *   lookup.
 * - A disjoint map over ports 1..65535 has at most 65535 intervals, so the
 *   map length fits in 16 bits and stays inside the node.
 * - Keys are used literally in the 128-bit space: an IPv6 claim shorter than
 *   /96 that covers ::ffff:0:0/96 also covers IPv4. rt_cover splits by
 *   family so both nft sets agree with rt_lookup.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "rt.h"

typedef addr_u128 rt_u128;

#define NIL	  UINT32_MAX
#define U128_MAX  (~(rt_u128)0)
#define V4MAP_LO  ((rt_u128)0xffff << 32)
#define V4MAP_HI  (V4MAP_LO | 0xffffffffu)
#define PORT_LAST 65535u

/* A node of the binary trie rt_build makes first (scratch). */
struct rt_node {
	rt_u128 key;	   /* prefix, host bits zero */
	uint32_t child[2]; /* by the bit at position <len>, or NIL */
	uint32_t off;	   /* first entry of this node's map */
	uint16_t n;	   /* entries in the map; 0: no claims here */
	uint8_t len;
};

/* A port map's intervals are struct rt_span (rt.h), kept whole (not as
 * parallel lo/hi/app arrays) so the final check of a lookup touches one
 * cache line.
 */

/* Kinds of lookup nodes, and what their three words <w> hold. <fb> is a
 * fallback: when a lookup reaches the node, the deepest claimed node above
 * it that it has not seen (it came through a jump slot), or NIL.
 */
enum {
	LN_NODE,  /* w: child[0], child[1] (maybe NIL), map offset */
	LN_LEAF1, /* no children, one interval: <one>, then w[2]: fb */
	LN_GLUE,  /* no claims: child[0], child[1], fb */
	LN_JUMP,  /* w: slot base (see JUMP_TAG), map offset, fb */
	LN_REF,	  /* a jump slot whose first node is elsewhere: node, -, fb */
};

/* The <kind> byte of a jump node is JUMP_TAG | sh, sh = 128 - len - stride,
 * and its slot base is the first slot less (key >> sh): a key that matches
 * the node has the same bits above the stride, so its slot is
 * base + (k >> sh), one shift with no mask (wrapping in 32 bits).
 */
#define JUMP_TAG 0x80u

/* A node as lookups see it: 32 bytes, aligned, so one line read. The
 * slots of a jump table are nodes too, in one run of the same array: a
 * slot holds its block's first node itself when that node has room for a
 * fallback (a leaf with one interval, glue, a jump), else an LN_REF.
 */
struct rt_lnode {
	rt_u128 key;
	uint8_t len;
	uint8_t kind; /* LN_*, but JUMP_TAG | shift for LN_JUMP */
	uint16_t n;   /* map entries; 0: no claims here */
	union {
		struct rt_span one;
		uint32_t w[3];
	};
};

static inline unsigned kind_of(const struct rt_lnode *nd)
{
	return nd->kind & JUMP_TAG ? LN_JUMP : nd->kind;
}

struct rt {
	struct rt_lnode *ln;
	uint32_t nln;
	uint32_t root;
	struct rt_span *ent; /* map entries of all nodes but LN_LEAF1 ones */
	size_t nent, cap;
	/* Where lookups start, [1] for IPv4 keys, [0] for the rest: a node
	 * and a fallback, like a slot. IPv4 starts below ::ffff:0:0/96.
	 */
	uint32_t start[2], start_best[2];
	/* rt_lookup's first step, by family: when the start node is a jump
	 * node that every key of the family matches, its slot is base + (k >>
	 * sh); otherwise mask is 0 and base the start node.
	 */
	struct {
		uint32_t base, mask;
		unsigned sh;
	} first[2];
	struct rt_node *nodes; /* the binary trie, during rt_build only */
	uint32_t nnodes;
};

/* One claim as sorted for building: by prefix, then width, then lo. */
struct rt_rec {
	rt_u128 key;
	uint32_t idx, app;
	uint16_t lo, hi;
	uint8_t len;
};

/* Scratch space of one rt_build, sized for the largest group of claims. */
struct rt_builder {
	struct rt *rt;
	struct rt_rec *recs;   /* all claims, sorted */
	uint32_t *grp_start;   /* per node: first rec of its own claims */
	uint32_t *grp_n;       /* per node: number of own claims (0: none) */
	struct rt_rec *by_lo;  /* one group re-sorted by lo */
	uint32_t *pts;	       /* sweep points */
	uint32_t *heap;	       /* active claims, narrowest on top */
	uint32_t *f_lo, *f_hi; /* a group's own claims, flattened */
	uint32_t *f_app;
	uint32_t nf;
	uint32_t *size;	  /* per node: nodes in its subtree, itself included */
	uint8_t *stride;  /* per node: its jump table's stride, 0: none */
	uint32_t *jbase;  /* per node with a jump table: its first slot */
	uint32_t *newidx; /* per node: its index among the lookup nodes */
	size_t nl;	  /* lookup nodes placed so far */
};

/* A shift by 128 is undefined, hence the case for /0 (and the & 127, for
 * compilers that warn about the arm not taken).
 */
#define MASK(len) ((len) == 0 ? 0 : U128_MAX << ((128 - (len)) & 127))
#define MASK4(l)  MASK(l), MASK(l + 1), MASK(l + 2), MASK(l + 3)
#define MASK16(l) MASK4(l), MASK4(l + 4), MASK4(l + 8), MASK4(l + 12)
#define MASK64(l) MASK16(l), MASK16(l + 16), MASK16(l + 32), MASK16(l + 48)

/* The mask of each prefix length, so that matching a node in rt_lookup
 * is a load, not branches on the length (v4 and v6 lengths interleave
 * along any descent, so those branches mispredict).
 */
static const rt_u128 masks[129] = {MASK64(0), MASK64(64), MASK(128)};

static inline rt_u128 mask_of(unsigned len)
{
	return masks[len];
}

/* The bit at position <pos> (0 is the most significant), pos < 128. */
static inline unsigned bit_at(rt_u128 k, unsigned pos)
{
	return (unsigned)(k >> (127 - pos)) & 1;
}

static unsigned common_len(rt_u128 a, rt_u128 b)
{
	rt_u128 x = a ^ b;
	uint64_t h = (uint64_t)(x >> 64), l = (uint64_t)x;

	if (h)
		return (unsigned)__builtin_clzll(h);
	if (l)
		return 64 + (unsigned)__builtin_clzll(l);
	return 128;
}

static int rec_cmp(const void *pa, const void *pb)
{
	const struct rt_rec *a = pa, *b = pb;
	unsigned wa = (unsigned)a->hi - a->lo, wb = (unsigned)b->hi - b->lo;

	if (a->key != b->key)
		return a->key < b->key ? -1 : 1;
	if (a->len != b->len)
		return a->len < b->len ? -1 : 1;
	if (wa != wb)
		return wa < wb ? -1 : 1;
	if (a->lo != b->lo)
		return a->lo < b->lo ? -1 : 1;
	return a->idx < b->idx ? -1 : a->idx > b->idx;
}

static int rec_lo_cmp(const void *pa, const void *pb)
{
	const struct rt_rec *a = pa, *b = pb;

	return a->lo < b->lo ? -1 : a->lo > b->lo;
}

static int u32_cmp(const void *pa, const void *pb)
{
	uint32_t a = *(const uint32_t *)pa, b = *(const uint32_t *)pb;

	return a < b ? -1 : a > b;
}

static int validate(const struct rt_claim *c)
{
	rt_u128 k = addr_key(&c->prefix.addr);

	if (c->lo < 1 || c->lo > c->hi || c->prefix.len > 128 || c->app == RT_NONE)
		return -EINVAL;
	if (k & ~mask_of(c->prefix.len))
		return -EINVAL;
	return 0;
}

/* Claims of one prefix with the same width: overlapping ones of different
 * apps are adjacent when sorted by lo. If i < j overlap, every k between them
 * starts in [lo_i, lo_j] and, having the same width, ends at or after hi_i, so
 * the chain i..j overlaps pairwise at each step and, its ends differing in
 * app, some adjacent step does too. O(n) after the O(n log n) sort.
 */
static bool find_conflict(const struct rt_rec *r, size_t n, struct rt_conflict *conflict)
{
	for (size_t i = 0; i + 1 < n; i++) {
		const struct rt_rec *a = &r[i], *b = &r[i + 1];

		if (a->key != b->key || a->len != b->len || a->hi - a->lo != b->hi - b->lo)
			continue;
		if (b->lo > a->hi || a->app == b->app)
			continue;
		if (conflict) {
			conflict->a = a->idx < b->idx ? a->idx : b->idx;
			conflict->b = a->idx < b->idx ? b->idx : a->idx;
		}
		return true;
	}
	return false;
}

static uint32_t node_new(struct rt *rt, rt_u128 key, unsigned len)
{
	struct rt_node *n = &rt->nodes[rt->nnodes];

	n->key = key;
	n->len = (uint8_t)len;
	n->child[0] = n->child[1] = NIL;
	n->off = 0;
	n->n = 0;
	return rt->nnodes++;
}

/* Inserts a prefix, returning its node. Never reallocates: the node array
 * is sized for 2 nodes per distinct prefix (one glue node at most each), so
 * <link> stays valid across node_new.
 */
static uint32_t trie_insert(struct rt *rt, rt_u128 key, unsigned len)
{
	uint32_t *link = &rt->root;

	for (;;) {
		uint32_t i = *link, j, g;
		struct rt_node *n;
		unsigned common;

		if (i == NIL) {
			j = node_new(rt, key, len);
			*link = j;
			return j;
		}
		n = &rt->nodes[i];
		common = common_len(key, n->key);
		if (common > len)
			common = len;
		if (common > n->len)
			common = n->len;
		if (common == n->len) {
			if (n->len == len)
				return i;
			link = &n->child[bit_at(key, n->len)];
			continue;
		}
		if (common == len) {
			/* The new prefix sits above <n>. */
			j = node_new(rt, key, len);
			rt->nodes[j].child[bit_at(n->key, len)] = i;
			*link = j;
			return j;
		}
		/* They part at <common>: a glue node without claims. */
		g = node_new(rt, key & mask_of(common), common);
		j = node_new(rt, key, len);
		rt->nodes[g].child[bit_at(key, common)] = j;
		rt->nodes[g].child[bit_at(n->key, common)] = i;
		*link = g;
		return j;
	}
}

static int reserve(struct rt *rt, size_t more)
{
	size_t cap = rt->cap ? rt->cap : 64;
	void *p;

	if (rt->nent + more <= rt->cap)
		return 0;
	/* Only a pathological nesting gets here (and map offsets are 32 bits). */
	if (rt->nent + more > RT_MAX_ENTRIES)
		return -E2BIG;
	while (cap < rt->nent + more)
		cap *= 2;
	if (!(p = realloc(rt->ent, cap * sizeof(*rt->ent))))
		return -ENOMEM;
	rt->ent = p;
	rt->cap = cap;
	return 0;
}

static void heap_push(struct rt_builder *b, uint32_t *hn, uint32_t v)
{
	const struct rt_rec *s = b->by_lo;
	uint32_t i = (*hn)++;

	while (i > 0) {
		uint32_t p = (i - 1) / 2;

		if (s[b->heap[p]].hi - s[b->heap[p]].lo <= s[v].hi - s[v].lo)
			break;
		b->heap[i] = b->heap[p];
		i = p;
	}
	b->heap[i] = v;
}

static void heap_pop(struct rt_builder *b, uint32_t *hn)
{
	const struct rt_rec *s = b->by_lo;
	uint32_t v = b->heap[--(*hn)], i = 0;

	for (;;) {
		uint32_t c = 2 * i + 1;

		if (c >= *hn)
			break;
		if (c + 1 < *hn && s[b->heap[c + 1]].hi - s[b->heap[c + 1]].lo <
				       s[b->heap[c]].hi - s[b->heap[c]].lo)
			c++;
		if (s[v].hi - s[v].lo <= s[b->heap[c]].hi - s[b->heap[c]].lo)
			break;
		b->heap[i] = b->heap[c];
		i = c;
	}
	b->heap[i] = v;
}

static void flat_emit(struct rt_builder *b, uint32_t lo, uint32_t hi, uint32_t app)
{
	if (b->nf && b->f_hi[b->nf - 1] + 1 == lo && b->f_app[b->nf - 1] == app) {
		b->f_hi[b->nf - 1] = hi;
		return;
	}
	b->f_lo[b->nf] = lo;
	b->f_hi[b->nf] = hi;
	b->f_app[b->nf] = app;
	b->nf++;
}

/* Flattens the <k> claims of one prefix into b->f_*: a sweep over the sorted
 * end points with a heap of active claims keyed by width. Expired claims are
 * dropped lazily when they reach the top, which is all the top needs.
 */
static void flatten_own(struct rt_builder *b, const struct rt_rec *r, uint32_t k)
{
	uint32_t np = 0, hn = 0, j = 0;

	memcpy(b->by_lo, r, k * sizeof(*r));
	qsort(b->by_lo, k, sizeof(*r), rec_lo_cmp);
	for (uint32_t i = 0; i < k; i++) {
		b->pts[np++] = b->by_lo[i].lo;
		b->pts[np++] = (uint32_t)b->by_lo[i].hi + 1;
	}
	qsort(b->pts, np, sizeof(*b->pts), u32_cmp);
	b->nf = 0;
	for (uint32_t i = 0; i < np; i++) {
		uint32_t p = b->pts[i];
		const struct rt_rec *top;

		if (i && p == b->pts[i - 1])
			continue;
		while (j < k && b->by_lo[j].lo <= p)
			heap_push(b, &hn, j++);
		while (hn && b->by_lo[b->heap[0]].hi < p)
			heap_pop(b, &hn);
		if (!hn)
			continue;
		top = &b->by_lo[b->heap[0]];
		/* top->hi + 1 is a point above p, so a next point exists. */
		while (b->pts[i + 1] == p)
			i++;
		flat_emit(b, p, b->pts[i + 1] - 1, top->app);
	}
}

static void map_emit(struct rt *rt, struct rt_node *n, uint32_t lo, uint32_t hi, uint32_t app)
{
	size_t last = rt->nent - 1;

	if (n->n && rt->ent[last].hi + 1u == lo && rt->ent[last].app == app) {
		rt->ent[last].hi = (uint16_t)hi;
		return;
	}
	rt->ent[rt->nent++] = (struct rt_span){(uint16_t)lo, (uint16_t)hi, app};
	n->n++;
}

/* Emits the parent's map clipped to [from, to]. <*pi> only moves past
 * intervals that end before <from>, so one straddling <to> is seen again.
 */
static void fill_parent(struct rt *rt, struct rt_node *n, uint32_t poff, uint32_t pn, uint32_t *pi,
			uint32_t from, uint32_t to)
{
	if (from > to)
		return;
	while (*pi < pn && rt->ent[poff + *pi].hi < from)
		(*pi)++;
	for (uint32_t k = *pi; k < pn && rt->ent[poff + k].lo <= to; k++) {
		struct rt_span e = rt->ent[poff + k];

		map_emit(rt, n, e.lo > from ? e.lo : from, e.hi < to ? e.hi : to, e.app);
	}
}

/* Builds the map of node <i>: its own claims flattened, laid over the map of
 * its nearest claimed ancestor (<poff>, <pn>), whose claims all lose to its
 * own by the longer-prefix rule.
 */
static int node_map(struct rt_builder *b, uint32_t i, uint32_t poff, uint32_t pn)
{
	struct rt *rt = b->rt;
	struct rt_node *n;
	uint32_t cur = 1, pi = 0;
	int err;

	flatten_own(b, &b->recs[b->grp_start[i]], b->grp_n[i]);
	/* Each own interval adds itself and splits at most one parent one. */
	if ((err = reserve(rt, (size_t)pn + 2 * (size_t)b->nf + 1)))
		return err;
	n = &rt->nodes[i];
	n->off = (uint32_t)rt->nent;
	n->n = 0;
	for (uint32_t k = 0; k < b->nf; k++) {
		fill_parent(rt, n, poff, pn, &pi, cur, b->f_lo[k] - 1);
		map_emit(rt, n, b->f_lo[k], b->f_hi[k], b->f_app[k]);
		cur = b->f_hi[k] + 1;
	}
	fill_parent(rt, n, poff, pn, &pi, cur, PORT_LAST);
	return 0;
}

/* Depth is bounded by 129 (lengths strictly grow), so recursion is fine. */
static int build_maps(struct rt_builder *b, uint32_t i, uint32_t poff, uint32_t pn)
{
	int err;

	if (i == NIL)
		return 0;
	if (b->grp_n[i]) {
		if ((err = node_map(b, i, poff, pn)))
			return err;
		poff = b->rt->nodes[i].off;
		pn = b->rt->nodes[i].n;
	}
	if ((err = build_maps(b, b->rt->nodes[i].child[0], poff, pn)))
		return err;
	return build_maps(b, b->rt->nodes[i].child[1], poff, pn);
}

/* Jump tables. A node gets one when its subtree has JUMP_MIN nodes or more.
 * Its stride starts at about log2 of the subtree's nodes, at most
 * MAX_STRIDE bits (8 MB of slots), and narrows while fewer than one slot in
 * NARROW would lead to a node. Small tables get two slots per node (about
 * four per prefix, as a binary trie has a glue node per prefix), up to
 * SMALL_SLOTS slots: blocks then rarely hold more than one node, and small
 * tables took a third fewer mispredicted branches. Big tables get about
 * one slot per two nodes (one per prefix): at 100,000 apps that is 8.6 MB
 * of table against 12.3 MB with one slot per node and 21 MB with two, and
 * a smaller table is the faster one though more blocks then start with a
 * glue node (a second line): this VM's L3 share holds about 8 MB (random
 * dependent loads: 17 ns up to 8 MB, 50-100 ns at 12-16 MB), so the size
 * decides whether the one line a lookup reads comes from L3 or DRAM. One
 * slot per four nodes (8.0 MB) was slower again.
 */
#define JUMP_MIN    8
#define NARROW	    8
#define SMALL_SLOTS 4096
#define MAX_STRIDE  18

static uint32_t subtree_size(struct rt_builder *b, uint32_t i)
{
	const struct rt_node *nd;

	if (i == NIL)
		return 0;
	nd = &b->rt->nodes[i];
	b->size[i] = 1 + subtree_size(b, nd->child[0]) + subtree_size(b, nd->child[1]);
	return b->size[i];
}

/* Blocks of length <plen> below <i> that hold a node: the slots of a jump
 * table that would not be empty.
 */
static uint32_t count_blocks(const struct rt *rt, uint32_t i, unsigned plen)
{
	const struct rt_node *nd;

	if (i == NIL)
		return 0;
	nd = &rt->nodes[i];
	if (nd->len >= plen)
		return 1;
	return count_blocks(rt, nd->child[0], plen) + count_blocks(rt, nd->child[1], plen);
}

/* Where a lookup of any key in the block <x>/<plen> resumes when it is at
 * node <i>: the first node at least as long as the block (or NIL), with the
 * deepest claimed node on the way in <*best> (or NIL).
 */
static uint32_t block_walk(const struct rt *rt, uint32_t i, rt_u128 x, unsigned plen,
			   uint32_t *best)
{
	*best = NIL;
	while (i != NIL) {
		const struct rt_node *nd = &rt->nodes[i];

		/* A node past a compressed path may lie outside the block:
		 * then nothing in the block is below it.
		 */
		if ((x ^ nd->key) & mask_of(nd->len < plen ? nd->len : plen))
			return NIL;
		if (nd->len >= plen)
			return i;
		if (nd->n)
			*best = i;
		i = nd->child[bit_at(x, nd->len)];
	}
	return NIL;
}

static bool is_leaf(const struct rt_node *nd)
{
	return nd->child[0] == NIL && nd->child[1] == NIL;
}

/* Whether the lookup node of <i> has a word for a fallback, so that a jump
 * slot can be that node itself rather than an LN_REF to it.
 */
static bool has_fb(const struct rt_builder *b, uint32_t i)
{
	const struct rt_node *nd = &b->rt->nodes[i];

	return b->stride[i] || nd->n == 0 || (nd->n == 1 && is_leaf(nd));
}

/* The block of slot <c> of node <j>'s jump table. */
static rt_u128 slot_key(const struct rt_builder *b, uint32_t j, uint32_t c)
{
	const struct rt_node *jn = &b->rt->nodes[j];

	return jn->key | ((rt_u128)c << (128 - jn->len - b->stride[j]));
}

/* Plans node <j>'s jump table and, first, those of the slots' subtrees big
 * enough for one of their own: picks the stride, reserves the slots (after
 * one spare node that keeps <j>'s children for walks) and places each
 * block's first node in its slot when it can be. A node is the first node
 * of at most one slot, and the IPv4 start (see make_layout) is checked for
 * a table, so each node gets at most one. O(2^stride * depth) per table.
 */
static int plan_jump(struct rt_builder *b, uint32_t j)
{
	const struct rt *rt = b->rt;
	const struct rt_node *jn = &rt->nodes[j];
	unsigned len = jn->len, stride = 1;
	uint64_t want = b->size[j];
	uint32_t nblk, base;
	int err;

	if (2 * want <= SMALL_SLOTS)
		want *= 2;
	else
		want /= 2;
	while (stride < MAX_STRIDE && len + stride < 128 && (1u << stride) < want)
		stride++;
	/* A few clusters far apart (IPv4 and some IPv6 /32s under the root)
	 * need a small table, then one per cluster.
	 */
	while (stride > 1 && NARROW * count_blocks(rt, j, len + stride) < (1u << stride))
		stride--;
	nblk = 1u << stride;
	/* Node indices are 32 bits and NIL is taken. */
	if (b->nl + nblk + 1 >= UINT32_MAX)
		return -ENOMEM;
	b->stride[j] = (uint8_t)stride;
	base = (uint32_t)b->nl + 1;
	b->jbase[j] = base;
	b->nl += (size_t)nblk + 1;
	for (uint32_t c = 0; c < nblk; c++) {
		uint32_t best, i = block_walk(rt, j, slot_key(b, j, c), len + stride, &best);

		if (i == NIL)
			continue;
		if (b->size[i] >= JUMP_MIN && !b->stride[i] && (err = plan_jump(b, i)))
			return err;
		if (has_fb(b, i))
			b->newidx[i] = base + c;
	}
	return 0;
}

/* Writes the lookup node of trie node <i> at its place, fallback NIL. */
static void put_node(struct rt_builder *b, uint32_t i, struct rt_span *ent, size_t *nent)
{
	struct rt *rt = b->rt;
	const struct rt_node *nd = &rt->nodes[i];
	struct rt_lnode *l = &rt->ln[b->newidx[i]];
	uint32_t c0 = nd->child[0] == NIL ? NIL : b->newidx[nd->child[0]];
	uint32_t c1 = nd->child[1] == NIL ? NIL : b->newidx[nd->child[1]];

	memset(l, 0, sizeof(*l));
	l->key = nd->key;
	l->len = nd->len;
	l->n = nd->n;
	if (nd->n == 1 && is_leaf(nd) && !b->stride[i]) {
		l->kind = LN_LEAF1;
		l->one = rt->ent[nd->off];
		l->w[2] = NIL;
		return;
	}
	if (b->stride[i]) {
		struct rt_lnode *kids = &rt->ln[b->jbase[i] - 1];

		/* Lookups never reach the spare node: no kind needed. */
		memset(kids, 0, sizeof(*kids));
		kids->w[0] = c0;
		kids->w[1] = c1;
		unsigned sh = 128 - nd->len - b->stride[i];

		l->kind = (uint8_t)(JUMP_TAG | sh);
		l->w[0] = b->jbase[i] - (uint32_t)(nd->key >> sh);
		l->w[1] = (uint32_t)*nent;
		l->w[2] = NIL;
	} else {
		l->kind = nd->n ? LN_NODE : LN_GLUE;
		l->w[0] = c0;
		l->w[1] = c1;
		l->w[2] = nd->n ? (uint32_t)*nent : NIL;
	}
	/* Glue has no entries, and <ent> is NULL when no node has any. */
	if (nd->n)
		memcpy(ent + *nent, rt->ent + nd->off, nd->n * sizeof(*ent));
	*nent += nd->n;
}

/* Fills node <j>'s slots: the fallback of a first node placed in its slot,
 * or an LN_REF to where it is (NIL: nothing in the block).
 */
static void put_slots(struct rt_builder *b, uint32_t j)
{
	struct rt *rt = b->rt;
	uint32_t base = b->jbase[j], nblk = 1u << b->stride[j];

	for (uint32_t c = 0; c < nblk; c++) {
		uint32_t best, i = block_walk(rt, j, slot_key(b, j, c),
					      rt->nodes[j].len + b->stride[j], &best);
		struct rt_lnode *l = &rt->ln[base + c];

		/* The owner itself is the lookup's fallback already. */
		best = best == NIL || best == j ? NIL : b->newidx[best];
		if (i != NIL && b->newidx[i] == base + c) {
			l->w[2] = best;
			continue;
		}
		memset(l, 0, sizeof(*l));
		l->kind = LN_REF;
		l->w[0] = i == NIL ? NIL : b->newidx[i];
		l->w[1] = NIL;
		l->w[2] = best;
	}
}

/* Turns the binary trie into the lookup layout: plans the jump tables from
 * the root and the IPv4 start down, places every node (in its slot, or
 * after all tables), writes them with LN_LEAF1 maps inline and the entry
 * array compacted to the rest, then the slots. Frees the binary trie.
 */
static int make_layout(struct rt_builder *b)
{
	struct rt *rt = b->rt;
	uint32_t nn = rt->nnodes, v4node, v4best;
	struct rt_span *ent = NULL;
	size_t nent = 0, nent_all = 0;
	int err = -ENOMEM;

	b->size = malloc(nn * sizeof(*b->size));
	b->stride = calloc(nn, sizeof(*b->stride));
	b->jbase = malloc(nn * sizeof(*b->jbase));
	b->newidx = malloc(nn * sizeof(*b->newidx));
	if (!b->size || !b->stride || !b->jbase || !b->newidx)
		goto out;
	memset(b->newidx, 0xff, nn * sizeof(*b->newidx));
	subtree_size(b, rt->root);
	/* Lookups of IPv4 keys start below ::ffff:0:0/96, so they skip the
	 * top of the trie; that node gets its own table when it is big.
	 */
	v4node = block_walk(rt, rt->root, V4MAP_LO, 96, &v4best);
	if (b->size[rt->root] >= JUMP_MIN && (err = plan_jump(b, rt->root)))
		goto out;
	if (v4node != NIL && b->size[v4node] >= JUMP_MIN && !b->stride[v4node] &&
	    (err = plan_jump(b, v4node)))
		goto out;
	err = -ENOMEM;
	for (uint32_t i = 0; i < nn; i++)
		if (b->newidx[i] == NIL)
			b->newidx[i] = (uint32_t)b->nl++;
	if (b->nl >= UINT32_MAX)
		goto out;
	rt->nln = (uint32_t)b->nl;
	/* LN_LEAF1 nodes keep their interval inline: the rest need entries. */
	for (uint32_t i = 0; i < nn; i++)
		if (!(rt->nodes[i].n == 1 && is_leaf(&rt->nodes[i]) && !b->stride[i]))
			nent_all += rt->nodes[i].n;
	rt->ln = aligned_alloc(64, (b->nl * sizeof(*rt->ln) + 63) & ~(size_t)63);
	if (!rt->ln || (nent_all && !(ent = malloc(nent_all * sizeof(*ent)))))
		goto out;
	for (uint32_t i = 0; i < nn; i++)
		put_node(b, i, ent, &nent);
	for (uint32_t i = 0; i < nn; i++)
		if (b->stride[i])
			put_slots(b, i);
	rt->root = rt->start[0] = b->newidx[rt->root];
	rt->start_best[1] = v4best == NIL ? NIL : b->newidx[v4best];
	if (v4node != NIL)
		rt->start[1] = b->newidx[v4node];
	free(rt->ent);
	rt->ent = ent;
	rt->nent = rt->cap = nent;
	ent = NULL;
	err = 0;
out:
	free(ent);
	free(rt->nodes);
	rt->nodes = NULL;
	return err;
}

/* Sets rt->first from the start nodes. Every IPv4 key matches
 * ::ffff:0:0/96, every key /0.
 */
static void set_first(struct rt *rt)
{
	for (int v4 = 0; v4 < 2; v4++) {
		uint32_t s = rt->start[v4];
		const struct rt_lnode *nd = s == NIL ? NULL : &rt->ln[s];

		rt->first[v4].base = s;
		rt->first[v4].mask = 0;
		rt->first[v4].sh = 0;
		if (nd && (nd->kind & JUMP_TAG) && nd->len <= (v4 ? 96 : 0)) {
			rt->first[v4].base = nd->w[0];
			rt->first[v4].mask = UINT32_MAX;
			rt->first[v4].sh = nd->kind & ~JUMP_TAG;
		}
	}
}

int rt_build(const struct rt_claim *claims, size_t n, struct rt **out, struct rt_conflict *conflict)
{
	struct rt_builder b = {0};
	struct rt *rt = NULL;
	size_t ndist = 0, maxgrp = 0, cap;
	int err = -ENOMEM;

	for (size_t i = 0; i < n; i++)
		if (validate(&claims[i]))
			return -EINVAL;
	/* Node and entry indices are 32 bits. */
	if (n > UINT32_MAX / 4)
		return -ENOMEM;
	if (!(rt = calloc(1, sizeof(*rt))))
		return -ENOMEM;
	rt->root = rt->start[0] = rt->start[1] = rt->start_best[0] = rt->start_best[1] = NIL;
	if (n == 0)
		goto done;

	if (!(b.recs = malloc(n * sizeof(*b.recs))))
		goto out;
	for (size_t i = 0; i < n; i++) {
		b.recs[i] = (struct rt_rec){.key = addr_key(&claims[i].prefix.addr),
					    .idx = (uint32_t)i,
					    .app = claims[i].app,
					    .lo = claims[i].lo,
					    .hi = claims[i].hi,
					    .len = claims[i].prefix.len};
	}
	qsort(b.recs, n, sizeof(*b.recs), rec_cmp);
	if (find_conflict(b.recs, n, conflict)) {
		err = -EEXIST;
		goto out;
	}

	for (size_t i = 0, g = 0; i < n; i++) {
		if (i + 1 < n && b.recs[i + 1].key == b.recs[i].key &&
		    b.recs[i + 1].len == b.recs[i].len)
			continue;
		ndist++;
		if (i + 1 - g > maxgrp)
			maxgrp = i + 1 - g;
		g = i + 1;
	}
	cap = 2 * ndist;
	/* 64-byte aligned so a 32-byte node never straddles a cache line. */
	rt->nodes = aligned_alloc(64, (cap * sizeof(struct rt_node) + 63) & ~(size_t)63);
	b.grp_start = calloc(cap, sizeof(*b.grp_start));
	b.grp_n = calloc(cap, sizeof(*b.grp_n));
	b.by_lo = malloc(maxgrp * sizeof(*b.by_lo));
	b.pts = malloc(2 * maxgrp * sizeof(*b.pts));
	b.heap = malloc(maxgrp * sizeof(*b.heap));
	b.f_lo = malloc(2 * maxgrp * sizeof(*b.f_lo));
	b.f_hi = malloc(2 * maxgrp * sizeof(*b.f_hi));
	b.f_app = malloc(2 * maxgrp * sizeof(*b.f_app));
	if (!rt->nodes || !b.grp_start || !b.grp_n || !b.by_lo || !b.pts || !b.heap || !b.f_lo ||
	    !b.f_hi || !b.f_app)
		goto out;

	for (size_t i = 0, g = 0; i < n; i++) {
		uint32_t node;

		if (i + 1 < n && b.recs[i + 1].key == b.recs[i].key &&
		    b.recs[i + 1].len == b.recs[i].len)
			continue;
		node = trie_insert(rt, b.recs[g].key, b.recs[g].len);
		b.grp_start[node] = (uint32_t)g;
		b.grp_n[node] = (uint32_t)(i + 1 - g);
		g = i + 1;
	}
	b.rt = rt;
	if ((err = build_maps(&b, rt->root, 0, 0)))
		goto out;
	if ((err = make_layout(&b)))
		goto out;

done:
	set_first(rt);
	*out = rt;
	rt = NULL;
	err = 0;
out:
	rt_free(rt);
	free(b.recs);
	free(b.grp_start);
	free(b.grp_n);
	free(b.by_lo);
	free(b.pts);
	free(b.heap);
	free(b.f_lo);
	free(b.f_hi);
	free(b.f_app);
	free(b.size);
	free(b.stride);
	free(b.jbase);
	free(b.newidx);
	return err;
}

/* The map of a claimed node: inline for LN_LEAF1. */
static inline const struct rt_span *map_of(const struct rt *rt, const struct rt_lnode *nd)
{
	switch (kind_of(nd)) {
	case LN_LEAF1:
		return &nd->one;
	case LN_JUMP:
		return rt->ent + nd->w[1];
	default:
		return rt->ent + nd->w[2];
	}
}

/* The children of a node, wherever its kind keeps them. */
static uint32_t child_of(const struct rt *rt, const struct rt_lnode *nd, unsigned c)
{
	unsigned sh = nd->kind & ~JUMP_TAG;

	switch (kind_of(nd)) {
	case LN_NODE:
	case LN_GLUE:
		return nd->w[c];
	case LN_JUMP:
		/* The spare node before the first slot. */
		return rt->ln[nd->w[0] + (uint32_t)(nd->key >> sh) - 1].w[c];
	default:
		return NIL;
	}
}

/* The node whose map decides every port of <k>: descends checking that
 * each node matches the key, remembering the deepest claimed node (or
 * fallback) on the way. NULL when no claim contains <k>.
 */
static const struct rt_lnode *owner_of(const struct rt *rt, rt_u128 k)
{
	const struct rt_lnode *nd;
	int v4 = (k >> 32) == 0xffff;
	uint32_t i = rt->start[v4], best = rt->start_best[v4];

	while (i != NIL) {
		unsigned kind;

		nd = &rt->ln[i];
		kind = kind_of(nd);
		/* Claimed nodes above a jump slot that the jump skipped. */
		if (kind != LN_NODE && nd->w[2] != NIL)
			best = nd->w[2];
		if (kind == LN_REF) {
			i = nd->w[0];
			continue;
		}
		if ((k ^ nd->key) & mask_of(nd->len))
			break;
		if (kind == LN_LEAF1)
			return nd; /* its map already holds its ancestors' claims */
		if (nd->n)
			best = i;
		if (kind == LN_JUMP)
			i = nd->w[0] + (uint32_t)(k >> (nd->kind & ~JUMP_TAG));
		else
			/* A /128 has no children: any bit will do. */
			i = nd->w[bit_at(k, nd->len & 127)];
	}
	return best == NIL ? NULL : &rt->ln[best];
}

/* The first interval of <nd>'s map whose hi >= <port> (the last one if
 * none); branch-light halving.
 */
static const struct rt_span *map_find(const struct rt *rt, const struct rt_lnode *nd, uint16_t port)
{
	const struct rt_span *ent = map_of(rt, nd);
	uint32_t lo = 0, n = nd->n;

	while (n > 1) {
		uint32_t half = n / 2;

		if (ent[lo + half - 1].hi < port)
			lo += half;
		n -= half;
	}
	return &ent[lo];
}

/* The full lookup: the owner of the key, then its map. Kept out of line
 * so that rt_lookup's common case stays small (see there).
 */
static __attribute__((noinline)) uint32_t lookup_full(const struct rt *rt,
						      const struct in6_addr *addr, uint16_t port)
{
	const struct rt_lnode *nd = owner_of(rt, addr_key(addr));
	const struct rt_span *e;

	if (!nd)
		return RT_NONE;
	e = map_find(rt, nd, port);
	if (e->hi < port || e->lo > port)
		return RT_NONE;
	return e->app;
}

uint16_t rt_first_claimed(const struct rt *rt, const struct in6_addr *addr, uint16_t lo,
			  uint16_t hi)
{
	const struct rt_lnode *nd = owner_of(rt, addr_key(addr));
	const struct rt_span *e;

	if (!nd || lo > hi)
		return 0;
	e = map_find(rt, nd, lo);
	if (e->hi < lo || e->lo > hi)
		return 0;
	return e->lo > lo ? e->lo : lo;
}

/* Most lookups end at a one-interval leaf that contains the key. Such a
 * leaf is the deepest trie node containing the key, however the lookup got
 * there, and its map holds all the claims of its ancestors: its interval is
 * the answer. So this loop descends without checking nodes or tracking
 * fallbacks, checks only the leaf, and hands anything else to lookup_full.
 * Few instructions per lookup is what counts once the table is past L2: the
 * CPU then overlaps the misses of consecutive lookups. Jump nodes are
 * checked all the same, so that a key outside one never indexes past its
 * slots.
 */
uint32_t rt_lookup(const struct rt *rt, const struct in6_addr *addr, uint16_t port)
{
	rt_u128 k = addr_key(addr);
	const struct rt_lnode *ln = rt->ln;
	/* An index, not a branch: the family of a key is not predictable.
	 * (k >> 32 == 0xffff, in 64-bit halves.)
	 */
	int v4 = ((uint64_t)(k >> 64) | (((uint64_t)k >> 32) ^ 0xffff)) == 0;
	uint32_t i = rt->first[v4].base + ((uint32_t)(k >> rt->first[v4].sh) & rt->first[v4].mask);

	while (i != NIL) {
		const struct rt_lnode *nd = &ln[i];
		unsigned kind = nd->kind;

		if (kind == LN_LEAF1) {
			if ((k ^ nd->key) & mask_of(nd->len))
				break;
			/* Without a branch (RT_NONE is all ones): whether the port
			 * is in the interval is as random as the keys.
			 */
			return nd->one.app | -(uint32_t)((uint16_t)(port - nd->one.lo) >
							 (uint16_t)(nd->one.hi - nd->one.lo));
		}
		if (kind & JUMP_TAG) {
			if ((k ^ nd->key) & mask_of(nd->len))
				break;
			i = nd->w[0] + (uint32_t)(k >> (kind & ~JUMP_TAG));
		} else if (kind == LN_REF) {
			i = nd->w[0];
		} else {
			i = nd->w[bit_at(k, nd->len & 127)];
		}
	}
	return lookup_full(rt, addr, port);
}

void rt_free(struct rt *rt)
{
	if (!rt)
		return;
	free(rt->ln);
	free(rt->ent);
	free(rt->nodes);
	free(rt);
}

struct rt_cover_ctx {
	const struct rt *rt;
	int v4;
	int (*fn)(const struct rt_elem *e, void *arg);
	void *arg;
};

/* One element per maximal run of adjacent port intervals of <owner>'s map. */
static int cover_emit(struct rt_cover_ctx *c, const struct rt_lnode *owner, rt_u128 lo, rt_u128 hi)
{
	const struct rt_span *map = map_of(c->rt, owner);
	struct rt_elem e;
	int ret;

	addr_from_key(lo, &e.lo);
	addr_from_key(hi, &e.hi);
	for (uint32_t k = 0; k < owner->n;) {
		uint32_t j = k;

		while (j + 1 < owner->n && map[j].hi + 1u == map[j + 1].lo)
			j++;
		e.plo = map[k].lo;
		e.phi = map[j].hi;
		e.spans = &map[k];
		e.n_spans = j - k + 1;
		if ((ret = c->fn(&e, c->arg)))
			return ret;
		k = j + 1;
	}
	return 0;
}

/* Clips [lo, hi] to the family asked for: IPv4 is the v4-mapped /96, IPv6
 * everything else (at most two pieces, on either side of it).
 */
static int cover_range(struct rt_cover_ctx *c, const struct rt_lnode *owner, rt_u128 lo, rt_u128 hi)
{
	int ret;

	if (c->v4) {
		if (lo < V4MAP_LO)
			lo = V4MAP_LO;
		if (hi > V4MAP_HI)
			hi = V4MAP_HI;
		return lo <= hi ? cover_emit(c, owner, lo, hi) : 0;
	}
	if (lo < V4MAP_LO && (ret = cover_emit(c, owner, lo, hi < V4MAP_LO ? hi : V4MAP_LO - 1)))
		return ret;
	if (hi > V4MAP_HI)
		return cover_emit(c, owner, lo > V4MAP_HI ? lo : V4MAP_HI + 1, hi);
	return 0;
}

/* In-order walk. <owner> is the nearest claimed ancestor; <*cur> the first
 * address of its range not yet emitted, <*past> set once its range is done
 * (its end may be the last address, where cur would wrap).
 */
static int cover_walk(struct rt_cover_ctx *c, uint32_t i, const struct rt_lnode *owner,
		      rt_u128 *cur, bool *past)
{
	const struct rt_lnode *n;
	rt_u128 start, end, ccur;
	bool cpast = false;
	int ret;

	if (i == NIL)
		return 0;
	n = &c->rt->ln[i];
	if (!n->n) {
		if ((ret = cover_walk(c, child_of(c->rt, n, 0), owner, cur, past)))
			return ret;
		return cover_walk(c, child_of(c->rt, n, 1), owner, cur, past);
	}
	start = n->key;
	end = n->key | ~mask_of(n->len);
	if (owner && !*past && *cur < start && (ret = cover_range(c, owner, *cur, start - 1)))
		return ret;
	ccur = start;
	if ((ret = cover_walk(c, child_of(c->rt, n, 0), n, &ccur, &cpast)))
		return ret;
	if ((ret = cover_walk(c, child_of(c->rt, n, 1), n, &ccur, &cpast)))
		return ret;
	if (!cpast && ccur <= end && (ret = cover_range(c, n, ccur, end)))
		return ret;
	if (owner) {
		*past = end == U128_MAX;
		*cur = end + 1;
	}
	return 0;
}

int rt_cover(const struct rt *rt, int v4, int (*fn)(const struct rt_elem *e, void *arg), void *arg)
{
	struct rt_cover_ctx c = {.rt = rt, .v4 = v4, .fn = fn, .arg = arg};
	rt_u128 cur = 0;
	bool past = false;

	return cover_walk(&c, rt->root, NULL, &cur, &past);
}
