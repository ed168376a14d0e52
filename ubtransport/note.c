/* SPDX-License-Identifier: MIT */
/*
 * note.c - a process's notification page: which of its endpoints are
 * ready, posted by its peers, so that a waiter over many endpoints looks
 * at the ready ones only.
 *
 * The page is a segment (kind UBT_SEG_NOTE) that the owner creates and
 * that travels with its doorbell.  It holds a sleeper word (the doorbell
 * protocol of wait.c: epoch<<32 | sleepers, on the owner's eventfd) and a
 * three-level bitmap of endpoint tokens: bit t of the leaves, bit t>>6 of
 * the middle words, bit t>>12 of the top word.  A poster sets the leaf,
 * middle and top bits in that order (seq_cst RMWs), then, if sleepers are
 * registered, claims them and writes that many tokens to the eventfd.
 * The owner takes the top word, then each middle word it names, then each
 * leaf (exchange with 0, in that order): a post it races with is either
 * taken now or leaves its top bit for the next pass.  A set leaf bit is
 * the "posted" flag: a poster that finds it set does nothing more (the
 * owner has not taken it yet, and who set it rings).
 *
 * Why a bitmap and not a queue of tokens: posting the same token twice is
 * idempotent (no duplicate entries, no overflow, no lost slot), a pass
 * takes at most UBT_NOTE_SLOTS tokens whatever a hostile peer writes, and
 * a token is a bit index, in bounds by construction.  A token means only
 * "look at this endpoint": the owner validates it against its own table.
 */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "ubt.h"
#include "ubt_int.h"

#define NOTE_OFF UBT_SEG_HDR_SIZE

int ubt_note_create(struct ubt_note *n, int efd)
{
	int err;

	memset(n, 0, sizeof(*n));
	err = ubt_seg_create(&n->seg, NOTE_OFF + sizeof(struct ubt_note_shm),
			     UBT_SEG_NOTE, "ubs-note");
	if (err)
		return err;
	n->shm = (struct ubt_note_shm *)(void *)(n->seg.base + NOTE_OFF);
	n->efd = efd;
	return 0;
}

int ubt_note_map(struct ubt_note *n, int fd, int efd)
{
	int err;

	memset(n, 0, sizeof(*n));
	err = ubt_seg_map(&n->seg, fd, UBT_SEG_NOTE);
	if (err)
		return err;
	n->shm = ubt_seg_ptr(&n->seg, NOTE_OFF, sizeof(struct ubt_note_shm));
	if (!n->shm) {
		n->seg.fd = -1;         /* the fd stays the caller's */
		ubt_seg_unmap(&n->seg);
		return -EPROTO;
	}
	n->efd = efd;
	return 0;
}

void ubt_note_close(struct ubt_note *n)
{
	if (n->shm)
		ubt_seg_unmap(&n->seg);
	n->shm = NULL;
}

int ubt_note_post(struct ubt_note *n, uint32_t tok)
{
	struct ubt_note_shm *p = n->shm;
	uint64_t bit = 1ull << (tok & 63);

	if (!p || !tok || tok >= UBT_NOTE_SLOTS)
		return 0;
	if (atomic_load_explicit(&p->leaf[tok >> 6], memory_order_relaxed) & bit)
		return 0;               /* posted, not taken yet */
	atomic_fetch_or_explicit(&p->leaf[tok >> 6], bit, memory_order_seq_cst);
	atomic_fetch_or_explicit(&p->mid[tok >> 12], 1ull << ((tok >> 6) & 63),
				 memory_order_seq_cst);
	atomic_fetch_or_explicit(&p->top, 1ull << (tok >> 12),
				 memory_order_seq_cst);
	n->posts++;
	return ubt_db_ring(&p->sleep, n->efd);
}

int ubt_note_pop(struct ubt_note *n, void (*fn)(uint32_t tok, void *arg),
		 void *arg)
{
	struct ubt_note_shm *p = n->shm;
	uint64_t top;
	int got = 0;

	if (!p || !atomic_load_explicit(&p->top, memory_order_relaxed))
		return 0;
	top = atomic_exchange_explicit(&p->top, 0, memory_order_seq_cst);
	while (top) {
		unsigned i = (unsigned)__builtin_ctzll(top);
		uint64_t mid;

		top &= top - 1;
		mid = atomic_exchange_explicit(&p->mid[i], 0,
					       memory_order_seq_cst);
		while (mid) {
			unsigned j = i * 64 + (unsigned)__builtin_ctzll(mid);
			uint64_t leaf;

			mid &= mid - 1;
			leaf = atomic_exchange_explicit(&p->leaf[j], 0,
							memory_order_seq_cst);
			while (leaf) {
				uint32_t t = j * 64 +
					(uint32_t)__builtin_ctzll(leaf);

				leaf &= leaf - 1;
				if (t) {
					fn(t, arg);
					got++;
				}
			}
		}
	}
	return got;
}

uint32_t ubt_note_arm(struct ubt_note *n)
{
	return (uint32_t)(atomic_fetch_add_explicit(&n->shm->sleep, 1,
						    memory_order_seq_cst) >> 32);
}

int ubt_note_disarm(struct ubt_note *n, uint32_t key)
{
	return ubt_db_cancel(&n->shm->sleep, key, n->efd);
}

int ubt_note_wake(struct ubt_note *n)
{
	return n->shm ? ubt_db_ring(&n->shm->sleep, n->efd) : 0;
}
