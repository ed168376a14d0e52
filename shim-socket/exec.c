/* SPDX-License-Identifier: MIT */
/*
 * exec.c - UB connections that cross an exec into an image that will have
 * the library stay on UB.
 *
 * Old image, at execve: when the new image will load this library
 * (LD_PRELOAD of the new environment names this very file, the image is a
 * dynamically linked ELF of our machine, not set-uid/set-gid and without
 * file capabilities), every UB connection that survives the exec (an fd
 * without FD_CLOEXEC) is described in UBS_EXEC_CONNS: its socket fds and
 * the socket's inode, an fd of its segment (the library keeps only the
 * mapping: it is opened again through /proc/self/map_files, which needs
 * CAP_SYS_ADMIN), the side, this side's and the peer's doorbells (fds and
 * ids), and the sock's state.  Those fds lose FD_CLOEXEC for the exec.  An
 * UNDECIDED accepted connection is settled first (a bounded wait for its
 * client, as before a first send); one that cannot be described is
 * demoted, as is every inherited connection when the new image will not
 * have the library.  If execve fails, flags and fds are put back and the
 * connections go on in the old image.
 *
 * New image, at init (before main): every entry is checked against the
 * kernel (the fds are that socket, an eventfd, a memfd channel segment of
 * our layout in state UB whose ids match) and the sock is installed again,
 * holding what the old image held (same process: the channel's holders do
 * not change).  An entry that does not check out leaves its socket plain
 * TCP; if its segment could be mapped the channel is demoted first, so a
 * peer still on the rings goes back to TCP without losing a byte.
 *
 * Threads racing with exec: each kept sock's mutex is held from the
 * description to the exec (no demotion, promotion or close of the channel
 * state in between); a thread of the old image that exec ends inside a
 * ring operation leaves that ring-end lock held by this pid, which the new
 * image lets go (nothing was published by it).
 */
#include <dlfcn.h>
#include <elf.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <netinet/in.h>

#include "sock.h"
#include "ctl.h"

#define EXEC_ENV        "UBS_EXEC_CONNS"
#define EXEC_ENV_VER    "3"
#define KEEP_MAX        64              /* connections described */
#define KEEP_FDS        8               /* fds of one connection */

#define KF_RESENT       1u
#define KF_SHUT_RD      2u
#define KF_SHUT_WR      4u
#define KF_PROCESS_DB   8u              /* own doorbell: the process's */

struct kept {
	struct sock *s;
	int fds[KEEP_FDS];
	int nfd;
	int seg;                        /* segment fd opened for the exec */
	bool locked;                    /* s->mu held */
};

/* This process's pid as of its init or fork: a vfork child (whose fork
 * handlers never ran) sees another. */
static pid_t exec_pid;

static void exec_pid_refresh(void)
{
	exec_pid = getpid();
}

/* One exec at a time; the state of the one under way (for undo). */
static pthread_mutex_t exec_mu = PTHREAD_MUTEX_INITIALIZER;
static struct {
	struct kept k[KEEP_MAX];
	int n;
	char *env;                      /* "UBS_EXEC_CONNS=..." */
	char **envp;
} ex;

/* ------------------------------------------------ will it have the library */

/* Identities (dev, inode) of this library's file: the path the loader
 * gave it, and the mapping that holds this function in /proc/self/maps
 * (the path may be relative or renamed since; on overlayfs the two may
 * differ).  Returns how many were found. */
static int lib_ident(dev_t dev[2], ino_t ino[2])
{
	static dev_t d[2];
	static ino_t i[2];
	static int n = -1;
	uintptr_t me = (uintptr_t)lib_ident;
	Dl_info info;
	struct stat st;
	char line[512];
	FILE *f;

	if (n < 0) {
		n = 0;
		if (dladdr((void *)lib_ident, &info) && info.dli_fname &&
		    info.dli_fname[0] == '/' && stat(info.dli_fname, &st) == 0) {
			d[n] = st.st_dev;
			i[n++] = st.st_ino;
		}
		f = fopen("/proc/self/maps", "re");
		while (f && fgets(line, sizeof(line), f)) {
			unsigned long lo, hi, maj, mnr;
			unsigned long long inode;

			if (sscanf(line, "%lx-%lx %*s %*s %lx:%lx %llu", &lo,
				   &hi, &maj, &mnr, &inode) == 5 &&
			    me >= lo && me < hi && inode) {
				d[n] = makedev(maj, mnr);
				i[n++] = (ino_t)inode;
				break;
			}
		}
		if (f)
			fclose(f);
	}
	memcpy(dev, d, sizeof(d));
	memcpy(ino, i, sizeof(i));
	return n;
}

