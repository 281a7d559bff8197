/* origin.c - origins at run time: building sets, references, swapping.
 *
 * A worker picks an origin by taking the app's current set under the app's
 * mutex (a pointer copy and an atomic increment: the critical section is a
 * few instructions, so the lock is uncontended in practice), then balancing
 * over it without any lock. The set cannot be freed under the worker
 * because the reference is taken inside the lock that app_origins_swap
 * takes to replace it.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cfg.h"
#include "lb.h"
#include "origin.h"

struct origin *origin_new(const struct cfg_origin *co, const struct sockaddr_storage *addr)
{
	struct origin *o = calloc(1, sizeof(*o));
	char a[ADDR_STRLEN];

	if (!o)
		return NULL;
	o->refs = 1;
	o->co = co;
	o->addr = *addr;
	o->weight = co->weight;
	o->backup = co->backup;
	o->up = 1;
	/* The port is 0 unless fixed: the health thread reads it from here */
	addr_sa_set_port((struct sockaddr *)&o->addr,
			 co->port_mode == CFG_PORT_FIXED ? co->port : 0);
	addr_fmt_sa((const struct sockaddr *)&o->addr, a);
	if (co->port_mode != CFG_PORT_FIXED) /* drop the meaningless ":0" */
		*strrchr(a, ':') = '\0';
	if (co->is_name)
		snprintf(o->name, sizeof(o->name), "%s (%s)", co->host, a);
	else
		snprintf(o->name, sizeof(o->name), "%s", a);
	return o;
}

void origin_ref(struct origin *o)
{
	__atomic_add_fetch(&o->refs, 1, __ATOMIC_RELAXED);
}

void origin_unref(struct origin *o)
{
	if (o && __atomic_sub_fetch(&o->refs, 1, __ATOMIC_ACQ_REL) == 0)
		free(o);
}

struct origin_set *origin_set_new(const struct cfg_app *app, struct origin **v, size_t n,
				  const struct origin_set *prev)
{
	struct origin_set *s = calloc(1, sizeof(*s));

	static uint64_t last_id; /* atomic */

	if (!s)
		return NULL;
	s->refs = 1;
	s->id = __atomic_add_fetch(&last_id, 1, __ATOMIC_RELAXED);
	s->v = calloc(n ? n : 1, sizeof(*s->v));
	if (!s->v)
		goto fail;
	for (size_t i = 0; i < n; i++) {
		origin_ref(v[i]);
		s->v[i] = v[i];
	}
	s->n = n;
	s->lb = lb_table_new(app->balance, s, prev ? prev->lb : NULL);
	if (!s->lb)
		goto fail;
	return s;
fail:
	origin_set_unref(s);
	return NULL;
}

struct origin_set *origin_set_from_cfg(const struct cfg_app *app)
{
	struct origin **v;
	struct origin_set *s = NULL;
	size_t n = 0, cap = 0;

	for (size_t i = 0; i < app->n_origins; i++)
		cap += app->origins[i].n_addrs;
	v = calloc(cap ? cap : 1, sizeof(*v));
	if (!v)
		return NULL;
	for (size_t i = 0; i < app->n_origins; i++) {
		const struct cfg_origin *co = &app->origins[i];

		for (size_t j = 0; j < co->n_addrs; j++) {
			v[n] = origin_new(co, &co->addrs[j]);
			if (!v[n])
				goto out;
			n++;
		}
	}
	s = origin_set_new(app, v, n, NULL);
out:
	for (size_t i = 0; i < n; i++)
		origin_unref(v[i]);
	free(v);
	return s;
}

void origin_set_unref(struct origin_set *s)
{
	if (!s || __atomic_sub_fetch(&s->refs, 1, __ATOMIC_ACQ_REL) != 0)
		return;
	for (size_t i = 0; i < s->n; i++)
		origin_unref(s->v[i]);
	if (s->lb)
		lb_table_free(s->lb);
	free(s->v);
	free(s);
}

struct origin_set *app_origins_get(struct app_origins *ao)
{
	struct origin_set *s;

	pthread_mutex_lock(&ao->lock);
	s = ao->set;
	__atomic_add_fetch(&s->refs, 1, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&ao->lock);
	return s;
}

void app_origins_swap(struct app_origins *ao, struct origin_set *s)
{
	struct origin_set *old;

	pthread_mutex_lock(&ao->lock);
	old = ao->set;
	ao->set = s;
	pthread_mutex_unlock(&ao->lock);
	origin_set_unref(old);
}

struct app_origins *app_origins_new(const struct cfg *cfg)
{
	struct app_origins *v = calloc(cfg->n_apps ? cfg->n_apps : 1, sizeof(*v));

	if (!v)
		return NULL;
	for (size_t i = 0; i < cfg->n_apps; i++) {
		pthread_mutex_init(&v[i].lock, NULL);
		v[i].app = &cfg->apps[i];
		v[i].set = origin_set_from_cfg(&cfg->apps[i]);
		if (!v[i].set) {
			app_origins_free(v, i + 1);
			return NULL;
		}
	}
	return v;
}

void app_origins_free(struct app_origins *v, size_t n)
{
	if (!v)
		return;
	for (size_t i = 0; i < n; i++) {
		origin_set_unref(v[i].set);
		pthread_mutex_destroy(&v[i].lock);
	}
	free(v);
}
