/* dns.c - re-resolve named origins in the background (see dns.h). */
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "cfg.h"
#include "dns.h"
#include "log.h"
#include "timer.h"

struct dns {
	pthread_t thread;
	int evfd;
	struct app_origins *apps;
	size_t n;
	uint64_t *due; /* per app: ms monotonic of the next resolution, 0 = never */
	bool stop;     /* atomic: dns_stop was called */
};

/* What the apps of one round share. */
struct round {
	void *memo;	 /* this round's answers (cfg_resolve_memo) */
	unsigned failed; /* names that did not resolve, of all apps */
};

/* A round logs this many failures one by one, then a count: with thousands
 * of apps naming one unreachable resolver's names, one line per app and
 * round would flood the log.
 */
#define FAIL_LOG_MAX 10

/* Resolves <host> through cfg_resolver (the loader's resolver, so tests can
 * stub both), once per round for all apps (<memo>), into at most <max>
 * addresses (port 0). Returns the count, or -1 with <*why> set.
 */
static int resolve(void **memo, const char *host, struct sockaddr_storage *out, int max,
		   const char **why)
{
	struct sockaddr_storage *v = NULL;
	size_t n = 0;

	if (cfg_resolve_memo(memo, host, &v, &n, why) < 0)
		return -1;
	n = cfg_addrs_cut(v, n);
	if (n > (size_t)max)
		n = (size_t)max;
	memcpy(out, v, n * sizeof(*v));
	free(v);
	return (int)n;
}

#define MAX_ADDRS CFG_NAME_ADDRS_MAX

/* Re-resolves the named origins of one app; swaps in a new set if any
 * address changed.
 */
static void refresh_app(struct dns *d, struct app_origins *ao, struct round *rd)
{
	const struct cfg_app *app = ao->app;
	struct origin_set *cur = app_origins_get(ao);
	struct origin **v = NULL;
	struct sockaddr_storage addrs[MAX_ADDRS];
	size_t n = 0, cap = 0;
	bool changed = false;

	for (size_t i = 0; i < app->n_origins; i++)
		cap += app->origins[i].is_name ? MAX_ADDRS : app->origins[i].n_addrs;
	v = calloc(cap ? cap : 1, sizeof(*v));
	if (!v)
		goto out;

	for (size_t i = 0; i < app->n_origins; i++) {
		const struct cfg_origin *co = &app->origins[i];
		const char *why = NULL;
		size_t had = 0;
		int got;

		/* A lookup can take seconds when the resolver is down: stop
		 * between them, leaving the set as it is. */
		if (__atomic_load_n(&d->stop, __ATOMIC_ACQUIRE)) {
			changed = false;
			goto out;
		}

		/* What this configured origin has in the current set. */
		for (size_t k = 0; k < cur->n; k++)
			had += cur->v[k]->co == co;
		if (!co->is_name) {
			for (size_t k = 0; k < cur->n; k++)
				if (cur->v[k]->co == co) {
					origin_ref(cur->v[k]);
					v[n++] = cur->v[k];
				}
			continue;
		}
		got = resolve(&rd->memo, co->host, addrs, MAX_ADDRS, &why);
		if (got < 0) {
			if (++rd->failed <= FAIL_LOG_MAX)
				log_warn("app %s: cannot resolve origin %s (%s); keeping its %zu "
					 "address(es)",
					 app->name, co->host, why, had);
			for (size_t k = 0; k < cur->n; k++)
				if (cur->v[k]->co == co) {
					origin_ref(cur->v[k]);
					v[n++] = cur->v[k];
				}
			continue;
		}
		/* Keep the origin objects (health, counts) of addresses that stay. */
		size_t kept = 0;
		char list[512] = "";
		for (int a = 0; a < got; a++) {
			struct origin *o = NULL;
			char buf[ADDR_STRLEN];

			for (size_t k = 0; k < cur->n && !o; k++)
				if (cur->v[k]->co == co &&
				    addr_sa_same_host(&cur->v[k]->addr, &addrs[a]))
					o = cur->v[k];
			if (o) {
				origin_ref(o);
				kept++;
			} else {
				o = origin_new(co, &addrs[a]);
				if (!o)
					continue;
			}
			v[n++] = o;
			addr_fmt_sa((const struct sockaddr *)&addrs[a], buf);
			*strrchr(buf, ':') = '\0';
			snprintf(list + strlen(list), sizeof(list) - strlen(list), "%s%s",
				 a ? ", " : "", buf);
		}
		if (kept != had || (size_t)got != had) {
			changed = true;
			log_info("app %s: origin %s now resolves to %s (had %zu address(es))",
				 app->name, co->host, list, had);
		}
	}
	if (changed) {
		struct origin_set *s = origin_set_new(app, v, n, cur);

		if (s)
			app_origins_swap(ao, s);
		else
			log_warn("app %s: out of memory applying DNS changes", app->name);
	}
out:
	for (size_t i = 0; i < n; i++)
		origin_unref(v[i]);
	free(v);
	origin_set_unref(cur);
}