/* Does the environment preload this library (by a path to its file), and
 * leave it enabled? */
static bool env_has_library(char *const envp[])
{
	const char *pre = NULL;
	char buf[4096], *tok, *save;
	dev_t dev[2];
	ino_t ino[2];
	int nid = lib_ident(dev, ino);

	if (!envp || !nid)
		return false;
	for (char *const *e = envp; *e; e++) {
		if (!strncmp(*e, "UBS_DISABLE=", 12) && !strcmp(*e + 12, "1"))
			return false;
		if (!pre && !strncmp(*e, "LD_PRELOAD=", 11))
			pre = *e + 11;  /* the loader takes the first */
	}
	if (!pre || strlen(pre) >= sizeof(buf))
		return false;
	strcpy(buf, pre);
	for (tok = strtok_r(buf, " :", &save); tok;
	     tok = strtok_r(NULL, " :", &save)) {
		struct stat st;

		if (!strchr(tok, '/') || strchr(tok, '$') || stat(tok, &st))
			continue;
		for (int j = 0; j < nid; j++)
			if (st.st_dev == dev[j] && st.st_ino == ino[j])
				return true;
	}
	return false;
}

#if defined(__x86_64__)
#define OUR_MACHINE EM_X86_64
#elif defined(__aarch64__)
#define OUR_MACHINE EM_AARCH64
#else
#define OUR_MACHINE EM_NONE
#endif

/* Will the loader run for path, in a non-secure process?  A dynamically
 * linked 64-bit ELF of our machine, not set-uid/set-gid, no file
 * capabilities.  Scripts and everything else: no (the caller demotes). */
static bool image_dynamic(const char *path)
{
	Elf64_Ehdr eh;
	struct stat st;
	bool ok = false;
	int fd;

	if (!path || OUR_MACHINE == EM_NONE)
		return false;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) ||
	    (st.st_mode & (S_ISUID | S_ISGID)))
		goto out;
	if (fgetxattr(fd, "security.capability", NULL, 0) >= 0)
		goto out;
	if (pread(fd, &eh, sizeof(eh), 0) != (ssize_t)sizeof(eh) ||
	    memcmp(eh.e_ident, ELFMAG, SELFMAG) ||
	    eh.e_ident[EI_CLASS] != ELFCLASS64 ||
	    eh.e_machine != OUR_MACHINE ||
	    (eh.e_type != ET_EXEC && eh.e_type != ET_DYN) ||
	    eh.e_phentsize != sizeof(Elf64_Phdr) || eh.e_phnum > 128)
		goto out;
	for (unsigned i = 0; i < eh.e_phnum && !ok; i++) {
		Elf64_Phdr ph;

		if (pread(fd, &ph, sizeof(ph), (off_t)(eh.e_phoff +
						      i * sizeof(ph))) !=
		    (ssize_t)sizeof(ph))
			break;
		ok = ph.p_type == PT_INTERP;
	}
out:
	ubs_real.close(fd);
	return ok;
}

/* The file execvp would run for file (PATH search as glibc does it, first
 * executable regular file); false if none. */
static bool path_search(const char *file, char *out, size_t n)
{
	const char *p = getenv("PATH"), *end;

	if (!file || !*file)
		return false;
	if (strchr(file, '/')) {
		if (strlen(file) >= n)
			return false;
		strcpy(out, file);
		return true;
	}
	if (!p)
		p = "/bin:/usr/bin";
	for (;; p = end + 1) {
		struct stat st;
		size_t len;

		end = strchrnul(p, ':');
		len = (size_t)(end - p);
		if ((size_t)snprintf(out, n, "%.*s%s%s", (int)len, p,
				     len ? "/" : "", file) < n &&
		    access(out, X_OK) == 0 && stat(out, &st) == 0 &&
		    S_ISREG(st.st_mode))
			return true;
		if (!*end)
			return false;
	}
}

/* ------------------------------------------------------------ old image */

