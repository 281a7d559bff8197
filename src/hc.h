/* hc.h - origin health: active checks in a thread of their own, and the
 * passive accounting the workers feed.
 *
 * Active: for every app with a health_check, every origin address is
 * checked each interval: a TCP connect within timeout, and if `send` is set,
 * the payload is sent and the reply must start with `expect`. `fall`
 * consecutive failures mark the origin down (no new connections), `rise`
 * consecutive successes mark it up again. Open connections are left alone.
 * Passive: `passive.failures` consecutive connect failures seen by workers
 * put the origin in cooldown for `passive.cooldown`; after it, one more
 * failure puts it back in cooldown, a success clears it. Every transition
 * is logged with its reason.
 */
#ifndef PRISM_HC_H
#define PRISM_HC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "origin.h"

struct cfg_app;
struct hc;

/* Active checks connecting or talking at once; the rest wait in a FIFO. */
#define HC_MAX_INFLIGHT 256

/* Starts the health-check thread over <n> apps' origin sets (borrowed; they
 * must outlive hc_stop). Apps without health_check are skipped. Returns 0 or
 * -errno; *out is NULL when no app has checks.
 */
int hc_start(struct hc **out, struct app_origins *apps, size_t n);
void hc_stop(struct hc *hc);

/* Feeds one active-check result for <o> of <app> into the rise/fall state
 * machine: <ok>, or a failure for reason <why> (a sentence for the log).
 * Flips and logs origin->up on a transition. Called by the health-check
 * thread only (exposed for the unit tests).
 */
void hc_record_result(struct origin *o, const struct cfg_app *app, bool ok, const char *why);

/* How many shared-check entries the thread keeps (see hc.c); any thread
 * may ask (tests, a future status endpoint).
 */
size_t hc_shared_entries(const struct hc *hc);

/* How many times the thread has woken up (tests). */
uint64_t hc_wakeups(const struct hc *hc);

/* Passive accounting, called by workers. <err> is the connect errno. */
void hc_connect_failed(const struct cfg_app *app, struct origin *o, uint64_t now_ms, int err);
void hc_connect_ok(const struct cfg_app *app, struct origin *o);

#endif