static void *dns_main(void *arg)
{
	struct dns *d = arg;

	for (;;) {
		uint64_t now = mono_ms(), start = now, next = UINT64_MAX;
		struct pollfd pfd = {.fd = d->evfd, .events = POLLIN};
		struct round rd = {0};
		int timeout;

		for (size_t i = 0; i < d->n; i++) {
			if (!d->due[i])
				continue;
			if (d->due[i] <= now) {
				uint64_t every = d->apps[i].app->dns_refresh_ms;

				if (__atomic_load_n(&d->stop, __ATOMIC_ACQUIRE))
					break;
				refresh_app(d, &d->apps[i], &rd);
				now = mono_ms();
				/* From the round's start, not from this app's
				 * lookup: apps due together stay due together, so
				 * a name they share is looked up once a round. If
				 * dating from each lookup's end, their due times
				 * drift apart by the round's length, and rounds
				 * split (seen under ThreadSanitizer). But never
				 * due again at once after a round longer than the
				 * interval.
				 */
				d->due[i] = start + every > now ? start + every : now + every;
			}
			if (d->due[i] < next)
				next = d->due[i];
		}
		cfg_memo_free(&rd.memo);
		if (rd.failed > FAIL_LOG_MAX)
			log_warn("dns: %u more lookups of origin names failed in this round (not "
				 "logged one by one); their apps keep their addresses",
				 rd.failed - FAIL_LOG_MAX);
		/* A later app's lookup may have run past an earlier app's due
		 * time: never a negative (infinite) or truncated timeout.
		 */
		if (next == UINT64_MAX)
			timeout = -1;
		else if (next <= now)
			timeout = 0;
		else
			timeout = next - now > INT_MAX ? INT_MAX : (int)(next - now);
		if (poll(&pfd, 1, timeout) > 0)
			return NULL; /* dns_stop */
	}
}

int dns_start(struct dns **out, struct app_origins *apps, size_t n)
{
	struct dns *d;
	bool any = false;
	int r;

	*out = NULL;
	d = calloc(1, sizeof(*d));
	if (!d)
		return -ENOMEM;
	d->apps = apps;
	d->n = n;
	d->evfd = -1;
	d->due = calloc(n ? n : 1, sizeof(*d->due));
	if (!d->due) {
		r = -ENOMEM;
		goto fail;
	}
	for (size_t i = 0; i < n; i++)
		for (size_t k = 0; k < apps[i].app->n_origins; k++)
			if (apps[i].app->origins[k].is_name) {
				/* Resolved at load: the first refresh is one
				 * interval away.
				 */
				d->due[i] = mono_ms() + apps[i].app->dns_refresh_ms;
				any = true;
			}
	if (!any) {
		free(d->due);
		free(d);
		return 0;
	}
	d->evfd = eventfd(0, EFD_CLOEXEC);
	if (d->evfd == -1) {
		r = -errno;
		goto fail;
	}
	r = -pthread_create(&d->thread, NULL, dns_main, d);
	if (r < 0)
		goto fail;
	pthread_setname_np(d->thread, "dns");
	*out = d;
	return 0;
fail:
	if (d->evfd != -1)
		close(d->evfd);
	free(d->due);
	free(d);
	return r;
}

void dns_request_stop(struct dns *d)
{
	if (d)
		__atomic_store_n(&d->stop, true, __ATOMIC_RELEASE);
}

void dns_stop(struct dns *d)
{
	uint64_t one = 1;

	if (!d)
		return;
	dns_request_stop(d);
	if (write(d->evfd, &one, sizeof(one)) == -1)
		log_err("dns: cannot wake resolver thread: %s", strerror(errno));
	pthread_join(d->thread, NULL);
	close(d->evfd);
	free(d->due);
	free(d);
}