struct scan {
	struct sock *s[KEEP_MAX * 2];
	int fd[KEEP_MAX * 2];
	int n;
	bool overflow;
};

static void collect(int fd, struct sock *s, void *arg)
{
	struct scan *t = arg;
	int st = atomic_load(&s->state), fl;

	if (st != SK_UB && st != SK_UNDECIDED && st != SK_DRAIN)
		return;
	fl = ubs_real.fcntl(fd, F_GETFD);
	if (fl < 0 || (fl & FD_CLOEXEC))
		return;
	if (t->n == KEEP_MAX * 2) {
		t->overflow = true;
		return;
	}
	__atomic_add_fetch(&s->refs, 1, __ATOMIC_RELAXED);
	t->s[t->n] = s;
	t->fd[t->n++] = fd;
}

/* An fd of the memfd behind s's mapping (placed high, close-on-exec), or
 * -errno. */
static int seg_fd_of(struct sock *s)
{
	/* A channel in a board slot: the board's memfd. */
	const struct ubt_seg *seg = s->board ? &s->board->seg : &s->ch.seg;
	char path[64];
	struct stat st;
	uintptr_t b = (uintptr_t)seg->base;
	int fd;

	snprintf(path, sizeof(path), "/proc/self/map_files/%lx-%lx",
		 (unsigned long)b, (unsigned long)(b + seg->size));
	fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) ||
	    (uint64_t)st.st_size != seg->size ||
	    ubs_real.fcntl(fd, F_GET_SEALS) < 0) {
		ubs_real.close(fd);
		return -EPROTO;
	}
	return ubs_fd_high(fd);
}

static void set_cloexec(int fd, bool on)
{
	int fl = fd >= 0 ? ubs_real.fcntl(fd, F_GETFD) : -1;

	if (fl >= 0)
		ubs_real.fcntl(fd, F_SETFD, on ? fl | FD_CLOEXEC :
			       fl & ~FD_CLOEXEC);
}

/* The fd of s's own notification page (peers post to it: the new image
 * must take it back with the doorbell), or -1. */
static int note_fd_of(const struct sock *s)
{
	return s->own_note ? s->own_note->seg.fd : -1;
}

/*
 * Make one inherited connection ready to cross (s has a reference; fd is
 * one of its fds), with no sock mutex held: settle an UNDECIDED one, act
 * on a demotion under way, get the peer's doorbell and an fd of the
 * segment.  Returns true with k->seg set, or false (the connection is on
 * TCP now: settled so, or demoted because it cannot be described).
 */
static bool keep_prepare(struct kept *k, int fd)
{
	struct sock *s = k->s;
	int st = atomic_load(&s->state), seg, r;

	if (st == SK_UNDECIDED &&
	    sock_settle_undecided(s, fd, true) != SK_UB) {
		if (atomic_load(&s->state) == SK_UNDECIDED)
			sock_demote(s, fd);
		return false;
	}
	if (sock_demote_pending(s) && sock_demote_handle(s, fd) == 0)
		return false;
	st = atomic_load(&s->state);
	if (st != SK_UB && st != SK_DRAIN)
		return false;
	if (!s->have_chan || s->closing)
		goto demote;
	pthread_mutex_lock(&s->mu);     /* as sock_promote does */
	r = s->peer_db ? 0 : sock_peer_db(s);
	pthread_mutex_unlock(&s->mu);
	if (r < 0 || note_fd_of(s) < 0)
		goto demote;
	seg = seg_fd_of(s);
	if (seg < 0) {
		ubs_info("fd %d: no fd of its segment (%s): demoted at exec",
			 fd, strerror(-seg));
		goto demote;
	}
	k->seg = seg;
	return true;
demote:
	sock_demote(s, fd);
	return false;
}

/*
 * Hold k's sock mutex until the exec (no demotion handling, promotion or
 * close of its state meanwhile).  False, with its segment fd let go, when
 * another thread's call changed it since keep_prepare: it is on TCP then
 * (or its own demotion is under way, which the new image does not need
 * to know: this side is plain TCP, the peer drains and re-sends).
 */
static bool keep_lock(struct kept *k)
{
	struct sock *s = k->s;
	int st;

	pthread_mutex_lock(&s->mu);
	st = atomic_load(&s->state);
	if ((st == SK_UB || st == SK_DRAIN) && s->have_chan && !s->closing &&
	    s->peer_db &&
	    !atomic_load(ubt_chan_demote_word(&s->ch, s->ch.side))) {
		k->locked = true;
		return true;
	}
	pthread_mutex_unlock(&s->mu);
	ubs_fd_release(k->seg);
	k->seg = -1;
	return false;
}

/* Append "fmt" to the buffer; false when it does not fit. */
static bool put(char *buf, size_t size, size_t *len, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static bool put(char *buf, size_t size, size_t *len, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf + *len, size - *len, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= size - *len)
		return false;
	*len += (size_t)n;
	return true;
}

/* Describe the kept connections: "3;entry;entry..." where an entry is
 * ino,fd.fd...,seg,segid,side,state,flags,own,ownid,peer,peerid,spin_ns,
 * note (this side's notification page),slot (the channel's slot in the
 * board that seg then is; -1: seg is the channel's own segment). */
static char *describe(void)
{
	size_t size = 64 + (size_t)ex.n * 256, len = 0;
	char *buf = malloc(size);
	uint64_t db_id = 0;
	int db = ubs_ctl_doorbell_peek(&db_id);

	if (!buf)
		return NULL;
	put(buf, size, &len, EXEC_ENV "=" EXEC_ENV_VER);
	for (int i = 0; i < ex.n; i++) {
		struct kept *k = &ex.k[i];
		struct sock *s = k->s;
		int side = s->ch.side;
		unsigned fl = (s->resent ? KF_RESENT : 0) |
			(s->shut_rd ? KF_SHUT_RD : 0) |
			(s->shut_wr ? KF_SHUT_WR : 0) |
			(db >= 0 && s->ch.efd[side] == db ? KF_PROCESS_DB : 0);
		struct stat st;
		uint64_t own_id = fl & KF_PROCESS_DB ? db_id : 0;

		if (fstat(k->fds[0], &st) < 0)
			goto fail;
		if (!own_id)
			own_id = ubt_chan_own_db(&s->ch);
		if (!put(buf, size, &len, ";%llu,", (unsigned long long)st.st_ino))
			goto fail;
		for (int j = 0; j < k->nfd; j++)
			if (!put(buf, size, &len, "%s%d", j ? "." : "", k->fds[j]))
				goto fail;
		if (!put(buf, size, &len, ",%d,%" PRIx64 ",%d,%d,%u,%d,%" PRIx64
			 ",%d,%" PRIx64 ",%" PRId64 ",%d,%d", k->seg,
			 s->ch.seg.id, side, atomic_load(&s->state), fl,
			 s->ch.efd[side], own_id, s->ch.efd[!side], s->peer_db,
			 s->spin_ns, note_fd_of(s), s->board ? s->board_slot : -1))
			goto fail;
	}
	return buf;
fail:
	free(buf);
	return NULL;
}

/* Put back what sock_exec_prepare changed (execve failed). */
void sock_exec_undo(void)
{
	int saved = errno;

	for (int i = 0; i < ex.n; i++) {
		struct kept *k = &ex.k[i];
		struct sock *s = k->s;

		set_cloexec(s->ch.efd[0], true);
		set_cloexec(s->ch.efd[1], true);
		set_cloexec(note_fd_of(s), true);
		if (k->seg >= 0)
			ubs_fd_release(k->seg);
		if (k->locked)
			pthread_mutex_unlock(&s->mu);
		sock_put(s);
	}
	ex.n = 0;
	free(ex.env);
	free(ex.envp);
	ex.env = NULL;
	ex.envp = NULL;
	pthread_mutex_unlock(&exec_mu);
	errno = saved;
}

/* envp with our description added (any stale one left out). */
static char **env_with(char *const envp[], char *ours)
{
	size_t n = 0, k = 0;
	char **out;

	for (char *const *e = envp; e && *e; e++)
		n++;
	out = malloc(sizeof(*out) * (n + 2));
	if (!out)
		return NULL;
	for (char *const *e = envp; e && *e; e++)
		if (strncmp(*e, EXEC_ENV "=", sizeof(EXEC_ENV)))
			out[k++] = *e;
	out[k++] = ours;
	out[k] = NULL;
	return out;
}

/*
 * Before an exec of image (NULL: unknown) with envp: keep the inherited UB
 * connections if the new image will have the library, else demote them.
 * Returns the environment to exec with (then the caller must call
 * sock_exec_undo if the exec fails), or NULL: exec with envp as it is.
 */
char **sock_exec_prepare(const char *image, char *const envp[])
{
	struct scan t = { .n = 0 };
	int saved = errno;

	if (!ubs_ready() || ubs_guard)
		return NULL;
	pthread_mutex_lock(&exec_mu);
	sock_for_each(collect, &t);
	if (!t.n) {                     /* the common case: nothing to do */
		pthread_mutex_unlock(&exec_mu);
		errno = saved;
		return NULL;
	}
	/* A vfork child (or a clone without fork handlers) shares the
	 * parent's memory and holds: nothing to carry from there. */
	if (t.overflow || ubs_config.tcp_only || exec_pid != getpid() ||
	    !env_has_library(envp) || !image_dynamic(image)) {
		for (int i = 0; i < t.n; i++)
			sock_put(t.s[i]);
		pthread_mutex_unlock(&exec_mu);
		sock_demote_inherited();
		errno = saved;
		return NULL;
	}
	ex.n = 0;
	for (int i = 0; i < t.n; i++) {
		struct kept *k = NULL;

		for (int j = 0; j < ex.n; j++)
			if (ex.k[j].s == t.s[i])
				k = &ex.k[j];
		if (k) {                /* another fd of a kept one */
			if (k->nfd < KEEP_FDS)
				k->fds[k->nfd++] = t.fd[i];
			sock_put(t.s[i]);
			continue;
		}
		if (ex.n == KEEP_MAX) { /* no room to describe it */
			sock_demote(t.s[i], t.fd[i]);
			sock_put(t.s[i]);
			continue;
		}
		k = &ex.k[ex.n];
		memset(k, 0, sizeof(*k));
		k->s = t.s[i];
		k->seg = -1;
		k->fds[k->nfd++] = t.fd[i];
		if (!keep_prepare(k, t.fd[i])) {
			sock_put(t.s[i]);
			continue;
		}
		ex.n++;
	}
	/* Then hold them, in a second pass: keep_prepare may demote, which
	 * takes epoll sets' locks, never with a sock mutex held here. */
	{
		int kept = 0;

		for (int j = 0; j < ex.n; j++) {
			if (keep_lock(&ex.k[j]))
				ex.k[kept++] = ex.k[j];
			else
				sock_put(ex.k[j].s);
		}
		ex.n = kept;
	}
	/* A sock with more fds than fit: the rest would go unknown. */
	for (int j = 0; j < ex.n; j++) {
		int more = 0;

		for (int i = 0; i < t.n; i++)
			more += t.s[i] == ex.k[j].s;
		if (more > KEEP_FDS) {
			sock_exec_undo();
			sock_demote_inherited();
			errno = saved;
			return NULL;
		}
	}
	if (!ex.n) {
		pthread_mutex_unlock(&exec_mu);
		errno = saved;
		return NULL;
	}
	ex.env = describe();
	ex.envp = ex.env ? env_with(envp, ex.env) : NULL;
	if (!ex.envp) {
		sock_exec_undo();
		sock_demote_inherited();
		errno = saved;
		return NULL;
	}
	for (int i = 0; i < ex.n; i++) {
		struct kept *k = &ex.k[i];

		set_cloexec(k->seg, false);
		set_cloexec(k->s->ch.efd[0], false);
		set_cloexec(k->s->ch.efd[1], false);
		set_cloexec(note_fd_of(k->s), false);
	}
	ubs_dbg("exec of %s keeps %d UB connection(s)", image, ex.n);
	errno = saved;
	return ex.envp;
}

/* For execvp and friends: the file the exec will run. */
char **sock_exec_prepare_file(const char *file, char *const envp[])
{
	char path[4096];

	return sock_exec_prepare(path_search(file, path, sizeof(path)) ?
				 path : NULL, envp);
}

/* ------------------------------------------------------------ new image */

/* Is fd what /proc says it should be (link text starts with want)? */
static bool fd_is(int fd, const char *want)
{
	char path[64], link[128];
	ssize_t n;

	if (fd < 0)
		return false;
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	n = readlink(path, link, sizeof(link) - 1);
	if (n <= 0)
		return false;
	link[n] = '\0';
	return !strncmp(link, want, strlen(want));
}

/* Is fd the TCP socket with inode ino, not tracked yet? */
static bool fd_is_sock(int fd, unsigned long long ino)
{
	struct stat st;
	int type = 0, proto = 0;
	socklen_t l1 = sizeof(type), l2 = sizeof(proto);

	return fd >= 0 && fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode) &&
		(unsigned long long)st.st_ino == ino && !sock_slot_used(fd) &&
		ubs_real.getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &l1) == 0 &&
		type == SOCK_STREAM &&
		ubs_real.getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &proto, &l2) == 0 &&
		proto == IPPROTO_TCP;
}

static int timeo_ms(int fd, int name)
{
	struct timeval tv = { 0, 0 };
	socklen_t l = sizeof(tv);
	long ms;

	if (ubs_real.getsockopt(fd, SOL_SOCKET, name, &tv, &l) < 0)
		return -1;
	ms = tv.tv_sec * 1000 + (tv.tv_usec + 999) / 1000;
	return ms <= 0 ? -1 : ms > INT32_MAX ? INT32_MAX : (int)ms;
}

/* This side's notification page in the new image, from its inherited fd
 * (checked: a sealed note memfd), woken through the doorbell own; the
 * same page for every entry that names the same fd.  NULL if refused. */
static struct ubt_note *note_adopt(int fd, int own)
{
	static struct { int fd; struct ubt_note *n; } seen[8];
	static int nseen;
	struct ubt_note *n;

	for (int i = 0; i < nseen; i++)
		if (seen[i].fd == fd)
			return seen[i].n;
	if (nseen == 8 || !fd_is(fd, "/memfd:ubs-note"))
		return NULL;
	n = calloc(1, sizeof(*n));
	if (!n || ubt_note_map(n, fd, own) < 0) {
		free(n);
		return NULL;
	}
	ubs_fd_adopt(fd);               /* kept: ubsd gets it again */
	seen[nseen].fd = fd;
	seen[nseen++].n = n;
	return n;
}

/* One entry of the description (see describe()). */
static void adopt_one(char *e)
{
	unsigned long long ino, segid, ownid, peerid;
	long long spin;
	char fdl[64], *p, *save;
	int fds[KEEP_FDS], nfd = 0, seg, side, st, own, peer, note, slot, r;
	struct ubt_note *own_note, *peer_note;
	struct ubt_board *board = NULL;
	unsigned fl;
	struct sock *s;
	bool mapped = false;

	if (sscanf(e, "%llu,%63[0-9.],%d,%llx,%d,%d,%u,%d,%llx,%d,%llx,%lld,%d,%d",
		   &ino, fdl, &seg, &segid, &side, &st, &fl, &own, &ownid,
		   &peer, &peerid, &spin, &note, &slot) != 14) {
		ubs_err("exec: bad entry in " EXEC_ENV ": ignored");
		return;
	}
	for (p = strtok_r(fdl, ".", &save); p && nfd < KEEP_FDS;
	     p = strtok_r(NULL, ".", &save))
		fds[nfd++] = atoi(p);
	s = sock_new(nfd ? fds[0] : -1);
	if (!s)
		return;
	if (!fd_is(seg, slot < 0 ? "/memfd:ubs-chan" : "/memfd:ubs-board") ||
	    (side != 0 && side != 1))
		goto bad;
	if (!fd_is(own, "anon_inode:[eventfd]"))
		own = -1;
	if (!fd_is(peer, "anon_inode:[eventfd]"))
		peer = -1;
	if (slot >= 0) {
		/* A board slot: the board mapped (or found mapped) from the
		 * fd, which it takes. */
		board = ubs_ctl_board_adopt(seg);
		seg = -1;
		r = board ? ubt_board_chan_adopt(board, &s->ch, (uint32_t)slot,
						 side, own, peer) : -EPROTO;
	} else {
		r = ubt_chan_adopt(&s->ch, seg, side, own, peer);
	}
	if (r < 0) {
		ubs_err("exec: inherited channel refused (%s)", strerror(-r));
		goto bad;
	}
	mapped = true;
	if (s->ch.seg.id != segid || ubt_chan_state(&s->ch) != UBT_CHAN_UB ||
	    ubt_chan_own_db(&s->ch) != ownid ||
	    ubt_chan_peer_db(&s->ch) != peerid || peer < 0 || own < 0 ||
	    (st != SK_UB && st != SK_DRAIN) ||
	    atomic_load(ubt_chan_demote_word(&s->ch, side)))
		goto bad;
	if (!nfd || ubs_config.tcp_only)  /* a seccomp filter: TCP */
		goto bad;
	own_note = note_adopt(note, own);
	if (!own_note)
		goto bad;
	for (int i = 0; i < nfd; i++)
		if (!fd_is_sock(fds[i], ino))
			goto bad;
	/* Checked: take it back. */
	ubt_chan_reclaim_locks(&s->ch);
	if (seg >= 0)
		ubs_real.close(seg);    /* the mapping is all we need */
	s->ch.seg.fd = -1;
	if (board) {
		s->board = board;
		s->board_slot = slot;
		s->board_posted = true;
		s->board_counted = true;        /* counted below, once */
	}
	ubs_fd_adopt(own);
	if (fl & KF_PROCESS_DB)
		ubs_ctl_doorbell_adopt(own, ownid, own_note);
	r = sock_peer_db_adopt(peerid, peer);
	if (r < 0)
		goto bad_late;
	if (r != peer)
		ubt_chan_set_peer_efd(&s->ch, r);
	else
		ubs_fd_adopt(peer);
	s->peer_db = peerid;
	/* Where each side posts its ready endpoints: ours, taken back, and
	 * the peer's, asked of ubsd again (the old image kept only its
	 * mapping).  Without the peer's page the peer's waits would miss
	 * this side's changes: demote. */
	s->own_note = own_note;
	peer_note = sock_peer_db_note(peerid);
	if (!peer_note)
		goto bad_late;
	if (side == 0)
		ubt_chan_set_notes(&s->ch, own_note, peer_note);
	else
		ubt_chan_set_notes(&s->ch, peer_note, own_note);
	s->resent = fl & KF_RESENT;
	s->shut_rd = fl & KF_SHUT_RD;
	s->shut_wr = fl & KF_SHUT_WR;
	s->spin_ns = spin < 0 ? 0 : spin;
	s->nonblock = ubs_real.fcntl(fds[0], F_GETFL) & O_NONBLOCK;
	s->rcvtimeo_ms = timeo_ms(fds[0], SO_RCVTIMEO);
	s->sndtimeo_ms = timeo_ms(fds[0], SO_SNDTIMEO);
	sock_bind_chan(s);
	atomic_store(&s->state, st);
	for (int i = 0; i < nfd; i++)
		sock_install(fds[i], s);
	sock_count_ub(s, fds[0], side);
	ubs_dbg("fd %d: UB connection kept across exec", fds[0]);
	return;
bad_late:
	/* Our side's fds are taken already: demote, ringing the peer. */
	ubt_chan_demote(&s->ch);
	ubt_chan_close(&s->ch);
	free(s);
	return;
bad:
	/* The peer may still be on the rings: a channel we could map goes
	 * back to TCP (the peer re-sends what we never read and drains what
	 * we wrote); otherwise the socket is left alone, plain TCP. */
	ubs_err("exec: an inherited UB connection could not be taken back: "
		"%s", mapped ? "demoted to TCP" : "left to TCP");
	if (mapped) {
		if (ubt_chan_state(&s->ch) == UBT_CHAN_UB)
			ubt_chan_demote(&s->ch);
		s->ch.seg.fd = -1;
		ubt_chan_close(&s->ch);
		if (seg >= 0)
			ubs_real.close(seg);
	}
	free(s);
}

/* At init of a new image: take back the connections the old one kept. */
void sock_exec_adopt(void)
{
	const char *v = getenv(EXEC_ENV);
	char *copy, *save, *e;

	exec_pid_refresh();
	pthread_atfork(NULL, NULL, exec_pid_refresh);
	if (!v)
		return;
	copy = strdup(v);
	unsetenv(EXEC_ENV);
	if (!copy)
		return;
	/* A secure image trusts no such thing (never kept for one). */
	if (!getauxval(AT_SECURE) && !ubs_config.disabled &&
	    !strncmp(copy, EXEC_ENV_VER ";", 2)) {
		ubs_guard_enter();
		for (e = strtok_r(copy + 2, ";", &save); e;
		     e = strtok_r(NULL, ";", &save))
			adopt_one(e);
		ubs_guard_exit();
	}
	free(copy);
}
