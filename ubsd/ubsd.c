/* SPDX-License-Identifier: MIT */
/*
 * ubsd.c - the UBS daemon: run directory, pid/lock file, control socket,
 * sessions, the service policy table (from ubs.conf, reloaded on SIGHUP,
 * changed at run time by ubsctl) published in the shared policy page.
 *
 * One thread, one epoll set holding the listening socket, a signalfd and
 * every client connection.  Each connection has a bounded input buffer
 * (one header plus the largest body) and a bounded output queue; reads and
 * writes never block, so a slow or hostile client cannot stall the others.
 * A malformed message closes its connection with a logged reason.  A
 * session (HELLO) lives exactly as long as its connection.
 *
 * Replies that carry fds (POLICY_FD, CHANNEL, BOARD, ...) are not queued: the queue
 * is flushed, then the reply goes out at once with sendmsg; if the socket
 * cannot take it (EAGAIN) the client is dropped, as for a full queue.
 *
 * Requests that carry fds (LISTEN, UNLISTEN, PUBLISH, REQUEST: see
 * ctl_fd_count) are read with recvmsg; received fds queue on the
 * connection (at most CTL_MAX_FDS) and each message takes its count in
 * order.  A message whose fds are missing when its header is complete, a
 * connection holding fds no message claims, or too many fds drop the
 * client.  Every fd the daemon takes is verified by what the kernel says
 * about it (socket type, protocol, state, addresses, netns cookie).
 *
 * Rendezvous: rendezvous.c decides; this file feeds it the kernel's view
 * of passed sockets, with the proof bits a cross-namespace pair needs
 * (ns_proof: the socket's addresses against the local addresses of its
 * namespace, read from /proc/PID/net of a process proven to be in it and
 * cached per namespace), and keeps the channel fds of each unmatched
 * publication (struct chan) until they are handed to the matching client,
 * withdrawn as stale, or their session ends.  A request that finds no
 * publication is told TCP at once when no listener can have accepted its
 * connection: rendezvous.c decides, asking netns_local which addresses
 * are local where (the same per-namespace cache; a listener's namespace
 * is read through the inode learned at LISTEN, lns).  Pending requests
 * are answered from the epoll_wait timeout (rv_next_deadline).  The
 * listeners are also published in the policy page (publish_listeners),
 * so a preloaded client can tell on connect, without a syscall, whether
 * asking for a channel is worth it, and, through the board each
 * listener carries (one per uid, made here and handed to that uid's
 * sessions: BOARD), whether it may meet the server there without us.
 *
 * A connection closed while another is being served is only unlinked
 * (graveyard) and freed after the epoll batch, so no event of the batch
 * points at freed memory.
 *
 * Logs go to stderr with -f, to syslog (facility daemon) otherwise.
 */
#include <sys/epoll.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/queue.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "conf.h"
#include "ctl_proto.h"
#include "policy.h"
#include "pool.h"
#include "rendezvous.h"
#include "verbs_reg.h"
#include "ubt.h"

#ifndef SO_NETNS_COOKIE
#define SO_NETNS_COOKIE 71
#endif
#ifndef SIOCGSKNS
#define SIOCGSKNS 0x894C
#endif

#define IN_MAX   (sizeof(struct ctl_hdr) + CTL_MAX_BODY)
#define OUT_MAX  (256u * 1024u)         /* queued reply bytes per client */
#define MAX_EVENTS 64

/* What an epoll event points at. */
enum ev_kind { EV_LISTEN, EV_SIGNAL, EV_CONN, EV_EARLY };

struct ev_src {
	enum ev_kind kind;
	int fd;
};

struct conn;

#define DB_PEERS 64     /* recent channel peers remembered per session */

struct session {
	TAILQ_ENTRY(session) entry;
	uint64_t id;                    /* rendezvous session id, never 0 */
	struct conn *conn;
	pid_t pid;                      /* from SO_PEERCRED */
	uid_t uid;
	uint64_t netns;                 /* inode of /proc/<pid>/ns/net, or 0 */
	uint64_t started_ms;            /* monotonic */
	bool early;                     /* CTL_HELLO_EARLY_REQUEST */
	char service[CTL_NAME_MAX];
	int db_fd;                      /* its process doorbell, or -1 */
	int note_fd;                    /* its notification page, or -1 */
	uint64_t db_id;
	uint64_t db_peers[DB_PEERS];    /* sessions given a channel with this
					 * one: may have its doorbell */
	unsigned db_next;               /* next db_peers slot to overwrite */
};

#define ORPHAN_MIN_MS 5 /* an offer nobody asked for lives this long at
			 * least, and until the input is drained */
#define STATS_KEEP_DEAD 64   /* stats pages of exited processes kept */
#define STATS_REAP_MS 10000  /* after a session ends: reap dead pages */
#define LISTEN_GRACE_MS 3000 /* after a restart: listeners coming back */
#define CONN_MAX_REQS 128 /* pending REQUESTs per connection: threads,
			   * and connects sent ahead of their first use */

struct conn {
	struct ev_src src;              /* first: epoll data.ptr */
	TAILQ_ENTRY(conn) entry;
	pid_t pid;
	uid_t uid;
	gid_t gid;
	struct session *sess;           /* NULL until HELLO */
	uint32_t events;                /* current epoll mask */
	size_t inlen;
	unsigned char in[IN_MAX];
	unsigned char *out;             /* queued replies, out[outoff..outlen) */
	size_t outlen, outoff, outcap;
	int fds[CTL_MAX_FDS];           /* received, not yet claimed */
	int nfds;
	bool dead;                      /* closed, in the graveyard */
	struct {                        /* REQUESTs awaiting their answer */
		uint64_t id;            /* rv request id, 0 = free slot */
		uint32_t seq;
	} reqs[CONN_MAX_REQS];
	uint32_t nearly;                /* of them not connected yet */
};

/*
 * A REQUEST whose socket was not connected yet when it came (a client
 * asks before connect(), so that its request is here before the server
 * can accept).  It becomes a request (rv_request) when the connect
 * completes (EPOLLOUT on the daemon's copy of the socket) or when a
 * publication comes, whichever is first; it is answered TCP at its
 * deadline.  Freed after the epoll batch (its event may be in it).
 */
struct early {
	struct ev_src src;              /* first: epoll data.ptr; the socket */
	TAILQ_ENTRY(early) entry;
	struct conn *c;
	uint32_t seq;
	uint64_t deadline;              /* ms */
	bool dead;
};

/* The channel fds of one unmatched publication. */
struct chan {
	TAILQ_ENTRY(chan) entry;
	uint64_t id;
	uint64_t session;
	uint32_t seq;                   /* of the PUBLISH */
	int fd[1];                      /* segment */
	uint64_t orphan_ms;             /* when it was marked an orphan */
	bool orphan;                    /* unmatched from an early session:
					 * withdrawn once input is drained */
};

static TAILQ_HEAD(, session) sessions = TAILQ_HEAD_INITIALIZER(sessions);
static TAILQ_HEAD(, conn) conns = TAILQ_HEAD_INITIALIZER(conns);
static TAILQ_HEAD(, conn) graveyard = TAILQ_HEAD_INITIALIZER(graveyard);
static TAILQ_HEAD(, chan) chans = TAILQ_HEAD_INITIALIZER(chans);
static TAILQ_HEAD(, early) earlies = TAILQ_HEAD_INITIALIZER(earlies);
static TAILQ_HEAD(, early) early_dead = TAILQ_HEAD_INITIALIZER(early_dead);
static uint32_t norphans;               /* chans with orphan set */
static uint64_t early_gen;              /* earlies dropped by conn_close */

static void early_try_all(void);

/* Rendezvous capacities: preallocated once.  Every listener fits in the
 * policy page.  Cross-namespace matching stays off until the configuration
 * says otherwise (apply_daemon_conf). */
static const struct rv_limits rv_lim = {
	.listeners = UBS_POLICY_MAX_LST, .holders = 8192, .pubs = 4096, .reqs = 4096,
	.intents = 1024, .stale_ms = 10000, .flags = RV_NO_CROSS_NETNS,
};

/*
 * The local addresses of the network namespaces seen in passed sockets,
 * for the cross-namespace proof (ns_proof), by the namespace id
 * sock_facts reads (the SO_NETNS_COOKIE): read from /proc/PID/net of a
 * process proven to be in that namespace, kept NSA_TTL_MS.  A slot is
 * reused least recently used first.
 */
#define NSA_SLOTS   64
#define NSA_TTL_MS  1000
#define NSA_FILE_MAX (4u << 20)         /* bigger /proc files: no proof */

struct nsa {
	uint64_t id;                    /* sock_facts netns; 0 = free */
	uint64_t ino;                   /* its /proc/PID/ns/net inode, 0 =
					 * not learned yet */
	uint64_t read_ms;               /* nets read at; 0 = none valid */
	uint64_t fail_ms;               /* last failure; retried after TTL */
	uint64_t fail_nosock_ms;        /* the same, reading without a socket
					 * of the namespace (nsa_get) */
	uint64_t used_ms;
	struct rv_net *nets;
	size_t n, cap;
};

static struct nsa nsa[NSA_SLOTS];

/*
 * The namespace inode of each namespace that has listeners, by the
 * namespace id of its listeners (SO_NETNS_COOKIE), learned at LISTEN from
 * the listening socket (sock_ns_ino): what nsa_get needs to read that
 * namespace's addresses when a request asks whether one of its wildcard
 * listeners could have taken a connection (netns_local), with no socket
 * of it at hand.  An entry goes when its namespace has no listener left
 * (lns_gc); there are never more than listeners.
 */
static struct {
	uint64_t id, ino;
} lns[UBS_POLICY_MAX_LST];
static uint32_t nlns;

static struct {
	bool foreground;
	int verbose;
	int epfd;
	struct ev_src listen, sig;
	char sock_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	char pid_path[PATH_MAX];
	char stats_path[PATH_MAX];      /* RUN_DIR/stats, "" when unusable */
	uint64_t stats_reap_ms;         /* last reap; 0: none due */
	uint64_t start_ms;
	uint64_t reconnects_ms;         /* first HELLO of a returning client */
	uint32_t nsessions;
	uint64_t requests;
	uint64_t rejected;
	const char *conf_path;
	bool conf_given;                /* -c: the file must exist */
	struct ubs_conf *conf;          /* current table, as published */
	struct ubt_seg page;            /* the policy page */
	struct rv_table rv;
	bool rv_ready;
	uint64_t next_session_id, next_chan_id;
} d = { .epfd = -1, .listen = { EV_LISTEN, -1 }, .sig = { EV_SIGNAL, -1 },
	.conf_path = CONF_DEFAULT_PATH, .page = { .fd = -1 } };

/* The listener table as last published in the page, and scratch space to
 * build the next one in. */
static struct {
	struct rv_listener_info info[UBS_POLICY_MAX_LST];
	struct ubs_lst_entry pub[UBS_POLICY_MAX_LST], next[UBS_POLICY_MAX_LST];
	uint32_t npub;
} lst;

static void logmsg(int prio, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* Log to stderr in the foreground, else to syslog.  LOG_DEBUG needs -d. */
static void logmsg(int prio, const char *fmt, ...)
{
	va_list ap;

	if (prio == LOG_DEBUG && !d.verbose)
		return;
	va_start(ap, fmt);
	if (d.foreground) {
		/* One write per line (stderr is unbuffered): lines of -d
		 * come per request and must stay cheap. */
		char line[1024];
		int n = vsnprintf(line + 6, sizeof(line) - 7, fmt, ap);

		if (n >= 0) {
			if ((size_t)n > sizeof(line) - 8)
				n = (int)(sizeof(line) - 8);
			memcpy(line, "ubsd: ", 6);
			line[6 + n] = '\n';
			fwrite(line, 1, (size_t)n + 7, stderr);
		}
	} else {
		vsyslog(prio, fmt, ap);
	}
	va_end(ap);
}

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* mkdir -p with mode 0755 for every missing component.  Returns -errno. */
static int make_dirs(const char *path)
{
	char buf[PATH_MAX];
	size_t n = strlen(path);

	if (n == 0 || n >= sizeof(buf))
		return -ENAMETOOLONG;
	memcpy(buf, path, n + 1);
	for (char *p = buf + 1; ; p++) {
		if (*p != '/' && *p != '\0')
			continue;
		char c = *p;
		*p = '\0';
		if (mkdir(buf, 0755) < 0 && errno != EEXIST)
			return -errno;
		*p = c;
		if (c == '\0')
			break;
	}
	return 0;
}

/*
 * RUN_DIR/stats, where preloaded processes publish their stats pages
 * (preload/stats.c: only when it exists): created with mode 01777, as
 * /tmp, so that a process of any uid publishes its own page and none
 * removes or replaces another's (sticky bit).  One that exists already
 * is left as it is: another mode, or not a directory, is only logged.
 * Never fatal: without it the stats stay private to each process.
 */
static void stats_dir_init(const char *run_dir)
{
	char path[PATH_MAX];
	struct stat st;
	int fd;

	if (snprintf(path, sizeof(path), "%s/%s", run_dir, CTL_STATS_NAME) >=
	    (int)sizeof(path)) {
		logmsg(LOG_WARNING, "%s: path too long for %s/; stats pages "
		       "stay private", run_dir, CTL_STATS_NAME);
		return;
	}
	if (mkdir(path, 01777) == 0) {
		/* mkdir applied the umask: set the mode through the
		 * directory itself (never through a symlink put there). */
		fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW |
			  O_CLOEXEC);
		if (fd < 0 || fchmod(fd, 01777) < 0)
			logmsg(LOG_WARNING, "%s: cannot set mode 1777: %s",
			       path, strerror(errno));
		else
			logmsg(LOG_INFO, "%s: created, mode 1777", path);
		if (fd >= 0)
			close(fd);
		memcpy(d.stats_path, path, sizeof(path));
		return;
	}
	if (errno != EEXIST) {
		logmsg(LOG_WARNING, "%s: %s; stats pages stay private", path,
		       strerror(errno));
		return;
	}
	if (lstat(path, &st) < 0)
		logmsg(LOG_WARNING, "%s: %s", path, strerror(errno));
	else if (!S_ISDIR(st.st_mode))
		logmsg(LOG_WARNING, "%s: exists and is not a directory; left "
		       "as it is (stats pages stay private)", path);
	else if ((st.st_mode & 07777) != 01777)
		logmsg(LOG_WARNING, "%s: exists with mode %04o, not 1777; "
		       "left as it is", path, (unsigned)(st.st_mode & 07777));
	if (S_ISDIR(st.st_mode))
		memcpy(d.stats_path, path, sizeof(path));
}

/* A stats page name: the decimal pid, or .PID.tmp for one being built.
 * Returns the pid, or 0 for any other name. */
static pid_t stats_name_pid(const char *name)
{
	unsigned long v = 0;
	const char *p = name;
	bool tmp = *p == '.';

	if (tmp)
		p++;
	if (!isdigit((unsigned char)*p))
		return 0;
	for (; isdigit((unsigned char)*p); p++) {
		v = v * 10 + (unsigned long)(*p - '0');
		if (v > INT_MAX)
			return 0;
	}
	if (tmp ? strcmp(p, ".tmp") != 0 : *p != '\0')
		return 0;
	return (pid_t)v;
}

struct dead_page {
	char name[24];
	int64_t mtime_ns;
};

static int dead_page_newer_first(const void *a, const void *b)
{
	const struct dead_page *x = a, *y = b;

	return x->mtime_ns < y->mtime_ns ? 1 : x->mtime_ns > y->mtime_ns ? -1
	       : 0;
}

/*
 * Remove the stats pages of exited processes beyond the newest
 * STATS_KEEP_DEAD (so `ubsctl --all stats` still shows what just ran,
 * and a host that starts preloaded programs all day does not fill its
 * run directory), and pages left half-built by a process that died.
 * Only regular files named as pages; never a live pid's.  Returns how
 * many were removed.
 */
static int stats_reap(void)
{
	struct dead_page *dead = NULL;
	size_t n = 0, cap = 0;
	struct dirent *e;
	int removed = 0;
	DIR *dir;

	if (!d.stats_path[0] || !(dir = opendir(d.stats_path)))
		return 0;
	while ((e = readdir(dir))) {
		pid_t pid = stats_name_pid(e->d_name);
		struct stat st;

		if (pid <= 0 || strlen(e->d_name) >= sizeof(dead->name) ||
		    (kill(pid, 0) == 0 || errno != ESRCH) ||
		    fstatat(dirfd(dir), e->d_name, &st,
			    AT_SYMLINK_NOFOLLOW) < 0 || !S_ISREG(st.st_mode))
			continue;
		if (e->d_name[0] == '.') {
			removed += unlinkat(dirfd(dir), e->d_name, 0) == 0;
			continue;
		}
		if (n == cap) {
			size_t nc = cap ? cap * 2 : 256;
			struct dead_page *nd = realloc(dead, nc * sizeof(*nd));

			if (!nd)
				break;
			dead = nd;
			cap = nc;
		}
		memcpy(dead[n].name, e->d_name, strlen(e->d_name) + 1);
		dead[n].mtime_ns = (int64_t)st.st_mtim.tv_sec * 1000000000 +
				   st.st_mtim.tv_nsec;
		n++;
	}
	if (n > STATS_KEEP_DEAD) {
		qsort(dead, n, sizeof(*dead), dead_page_newer_first);
		for (size_t i = STATS_KEEP_DEAD; i < n; i++)
			removed += unlinkat(dirfd(dir), dead[i].name, 0) == 0;
	}
	closedir(dir);
	free(dead);
	if (removed)
		logmsg(LOG_INFO, "%s: removed %d pages of exited processes",
		       d.stats_path, removed);
	return removed;
}

/*
 * Open and lock the pid file.  Returns its fd, -EWOULDBLOCK when another
 * ubsd holds it (*owner then gets its pid, 0 if unreadable), or -errno.
 */
static int pidfile_lock(const char *path, long *owner)
{
	char buf[32];
	ssize_t n;
	int fd, err;

	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	if (flock(fd, LOCK_EX | LOCK_NB) == 0)
		return fd;
	err = errno;
	*owner = 0;
	n = pread(fd, buf, sizeof(buf) - 1, 0);
	if (n > 0) {
		buf[n] = '\0';
		*owner = strtol(buf, NULL, 10);
	}
	close(fd);
	return err == EWOULDBLOCK ? -EWOULDBLOCK : -err;
}

/* Write our pid into the locked pid file.  Returns -errno. */
static int pidfile_write(int fd)
{
	char buf[32];
	int n = snprintf(buf, sizeof(buf), "%ld\n", (long)getpid());

	if (ftruncate(fd, 0) < 0 || pwrite(fd, buf, n, 0) != n)
		return -errno;
	return 0;
}

/*
 * control_init: unlink a stale socket (safe: we hold the pid lock), bind,
 * chmod 0666 (every request is authorized by what it proves, not by who
 * connects), listen; non-blocking and close-on-exec.  Returns fd or -errno.
 */
static int control_init(const char *path)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	int fd, err;

	if (strlen(path) >= sizeof(sun.sun_path))
		return -ENAMETOOLONG;
	strcpy(sun.sun_path, path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (unlink(path) < 0 && errno != ENOENT)
		goto fail;
	if (bind(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0)
		goto fail;
	if (chmod(path, 0666) < 0 || listen(fd, 128) < 0) {
		err = errno;
		unlink(path);
		close(fd);
		return -err;
	}
	return fd;
fail:
	err = errno;
	close(fd);
	return -err;
}

/* Classic double fork: the daemon is no session leader, has no tty. */
static int daemonize(void)
{
	pid_t pid;
	int fd;

	pid = fork();
	if (pid < 0)
		return -errno;
	if (pid > 0)
		_exit(0);
	if (setsid() < 0)
		return -errno;
	pid = fork();
	if (pid < 0)
		return -errno;
	if (pid > 0)
		_exit(0);
	if (chdir("/") < 0)
		return -errno;
	fd = open("/dev/null", O_RDWR);
	if (fd < 0)
		return -errno;
	dup2(fd, STDIN_FILENO);
	dup2(fd, STDOUT_FILENO);
	dup2(fd, STDERR_FILENO);
	if (fd > STDERR_FILENO)
		close(fd);
	return 0;
}

static int ep_mod(int op, int fd, uint32_t events, void *ptr)
{
	struct epoll_event ev = { .events = events, .data.ptr = ptr };

	return epoll_ctl(d.epfd, op, fd, &ev) < 0 ? -errno : 0;
}

static void chan_free(struct chan *ch)
{
	if (ch->orphan)
		norphans--;
	TAILQ_REMOVE(&chans, ch, entry);
	close(ch->fd[0]);
	free(ch);
}

static struct chan *chan_find(uint64_t id)
{
	struct chan *ch;

	TAILQ_FOREACH(ch, &chans, entry)
		if (ch->id == id)
			return ch;
	return NULL;
}

static int publish_listeners(void);

/* Forget the namespace inodes of namespaces left without listeners (the
 * n listeners of info). */
static void lns_gc(const struct rv_listener_info *info, size_t n)
{
	uint32_t i = 0;

	while (i < nlns) {
		size_t k;

		for (k = 0; k < n && info[k].netns != lns[i].id; k++)
			;
		if (k == n)
			lns[i] = lns[--nlns];
		else
			i++;
	}
}

/* The namespace inode lns knows for namespace id, 0 if none. */
static uint64_t lns_ino(uint64_t id)
{
	for (uint32_t i = 0; i < nlns; i++)
		if (lns[i].id == id)
			return lns[i].ino;
	return 0;
}

static void board_session_end(const struct session *s);

static void session_end(struct session *s)
{
	struct chan *ch, *next;
	int gone = d.rv_ready ? rv_session_gone(&d.rv, s->id) : 0;

	board_session_end(s);
	for (ch = TAILQ_FIRST(&chans); ch; ch = next) {
		next = TAILQ_NEXT(ch, entry);
		if (ch->session == s->id)
			chan_free(ch);
	}
	/* memory pool */
	pool_session_end(s->id);

	/* verbs registry */
	vreg_session_gone(s->id);

	if (s->db_fd >= 0)
		close(s->db_fd);
	if (s->note_fd >= 0)
		close(s->note_fd);

	logmsg(LOG_INFO, "session end: pid %ld service \"%s\"%s",
	       (long)s->pid, s->service, gone > 0 ? ", listeners gone" : "");
	if (gone > 0)
		publish_listeners();
	TAILQ_REMOVE(&sessions, s, entry);
	d.nsessions--;
	free(s);
	if (!d.stats_reap_ms)           /* its page may have to go, later */
		d.stats_reap_ms = now_ms() + STATS_REAP_MS;
}

static void close_fds(int *fds, int n)
{
	for (int i = 0; i < n; i++)
		if (fds[i] >= 0)
			close(fds[i]);
}

/* Forget an early request: out of epoll, its socket closed (unless
 * handed on: src.fd -1), freed after the batch. */
static void early_free(struct early *e)
{
	if (e->src.fd >= 0) {
		epoll_ctl(d.epfd, EPOLL_CTL_DEL, e->src.fd, NULL);
		close(e->src.fd);
		e->src.fd = -1;
	}
	e->c->nearly--;
	e->dead = true;
	TAILQ_REMOVE(&earlies, e, entry);
	TAILQ_INSERT_TAIL(&early_dead, e, entry);
}

/*
 * Close a connection, ending its session; reason != NULL counts a reject.
 * c itself is freed by graveyard_free after the epoll batch.
 */
static void conn_close(struct conn *c, const char *reason)
{
	if (c->dead)
		return;
	if (reason) {
		d.rejected++;
		logmsg(LOG_WARNING, "client pid %ld uid %ld dropped: %s",
		       (long)c->pid, (long)c->uid, reason);
	} else {
		logmsg(LOG_DEBUG, "client pid %ld closed", (long)c->pid);
	}
	if (c->sess)
		session_end(c->sess);
	c->sess = NULL;
	if (c->nearly) {
		struct early *e, *next;

		for (e = TAILQ_FIRST(&earlies); e; e = next) {
			next = TAILQ_NEXT(e, entry);
			if (e->c == c)
				early_free(e);
		}
		early_gen++;
	}
	close_fds(c->fds, c->nfds);
	c->nfds = 0;
	epoll_ctl(d.epfd, EPOLL_CTL_DEL, c->src.fd, NULL);
	close(c->src.fd);
	c->src.fd = -1;
	c->dead = true;
	TAILQ_REMOVE(&conns, c, entry);
	TAILQ_INSERT_TAIL(&graveyard, c, entry);
}

static void graveyard_free(void)
{
	struct early *e;
	struct conn *c;

	while ((e = TAILQ_FIRST(&early_dead))) {
		TAILQ_REMOVE(&early_dead, e, entry);
		free(e);
	}
	while ((c = TAILQ_FIRST(&graveyard))) {
		TAILQ_REMOVE(&graveyard, c, entry);
		free(c->out);
		free(c);
	}
}

/* Write what is queued.  Returns 0 (maybe partly written) or -errno. */
static int conn_flush(struct conn *c)
{
	while (c->outoff < c->outlen) {
		ssize_t n = send(c->src.fd, c->out + c->outoff,
				 c->outlen - c->outoff, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN)
				break;
			return -errno;
		}
		c->outoff += (size_t)n;
	}
	if (c->outoff == c->outlen)
		c->outoff = c->outlen = 0;
	uint32_t want = EPOLLIN | (c->outlen ? EPOLLOUT : 0);
	if (want != c->events) {
		int err = ep_mod(EPOLL_CTL_MOD, c->src.fd, want, c);
		if (err)
			return err;
		c->events = want;
	}
	return 0;
}

/*
 * Queue need bytes (one or more whole messages, or the unsent tail of
 * one) for c.  Returns 0, or -ENOBUFS when the client's queue would
 * exceed OUT_MAX (the caller drops it).
 */
static int conn_queue(struct conn *c, const void *data, size_t need)
{

	if (c->outoff > 0 && c->outlen + need > c->outcap) {
		memmove(c->out, c->out + c->outoff, c->outlen - c->outoff);
		c->outlen -= c->outoff;
		c->outoff = 0;
	}
	if (c->outlen + need > OUT_MAX)
		return -ENOBUFS;
	if (c->outlen + need > c->outcap) {
		size_t cap = c->outcap ? c->outcap : 1024;
		while (cap < c->outlen + need)
			cap *= 2;
		if (cap > OUT_MAX)
			cap = OUT_MAX;
		unsigned char *p = realloc(c->out, cap);
		if (!p)
			return -ENOMEM;
		c->out = p;
		c->outcap = cap;
	}
	memcpy(c->out + c->outlen, data, need);
	c->outlen += need;
	return 0;
}

/* Queue one message (header + body) for c; as conn_queue. */
static int conn_send(struct conn *c, uint16_t type, uint32_t seq,
		     const void *body, uint32_t len)
{
	unsigned char buf[sizeof(struct ctl_hdr) + CTL_MAX_BODY];
	struct ctl_hdr h;

	ctl_fill(&h, type, len, seq);
	memcpy(buf, &h, sizeof(h));
	if (len)
		memcpy(buf + sizeof(h), body, len);
	return conn_queue(c, buf, sizeof(h) + len);
}

/*
 * Send one message with nfds fds attached, now: what is queued goes first (the
 * client must see replies in order), then one sendmsg.  Returns 0 (a
 * partly sent message has its tail queued: the fd went with its first
 * byte), -EAGAIN when the socket cannot take it now (the caller drops the
 * client), or -errno.
 */
static int conn_send_fds(struct conn *c, uint16_t type, uint32_t seq,
			 const void *body, uint32_t len, const int *fds,
			 int nfds)
{
	unsigned char buf[sizeof(struct ctl_hdr) + CTL_MAX_BODY];
	struct ctl_hdr h;
	size_t need = sizeof(h) + len;
	int n;

	while (c->outoff < c->outlen) {
		ssize_t w = send(c->src.fd, c->out + c->outoff,
				 c->outlen - c->outoff, MSG_NOSIGNAL);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		c->outoff += (size_t)w;
	}
	c->outoff = c->outlen = 0;
	ctl_fill(&h, type, len, seq);
	memcpy(buf, &h, sizeof(h));
	memcpy(buf + sizeof(h), body, len);
	n = ubt_send_fds(c->src.fd, fds, nfds, buf, need);
	if (n < 0)
		return n;
	return (size_t)n < need ? conn_queue(c, buf + n, need - (size_t)n) : 0;
}

/* Inode of /proc/<pid>/ns/net, 0 when it cannot be read. */
static uint64_t netns_of(pid_t pid)
{
	char path[64];
	struct stat st;

	snprintf(path, sizeof(path), "/proc/%ld/ns/net", (long)pid);
	return stat(path, &st) == 0 ? (uint64_t)st.st_ino : 0;
}

static int do_hello(struct conn *c, const struct ctl_hdr *h,
		    const struct ctl_hello *m)
{
	struct ctl_error e = { .err = EEXIST };
	struct session *s;

	if (c->sess) {
		snprintf(e.msg, sizeof(e.msg), "session already started");
		return conn_send(c, CTL_R_ERROR, h->seq, &e, sizeof(e));
	}
	s = calloc(1, sizeof(*s));
	if (!s) {
		e.err = ENOMEM;
		snprintf(e.msg, sizeof(e.msg), "out of memory");
		return conn_send(c, CTL_R_ERROR, h->seq, &e, sizeof(e));
	}
	s->id = ++d.next_session_id;
	s->db_fd = -1;
	s->note_fd = -1;
	s->conn = c;
	s->pid = c->pid;
	s->uid = c->uid;
	s->netns = netns_of(c->pid);
	s->started_ms = now_ms();
	/* ctl_check proved the NUL is inside the field. */
	memcpy(s->service, m->service, sizeof(s->service));
	TAILQ_INSERT_TAIL(&sessions, s, entry);
	d.nsessions++;
	c->sess = s;
	s->early = (m->flags & CTL_HELLO_EARLY_REQUEST) != 0;
	if ((m->flags & CTL_HELLO_RECONNECT) && !d.reconnects_ms)
		d.reconnects_ms = now_ms();     /* a restart: see do_request */
	logmsg(LOG_INFO, "session start: pid %ld uid %ld service \"%s\" "
	       "netns %llu", (long)s->pid, (long)s->uid, s->service,
	       (unsigned long long)s->netns);
	return conn_send(c, CTL_R_OK, h->seq, NULL, 0);
}

static int do_status(struct conn *c, const struct ctl_hdr *h)
{
	struct ctl_status st = {
		.daemon_pid = (uint32_t)getpid(),
		.sessions = d.nsessions,
		.uptime_ms = now_ms() - d.start_ms,
		.requests = d.requests,
		.rejected = d.rejected,
	};
	int err = conn_send(c, CTL_R_STATUS, h->seq, &st, sizeof(st));

	return err ? err : conn_send(c, CTL_R_END, h->seq, NULL, 0);
}

static int do_sessions(struct conn *c, const struct ctl_hdr *h)
{
	uint64_t now = now_ms();
	struct session *s;
	int err;

	TAILQ_FOREACH(s, &sessions, entry) {
		struct ctl_session m = {
			.pid = (uint32_t)s->pid,
			.uid = (uint32_t)s->uid,
			.netns = s->netns,
			.started_ms = now - s->started_ms,
		};
		memcpy(m.service, s->service, sizeof(m.service));
		err = conn_send(c, CTL_R_SESSION, h->seq, &m, sizeof(m));
		if (err)
			return err;
	}
	return conn_send(c, CTL_R_END, h->seq, NULL, 0);
}

/* Publish d.conf into the policy page (the listener table stays as it
 * is).  Returns -errno. */
static int publish(void)
{
	return pp_publish_ex(&d.page, &d.conf->deflt, d.conf->svc,
			     d.conf->nsvc, d.conf->excl, d.conf->nexcl);
}

/*
 * Publish the rendezvous table's listeners in the policy page, if they
 * differ from what was last published there (a new reference to a known
 * listener changes nothing).  Called after every LISTEN / UNLISTEN and
 * when a session's end made listeners disappear.  Returns -errno (logged:
 * the page then keeps the old table until the next change).
 */
static int publish_listeners(void)
{
	size_t i, n;
	int err;

	if (!d.rv_ready || !d.page.base)
		return 0;
	n = rv_listener_list(&d.rv, lst.info, UBS_POLICY_MAX_LST);
	if (n > UBS_POLICY_MAX_LST)
		n = UBS_POLICY_MAX_LST; /* rv_lim.listeners keeps it in range */
	lns_gc(lst.info, n);
	memset(lst.next, 0, n * sizeof(lst.next[0]));
	for (i = 0; i < n; i++) {
		lst.next[i].family = lst.info[i].addr.family;
		lst.next[i].port = lst.info[i].addr.port;
		lst.next[i].v6only = lst.info[i].v6only;
		memcpy(lst.next[i].addr, lst.info[i].addr.addr,
		       sizeof(lst.next[i].addr));
		lst.next[i].netns = lst.info[i].netns;
		lst.next[i].board = lst.info[i].board;
	}
	if (n == lst.npub &&
	    memcmp(lst.next, lst.pub, n * sizeof(lst.next[0])) == 0)
		return 0;
	err = pp_publish_listeners(&d.page, lst.next, (uint32_t)n);
	if (err) {
		logmsg(LOG_ERR, "policy page: listener table: %s",
		       strerror(-err));
		return err;
	}
	memcpy(lst.pub, lst.next, n * sizeof(lst.next[0]));
	lst.npub = (uint32_t)n;
	logmsg(LOG_DEBUG, "listener table: %zu listeners, generation %llu", n,
	       (unsigned long long)pp_generation(&d.page));
	return 0;
}

static void to_ctl_service(struct ctl_service *m,
			   const struct ubs_svc_policy *p)
{
	memset(m, 0, sizeof(*m));
	memcpy(m->name, p->name, sizeof(m->name));
	m->name[sizeof(m->name) - 1] = '\0';
	m->accel = p->accel;
	m->spin_us = p->spin_us;
	m->ring_kib = p->ring_kib;
	m->mem_quota = p->mem_quota;
	m->mem_pool_min = p->mem_pool_min;
	memcpy(m->mem_sites, p->mem_sites, sizeof(m->mem_sites));
}

static int do_services(struct conn *c, const struct ctl_hdr *h)
{
	struct ctl_service m;
	int err;

	to_ctl_service(&m, &d.conf->deflt);
	m.name[0] = '\0';
	err = conn_send(c, CTL_R_SERVICE, h->seq, &m, sizeof(m));
	for (uint32_t i = 0; !err && i < d.conf->nsvc; i++) {
		to_ctl_service(&m, &d.conf->svc[i]);
		err = conn_send(c, CTL_R_SERVICE, h->seq, &m, sizeof(m));
	}
	return err ? err : conn_send(c, CTL_R_END, h->seq, NULL, 0);
}

static int do_excludes(struct conn *c, const struct ctl_hdr *h)
{
	int err = 0;

	_Static_assert(sizeof(struct ctl_exclude) ==
		       sizeof(struct ubs_excl_rule), "exclude rule layouts");
	for (uint32_t i = 0; !err && i < d.conf->nexcl; i++) {
		const struct ubs_excl_rule *r = &d.conf->excl[i];
		struct ctl_exclude m;

		memset(&m, 0, sizeof(m));
		m.kind = r->kind;
		m.family = r->family;
		m.prefix = r->prefix;
		m.port_lo = r->port_lo;
		m.port_hi = r->port_hi;
		memcpy(m.addr, r->addr, sizeof(m.addr));
		memcpy(m.program, r->program, sizeof(m.program));
		m.program[CTL_NAME_MAX - 1] = '\0';
		err = conn_send(c, CTL_R_EXCLUDE, h->seq, &m, sizeof(m));
	}
	return err ? err : conn_send(c, CTL_R_END, h->seq, NULL, 0);
}

/*
 * Is gid among the supplementary groups of pid, whose effective uid must
 * still be uid (a pid reused by another user proves nothing)?  Reads the
 * Uid: and Groups: lines of /proc/<pid>/status.
 */
static bool proc_in_group(pid_t pid, uid_t uid, gid_t gid)
{
	char path[64], line[4096];
	bool uid_ok = false, member = false;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%ld/status", (long)pid);
	f = fopen(path, "re");
	if (!f)
		return false;
	while (fgets(line, sizeof(line), f)) {
		unsigned long real, eff;

		if (sscanf(line, "Uid: %lu %lu", &real, &eff) == 2) {
			uid_ok = eff == (unsigned long)uid;
		} else if (strncmp(line, "Groups:", 7) == 0) {
			char *p = line + 7, *end;

			for (;;) {
				while (isspace((unsigned char)*p))
					p++;
				if (!isdigit((unsigned char)*p))
					break;
				unsigned long g = strtoul(p, &end, 10);
				if (g == (unsigned long)gid)
					member = true;
				p = end;
			}
		}
	}
	fclose(f);
	return uid_ok && member;
}

/*
 * May c change policy?  Root, or a member (primary group from
 * SO_PEERCRED, or supplementary from /proc) of the configured admin group.
 * Else false with the reason in msg.
 */
static bool may_change_policy(const struct conn *c, char *msg, size_t n)
{
	const struct ubs_conf *cf = d.conf;

	if (c->uid == 0)
		return true;
	if (cf->has_admin_group &&
	    (c->gid == cf->admin_gid ||
	     proc_in_group(c->pid, c->uid, cf->admin_gid)))
		return true;
	if (cf->has_admin_group)
		snprintf(msg, n, "permission denied: uid %ld is neither root "
			 "nor in admin group %.40s", (long)c->uid,
			 cf->admin_group);
	else
		snprintf(msg, n, "permission denied: uid %ld is not root "
			 "(no admin_group configured)", (long)c->uid);
	return false;
}

static int do_service_set(struct conn *c, const struct ctl_hdr *h,
			  const struct ctl_service_set *m)
{
	struct ctl_error e = { .err = EINVAL };
	struct ubs_svc_policy *p, old;
	char msg[sizeof(e.msg)];
	bool created = false;
	int err;

	if (!may_change_policy(c, e.msg, sizeof(e.msg))) {
		e.err = EPERM;
		logmsg(LOG_WARNING, "pid %ld uid %ld: set %s.%s refused: %s",
		       (long)c->pid, (long)c->uid,
		       m->name[0] ? m->name : "(default)", m->key, e.msg);
		goto refuse;
	}
	if (m->name[0] && !conf_valid_name(m->name)) {
		snprintf(e.msg, sizeof(e.msg), "bad service name (1 to %u of "
			 "A-Z a-z 0-9 . _ -)", CTL_NAME_MAX - 1);
		goto refuse;
	}
	p = m->name[0] ? conf_find(d.conf, m->name) : &d.conf->deflt;
	if (!p) {
		/* A service that has not connected yet: from [default]. */
		if (d.conf->nsvc >= UBS_POLICY_MAX_SVC) {
			e.err = ENOSPC;
			snprintf(e.msg, sizeof(e.msg), "too many services "
				 "(at most %u)", UBS_POLICY_MAX_SVC);
			goto refuse;
		}
		p = &d.conf->svc[d.conf->nsvc++];
		*p = d.conf->deflt;
		strcpy(p->name, m->name);
		created = true;
	}
	old = *p;
	err = conf_set_key(p, m->key, m->value, msg, sizeof(msg));
	if (!err) {
		err = publish();
		if (err)
			snprintf(msg, sizeof(msg), "policy page: %s",
				 strerror(-err));
	}
	if (err) {
		*p = old;
		if (created)
			d.conf->nsvc--;
		e.err = err == -ENOENT ? EINVAL : -err;
		memcpy(e.msg, msg, sizeof(e.msg));
		goto refuse;
	}
	logmsg(LOG_INFO, "policy: %s %s = %s (uid %ld pid %ld), "
	       "generation %llu", m->name[0] ? m->name : "(default)", m->key,
	       m->value, (long)c->uid, (long)c->pid,
	       (unsigned long long)pp_generation(&d.page));
	return conn_send(c, CTL_R_OK, h->seq, NULL, 0);
refuse:
	return conn_send(c, CTL_R_ERROR, h->seq, &e, sizeof(e));
}

static int do_policy_fd(struct conn *c, const struct ctl_hdr *h)
{
	struct ctl_policy m = {
		.generation = pp_generation(&d.page),
		.size = d.page.size,
	};

	return conn_send_fds(c, CTL_R_POLICY, h->seq, &m, sizeof(m),
			     &d.page.fd, 1);
}

/* ------------------------------------------------------------ memory pool */

static int send_error(struct conn *c, uint32_t seq, int err,
		      const char *msg);

/* The policy record that governs service name (its own, else default). */
static const struct ubs_svc_policy *svc_policy(const char *name)
{
	const struct ubs_svc_policy *p = conf_find(d.conf, name);

	return p ? p : &d.conf->deflt;
}

/*
 * MEM_LEASE, MEM_RETURN, MEM_CLAIM (all need a session: a lease lives as
 * long as its session) and MEM (the pool, per-service and per-process figures,
 * for ubsctl mem).
 */
static int do_mem(struct conn *c, const struct ctl_hdr *h, const void *body)
{
	char msg[sizeof(((struct ctl_error *)0)->msg)];
	int err;

	if (h->type == CTL_REQ_MEM) {
		struct ctl_mem_pool t;
		struct ctl_mem_holder hd;

		pool_totals(&t);
		err = conn_send(c, CTL_R_MEM_POOL, h->seq, &t, sizeof(t));
		for (int32_t i = -1; !err && i < (int32_t)d.conf->nsvc; i++) {
			const struct ubs_svc_policy *p =
				i < 0 ? &d.conf->deflt : &d.conf->svc[i];
			struct ctl_mem_service m = { .quota = p->mem_quota };

			memcpy(m.name, p->name, sizeof(m.name));
			m.name[i < 0 ? 0 : CTL_NAME_MAX - 1] = '\0';
			m.used = i < 0 ? 0 : pool_service_used(p->name,
							       &m.holders);
			err = conn_send(c, CTL_R_MEM_SERVICE, h->seq, &m,
					sizeof(m));
		}
		/* Services without a record of their own, under [default]. */
		for (uint32_t i = 0; !err && pool_holder(i, &hd); i++) {
			bool listed = conf_find(d.conf, hd.service) != NULL;

			for (uint32_t k = 0; !listed && k < i; k++) {
				struct ctl_mem_holder o;

				listed = pool_holder(k, &o) &&
					 strcmp(o.service, hd.service) == 0;
			}
			if (listed)
				continue;
			struct ctl_mem_service m = {
				.quota = d.conf->deflt.mem_quota,
			};
			memcpy(m.name, hd.service, sizeof(m.name));
			m.used = pool_service_used(hd.service, &m.holders);
			err = conn_send(c, CTL_R_MEM_SERVICE, h->seq, &m,
					sizeof(m));
		}
		for (uint32_t i = 0; !err && pool_holder(i, &hd); i++)
			err = conn_send(c, CTL_R_MEM_HOLDER, h->seq, &hd,
					sizeof(hd));
		return err ? err : conn_send(c, CTL_R_END, h->seq, NULL, 0);
	}
	if (!c->sess)
		return send_error(c, h->seq, EPERM, "no session: send HELLO "
				  "first");
	if (h->type == CTL_REQ_MEM_RETURN) {
		struct ctl_mem_ref m;

		memcpy(&m, body, sizeof(m));
		if (pool_return(c->sess->id, m.seg_id) < 0)
			return send_error(c, h->seq, ENOENT, "no such lease");
		logmsg(LOG_DEBUG, "pool: pid %ld returned segment %llu",
		       (long)c->pid, (unsigned long long)m.seg_id);
		return conn_send(c, CTL_R_OK, h->seq, NULL, 0);
	}
	if (h->type == CTL_REQ_MEM_CLAIM) {
		struct ctl_mem_lease m;

		memcpy(&m, body, sizeof(m));
		err = pool_claim(c->sess->id, c->sess->pid, c->sess->service,
				 m.bytes, msg, sizeof(msg));
		if (err)
			return send_error(c, h->seq, -err, msg);
		logmsg(LOG_INFO, "pool: pid %ld service \"%s\" still maps "
		       "%llu bytes from before a restart: counted",
		       (long)c->pid, c->sess->service,
		       (unsigned long long)m.bytes);
		return conn_send(c, CTL_R_OK, h->seq, NULL, 0);
	}
	{
		struct ctl_mem_lease m;
		struct ctl_mem_seg seg;
		int fd;

		memcpy(&m, body, sizeof(m));
		err = pool_lease(c->sess->id, c->sess->pid, c->sess->service,
				 svc_policy(c->sess->service)->mem_quota,
				 m.bytes, &seg, &fd, msg, sizeof(msg));
		if (err) {
			logmsg(LOG_DEBUG, "pool: pid %ld: %s", (long)c->pid,
			       msg);
			return send_error(c, h->seq, -err, msg);
		}
		logmsg(LOG_DEBUG, "pool: pid %ld service \"%s\" leased "
		       "segment %llu, %llu bytes%s", (long)c->pid,
		       c->sess->service, (unsigned long long)seg.seg_id,
		       (unsigned long long)seg.size,
		       seg.flags & CTL_MEM_HUGE ? " (hugepages)" : "");
		err = conn_send_fds(c, CTL_R_MEM_SEG, h->seq, &seg,
				    sizeof(seg), &fd, 1);
		if (err)        /* the client is dropped: its session too */
			pool_return(c->sess->id, seg.seg_id);
		return err;
	}
}

/* ------------------------------------------------------------ rendezvous */

static int send_error(struct conn *c, uint32_t seq, int err, const char *msg)
{
	struct ctl_error e = { .err = err };

	snprintf(e.msg, sizeof(e.msg), "%s", msg);
	return conn_send(c, CTL_R_ERROR, seq, &e, sizeof(e));
}

static int send_tcp(struct conn *c, uint32_t seq, const char *reason)
{
	struct ctl_tcp m;

	memset(&m, 0, sizeof(m));
	snprintf(m.reason, sizeof(m.reason), "%s", reason);
	return conn_send(c, CTL_R_TCP, seq, &m, sizeof(m));
}

static struct session *session_find(uint64_t id)
{
	struct session *s;

	TAILQ_FOREACH(s, &sessions, entry)
		if (s->id == id)
			return s;
	return NULL;
}

static struct conn *session_conn(uint64_t id)
{
	struct session *s = session_find(id);

	return s && s->conn && !s->conn->dead ? s->conn : NULL;
}

/* After an unsolicited message to o (not the connection being served):
 * push it out, drop o if it cannot take it. */
static void conn_after_push(struct conn *o, int err)
{
	if (!err)
		err = conn_flush(o);
	if (err)
		conn_close(o, err == -ENOBUFS ? "output queue full (client "
			   "not reading)" : err == -EAGAIN ? "socket full, "
			   "cannot pass an fd" : strerror(-err));
}

static int to_rv_addr(const struct sockaddr_storage *ss, struct rv_addr *a)
{
	memset(a, 0, sizeof(*a));
	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *in = (const void *)ss;
		a->family = AF_INET;
		a->port = ntohs(in->sin_port);
		memcpy(a->addr, &in->sin_addr, 4);
	} else if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const void *)ss;
		a->family = AF_INET6;
		a->port = ntohs(in6->sin6_port);
		memcpy(a->addr, &in6->sin6_addr, 16);
	} else {
		return -EAFNOSUPPORT;
	}
	return rv_addr_norm(a);
}

/* What the kernel says about a passed TCP socket. */
struct sock_facts {
	struct rv_tuple tu;             /* remote only when connected */
	uint64_t netns;
	uint64_t sock_id;               /* inode (listening sockets; 0 for
					 * connected ones, see sock_ns_ino) */
	int v6only;
	int family;                     /* the socket's own: AF_INET(6) */
	bool cookie;                    /* netns is its SO_NETNS_COOKIE */
};

/*
 * Verify fd is a TCP socket, listening (listening) or connected (else),
 * and read its facts.  Returns 0, or -errno with *why set.
 */
static int sock_facts(const struct conn *c, int fd, bool listening,
		      struct sock_facts *f, const char **why)
{
	struct sockaddr_storage ss;
	socklen_t len;
	struct stat st;
	int v = 0;

	memset(f, 0, sizeof(*f));
	/* IPPROTO_TCP is only ever a stream socket's protocol. */
	len = sizeof(v);
	if (getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &v, &len) < 0) {
		*why = "not a socket";
		return -ENOTSOCK;
	}
	if (v != IPPROTO_TCP) {
		*why = "not a TCP socket";
		return -EPROTOTYPE;
	}
	/* A connected socket proves it by getpeername below (a listening
	 * one has no peer); a listener must say so. */
	len = sizeof(v);
	if (listening &&
	    (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &v, &len) < 0 ||
	     v != 1)) {
		*why = "socket is not listening";
		return -EINVAL;
	}
	/* The peer first: once it is there the connection is made and the
	 * local address is final.  (Read the other way round, a socket whose
	 * owner calls connect() meanwhile, as an early request's does,
	 * gives the unbound address, port 0, and a real peer.) */
	if (!listening) {
		len = sizeof(ss);
		if (getpeername(fd, (struct sockaddr *)&ss, &len) < 0) {
			*why = "socket is not connected";
			return -ENOTCONN;
		}
		if (to_rv_addr(&ss, &f->tu.remote) < 0) {
			*why = "cannot read the peer's address";
			return -EAFNOSUPPORT;
		}
	}
	len = sizeof(ss);
	if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0 ||
	    to_rv_addr(&ss, &f->tu.local) < 0) {
		*why = "cannot read the socket's address";
		return -EAFNOSUPPORT;
	}
	f->family = ss.ss_family;
	if (listening && ss.ss_family == AF_INET6) {
		len = sizeof(v);
		if (getsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v, &len) == 0)
			f->v6only = v != 0;
	}
	len = sizeof(f->netns);
	f->cookie = getsockopt(fd, SOL_SOCKET, SO_NETNS_COOKIE, &f->netns,
			       &len) == 0 && len == sizeof(f->netns);
	if (!f->cookie)
		f->netns = c->sess ? c->sess->netns : netns_of(c->pid);
	/* Only a listener is known by its inode; a connected socket's is
	 * read when the namespace proof needs it (sock_ns_ino), which is
	 * rare: one syscall less for each PUBLISH and REQUEST. */
	if (!listening)
		return 0;
	if (fstat(fd, &st) < 0) {
		*why = "fstat failed";
		return -errno;
	}
	f->sock_id = (uint64_t)st.st_ino;
	return 0;
}

/* /proc/self/fd, opened at start (-1: is_eventfd uses the full path). */
static int proc_fd_dir = -1;

/* Is fd an eventfd of ours (received)?  The link is read relative to
 * proc_fd_dir: no walk of /proc/self for each PUBLISH. */
static bool is_eventfd(int fd)
{
	char path[64], link[64];
	ssize_t n;

	if (proc_fd_dir >= 0) {
		snprintf(path, sizeof(path), "%d", fd);
		n = readlinkat(proc_fd_dir, path, link, sizeof(link) - 1);
	} else {
		snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
		n = readlink(path, link, sizeof(link) - 1);
	}
	if (n < 0)
		return false;
	link[n] = '\0';
	return strcmp(link, "anon_inode:[eventfd]") == 0;
}

/* ---- the cross-namespace proof ----------------------------------------- */

/*
 * Read all of a /proc file into a fresh NUL-terminated buffer (at most
 * NSA_FILE_MAX bytes).  Returns it, or NULL (errno set; EFBIG when too
 * big).
 */
static char *read_proc(const char *path)
{
	size_t len = 0, cap = 16384;
	char *buf = malloc(cap), *nb;
	ssize_t n;
	int fd, err;

	if (!buf)
		return NULL;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		err = errno;
		free(buf);
		errno = err;
		return NULL;
	}
	for (;;) {
		if (cap - len < 4096) {
			if (cap >= NSA_FILE_MAX) {
				err = EFBIG;
				goto fail;
			}
			nb = realloc(buf, cap * 2);
			if (!nb) {
				err = ENOMEM;
				goto fail;
			}
			buf = nb;
			cap *= 2;
		}
		n = read(fd, buf + len, cap - len - 1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			err = errno;
			goto fail;
		}
		if (n == 0)
			break;
		len += (size_t)n;
	}
	close(fd);
	buf[len] = '\0';
	return buf;
fail:
	close(fd);
	free(buf);
	errno = err;
	return NULL;
}

/* Is socket inode ino listed in /proc/PID/net/tcp (family AF_INET) or
 * tcp6?  The tenth field of a line is the inode. */
static bool proc_tcp_has(pid_t pid, int family, uint64_t ino)
{
	char path[64], *text, *line, *save = NULL;
	bool found = false;

	snprintf(path, sizeof(path), "/proc/%ld/net/%s", (long)pid,
		 family == AF_INET6 ? "tcp6" : "tcp");
	text = read_proc(path);
	if (!text)
		return false;
	for (line = strtok_r(text, "\n", &save); line && !found;
	     line = strtok_r(NULL, "\n", &save)) {
		unsigned long long v;

		if (sscanf(line, "%*s %*s %*s %*s %*s %*s %*s %*s %*s %llu",
			   &v) == 1 && v == ino)
			found = true;
	}
	free(text);
	return found;
}

/*
 * The inode of the network namespace of socket fd (family, inode
 * sock_ino), held by process pid.  With CAP_NET_ADMIN over that namespace
 * (root) SIOCGSKNS says it; otherwise pid's own namespace is the socket's
 * when pid's /proc/PID/net/tcp{,6} lists the socket and pid stayed in
 * that namespace meanwhile.  0 when it cannot be told.  sock_ino 0: read
 * it here (sock_facts leaves it 0 for a connected socket).
 */
static uint64_t sock_ns_ino(int fd, int family, uint64_t sock_ino, pid_t pid)
{
	struct stat st;
	uint64_t before, after;
	int nfd = ioctl(fd, SIOCGSKNS, 0);

	if (nfd >= 0) {
		uint64_t ino = fstat(nfd, &st) == 0 ? (uint64_t)st.st_ino : 0;

		close(nfd);
		return ino;
	}
	if (!sock_ino) {
		if (fstat(fd, &st) < 0)
			return 0;
		sock_ino = (uint64_t)st.st_ino;
	}
	before = netns_of(pid);
	if (!before || !proc_tcp_has(pid, family, sock_ino))
		return 0;
	after = netns_of(pid);
	return after == before ? before : 0;
}

/* Append what parse finds in /proc/PID/net/NAME to e->nets.  0 or
 * -errno. */
static int nsa_add(struct nsa *e, pid_t pid, const char *name,
		   size_t (*parse)(const char *, struct rv_net *, size_t))
{
	char path[64], *text;
	size_t n;

	snprintf(path, sizeof(path), "/proc/%ld/net/%s", (long)pid, name);
	text = read_proc(path);
	if (!text)
		return errno == ENOENT ? 0 : -errno;    /* no IPv6: none */
	n = parse(text, NULL, 0);
	if (e->n + n > e->cap) {
		size_t cap = e->n + n + 16;
		struct rv_net *nn = realloc(e->nets, cap * sizeof(*nn));

		if (!nn) {
			free(text);
			return -ENOMEM;
		}
		e->nets = nn;
		e->cap = cap;
	}
	e->n += parse(text, e->nets + e->n, n);
	free(text);
	return 0;
}

/*
 * Read the local addresses of namespace e->ino through /proc/PID/net of
 * pid, which must be in it before and after.  0 or -errno (-ESRCH: pid is
 * elsewhere).
 */
static int nsa_read(struct nsa *e, pid_t pid)
{
	int r;

	if (netns_of(pid) != e->ino)
		return -ESRCH;
	e->n = 0;
	r = nsa_add(e, pid, "fib_trie", rv_parse_fib_trie);
	if (!r)
		r = nsa_add(e, pid, "if_inet6", rv_parse_if_inet6);
	if (!r)
		r = nsa_add(e, pid, "ipv6_route", rv_parse_ipv6_route);
	if (!r && netns_of(pid) != e->ino)
		r = -ESRCH;
	if (r)
		e->n = 0;
	return r;
}

static struct nsa *nsa_slot(uint64_t id, uint64_t now)
{
	struct nsa *e, *lru = &nsa[0];

	for (e = nsa; e < nsa + NSA_SLOTS; e++) {
		if (e->id == id && id)
			goto found;
		if (e->used_ms < lru->used_ms)
			lru = e;
	}
	e = lru;
	e->id = id;
	e->ino = 0;
	e->read_ms = 0;
	e->fail_ms = 0;
	e->fail_nosock_ms = 0;
	e->n = 0;
found:
	e->used_ms = now;
	return e;
}

/*
 * The local addresses of namespace id (a SO_NETNS_COOKIE), read at most
 * NSA_TTL_MS ago, or NULL with *why set.  The namespace's inode is ino
 * when known, else learned from socket fd (facts f) of that namespace,
 * held by process pid.  The addresses are read through pid if it is in
 * the namespace, else through any session that is.  A failure is not
 * retried for NSA_TTL_MS; one without a socket (f NULL: fewer ways to
 * succeed) does not stop a try with one.
 */
static struct nsa *nsa_get(uint64_t id, uint64_t ino, pid_t pid, int fd,
			   const struct sock_facts *f, const char **why)
{
	uint64_t now = now_ms(), *fail;
	struct session *s;
	struct nsa *e;
	int r = -ESRCH;

	e = nsa_slot(id, now);
	if (e->read_ms && now - e->read_ms < NSA_TTL_MS)
		goto have;
	fail = f ? &e->fail_ms : &e->fail_nosock_ms;
	*why = "netns facts failed recently";
	if (*fail && now - *fail < NSA_TTL_MS)
		return NULL;
	*why = "netns of the socket unknown";
	if (!e->ino)
		e->ino = ino ? ino : f ? sock_ns_ino(fd, f->family, f->sock_id,
						     pid) : 0;
	if (!e->ino)
		goto fail;
	/* The passing process, else any session in that namespace. */
	*why = "no process in the socket's netns";
	if (pid > 0)
		r = nsa_read(e, pid);
	if (r == -ESRCH) {
		TAILQ_FOREACH(s, &sessions, entry) {
			if (s->netns != e->ino || s->pid == pid)
				continue;
			r = nsa_read(e, s->pid);
			if (r != -ESRCH)
				break;
		}
	}
	if (r) {
		if (r != -ESRCH)
			*why = "cannot read the netns addresses";
		goto fail;
	}
	e->read_ms = now ? now : 1;
	e->fail_ms = 0;
	e->fail_nosock_ms = 0;
have:
	*why = NULL;
	return e;
fail:
	*fail = now ? now : 1;
	e->read_ms = 0;
	return NULL;
}

/*
 * The proof bits (rv_proof) of socket fd with facts f, passed by c, in
 * its own namespace, or 0 with *why set.  Nothing to prove when
 * cross-namespace matching is off.
 */
static uint32_t ns_proof(const struct conn *c, int fd,
			 const struct sock_facts *f, const char **why)
{
	struct nsa *e;

	*why = "cross_netns off";
	if (!d.conf || !d.conf->cross_netns)
		return 0;
	/* Without the cookie (Linux < 5.14) netns is the passer's, which
	 * need not be the socket's: nothing can be proven about it. */
	*why = "no SO_NETNS_COOKIE";
	if (!f->cookie)
		return 0;
	e = nsa_get(f->netns, 0, c->pid, fd, f, why);
	return e ? rv_proof(e->nets, e->n, &f->tu) : 0;
}

/* A REQUEST being decided: its socket, for netns_local. */
struct req_ctx {
	const struct conn *c;
	int fd;
	const struct sock_facts *f;
};

/*
 * rv_local for rv_request: is a local in namespace netns?  The
 * requester's namespace is read through its socket, a listener's through
 * the inode learned at LISTEN (lns).  1, 0, or -1 when it cannot be told
 * (no SO_NETNS_COOKIE: the ids are not namespace cookies; an unknown
 * namespace; its addresses unreadable).
 */
static int netns_local(void *arg, uint64_t netns, const struct rv_addr *a)
{
	const struct req_ctx *x = arg;
	const char *why = "no SO_NETNS_COOKIE";
	struct nsa *e = NULL;
	uint64_t ino;

	if (!x->f->cookie)
		goto unknown;
	if (netns == x->f->netns) {
		e = nsa_get(netns, 0, x->c->pid, x->fd, x->f, &why);
	} else {
		why = "namespace inode unknown";
		ino = lns_ino(netns);
		if (ino)
			e = nsa_get(netns, ino, 0, -1, NULL, &why);
	}
	if (e)
		return rv_net_has(e->nets, e->n, a);
unknown:
	logmsg(LOG_DEBUG, "pid %ld: addresses of netns %llu: %s",
	       (long)x->c->pid, (unsigned long long)netns, why);
	return -1;
}

/* "local+remote" style text of proof bits, for the log. */
static const char *proof_str(uint32_t proof, const char *why)
{
	if (why)
		return why;
	switch (proof & RV_PROVEN) {
	case RV_PROVEN:
		return "proven";
	case RV_LOCAL_HERE:
		return "remote address is local here";
	case RV_REMOTE_AWAY:
		return "local address not configured here";
	default:
		return "neither address fits";
	}
}

/*
 * A listener of socket fd (facts f) was registered: learn the inode of
 * its namespace if lns does not know it yet (the entry goes with the
 * namespace's last listener, lns_gc).
 */
static void lns_learn(const struct conn *c, int fd, const struct sock_facts *f)
{
	uint64_t ino;

	if (!f->cookie || lns_ino(f->netns) || nlns >= UBS_POLICY_MAX_LST)
		return;
	ino = sock_ns_ino(fd, f->family, f->sock_id, c->pid);
	if (!ino) {
		logmsg(LOG_DEBUG, "pid %ld: netns %llu of listener %llu: "
		       "inode unknown", (long)c->pid,
		       (unsigned long long)f->netns,
		       (unsigned long long)f->sock_id);
		return;
	}
	lns[nlns].id = f->netns;
	lns[nlns].ino = ino;
	nlns++;
}

/* ------------------------------------------------------------------ boards */

/*
 * Boards (ubtransport board.c): one per uid, where that uid's processes
 * of one network namespace meet for a connection without asking the
 * daemon.  A uid's board is made at the first BOARD or LISTEN of one of
 * its sessions, with [daemon] board_slots slots (0: no boards) and rings
 * of the default record's ring_kib, and lives as long as the daemon: a
 * process may hold connections in it after its session ended, and the
 * next session of that uid must find the same board.  At most BOARD_MAX
 * uids get one; the others, and a uid whose board could not be made, go
 * on through the daemon (BOARD answers ERROR, their listeners carry
 * board 0).  A failure is retried at the next need: the geometry may have
 * been fixed by a reload in between.
 */
#define BOARD_MAX 64

static struct {
	uid_t uid;
	struct ubt_board b;
} boards[BOARD_MAX];
static uint32_t nboards;

/*
 * The board of uid, made if need be.  NULL with *why set when the uid has
 * none: boards off, the table full, a ring size that is no power of two,
 * or ubt_board_create's error (*err, positive errno, for the reply).
 */
static struct ubt_board *board_of(uid_t uid, int *err, const char **why)
{
	static int last_fail;           /* logged once until it changes */
	uint64_t ring = (uint64_t)d.conf->deflt.ring_kib * 1024;
	uint32_t slots = d.conf->board_slots;
	uint32_t i;
	int r;

	for (i = 0; i < nboards; i++)
		if (boards[i].uid == uid)
			return &boards[i].b;
	*err = ENOENT;
	if (!slots) {
		*why = "boards are off (board_slots = 0)";
		return NULL;
	}
	if (nboards == BOARD_MAX) {
		*why = "board table full: this uid has none";
		if (last_fail != -ENOSPC)
			logmsg(LOG_WARNING, "board for uid %ld: %u uids have "
			       "one already, the most there can be",
			       (long)uid, (unsigned)BOARD_MAX);
		last_fail = -ENOSPC;
		return NULL;
	}
	if (!ring || (ring & (ring - 1))) {
		*why = "default ring_kib is no power of two: no board";
		return NULL;
	}
	r = ubt_board_create(&boards[nboards].b, slots, ring);
	if (r < 0) {
		*err = -r;
		*why = "board not made";
		if (r != last_fail)
			logmsg(LOG_WARNING, "board for uid %ld (%u slots of "
			       "%llu-byte rings): %s", (long)uid, slots,
			       (unsigned long long)ring, strerror(-r));
		last_fail = r;
		return NULL;
	}
	last_fail = 0;
	boards[nboards].uid = uid;
	logmsg(LOG_INFO, "board %016llx for uid %ld: %u slots of %llu-byte "
	       "rings", (unsigned long long)boards[nboards].b.id, (long)uid,
	       slots, (unsigned long long)ring);
	return &boards[nboards++].b;
}

/*
 * A session ended: if its process is gone (not an exec, which ends the
 * session too and keeps the connections), the board slots it held alone
 * lose its reference, so that its peers' last close frees them.
 */
static void board_session_end(const struct session *s)
{
	char st = 0;
	int pp, n = 0;

	if (ubt_proc_stat(s->pid, &st, &pp) == 0 && st != 'Z' && st != 'X')
		return;                         /* alive */
	for (uint32_t i = 0; i < nboards; i++)
		if (boards[i].uid == s->uid)
			n += ubt_board_reclaim(&boards[i].b, (uint32_t)s->pid);
	if (n)
		logmsg(LOG_INFO, "pid %ld gone: %d board slot reference(s) "
		       "given back", (long)s->pid, n);
}

/* The id of uid's board (made if need be), 0 when it has none. */
static uint64_t board_id_of(uid_t uid)
{
	const char *why = NULL;
	struct ubt_board *b;
	int err;

	b = board_of(uid, &err, &why);
	return b ? b->id : 0;
}

/* BOARD: the board of the session's uid, with its fd. */
static int do_board(struct conn *c, const struct ctl_hdr *h)
{
	const char *why = NULL;
	struct ubt_board *b;
	struct ctl_board m;
	int err = 0;

	if (!c->sess)
		return send_error(c, h->seq, EPERM, "no session: send HELLO "
				  "first");
	b = board_of(c->sess->uid, &err, &why);
	if (!b)
		return send_error(c, h->seq, err, why);
	memset(&m, 0, sizeof(m));
	m.id = b->id;
	m.ring_size = b->ring_size;
	m.nslots = b->nslots;
	return conn_send_fds(c, CTL_R_BOARD, h->seq, &m, sizeof(m),
			     &b->seg.fd, 1);
}

/* At exit. */
static void boards_free(void)
{
	for (uint32_t i = 0; i < nboards; i++)
		ubt_board_unmap(&boards[i].b);
	nboards = 0;
}

static int do_listen(struct conn *c, const struct ctl_hdr *h, int fd,
		     bool add)
{
	const char *why = NULL;
	struct sock_facts f;
	int r;

	r = sock_facts(c, fd, true, &f, &why);
	if (r) {
		close(fd);
		return send_error(c, h->seq, -r, why);
	}
	if (add) {
		r = rv_listener_add(&d.rv, f.sock_id, f.netns, &f.tu.local,
				    f.v6only, c->sess->id);
		if (r >= 0) {
			lns_learn(c, fd, &f);
			rv_listener_board(&d.rv, f.sock_id,
					  board_id_of(c->sess->uid));
		}
	} else {
		r = rv_listener_drop(&d.rv, f.sock_id, c->sess->id);
	}
	close(fd);
	/* Even after a refusal: an add may have dropped a replaced entry. */
	publish_listeners();
	if (r < 0)
		return send_error(c, h->seq, -r, r == -ENOENT ?
				  "no such listener for this session" :
				  r == -ENOSPC ? "listener table full" :
				  strerror(-r));
	logmsg(LOG_DEBUG, "pid %ld: %s sock %llu port %u", (long)c->pid,
	       add ? "listen" : "unlisten", (unsigned long long)f.sock_id,
	       f.tu.local.port);
	return conn_send(c, CTL_R_OK, h->seq, NULL, 0);
}

/* ACCEPTING: a holder of listener fd accepts from it (see rendezvous.h). */
static int do_accepting(struct conn *c, const struct ctl_hdr *h, int fd)
{
	const char *why = NULL;
	struct sock_facts f;
	int r;

	r = sock_facts(c, fd, true, &f, &why);
	close(fd);
	if (r)
		return send_error(c, h->seq, -r, why);
	r = rv_listener_accepting(&d.rv, f.sock_id, c->sess->id);
	if (r < 0)
		return send_error(c, h->seq, -r, "no such listener for this "
				  "session");
	publish_listeners();
	return conn_send(c, CTL_R_OK, h->seq, NULL, 0);
}

/* Remember a pending REQUEST of c; false when c has too many. */
static bool conn_req_add(struct conn *c, uint64_t id, uint32_t seq)
{
	for (int i = 0; i < CONN_MAX_REQS; i++)
		if (!c->reqs[i].id) {
			c->reqs[i].id = id;
			c->reqs[i].seq = seq;
			return true;
		}
	return false;
}

/* Take c's pending REQUEST id: its seq, or false if c has none such. */
static bool conn_req_take(struct conn *c, uint64_t id, uint32_t *seq)
{
	for (int i = 0; id && i < CONN_MAX_REQS; i++)
		if (c->reqs[i].id == id) {
			c->reqs[i].id = 0;
			*seq = c->reqs[i].seq;
			return true;
		}
	return false;
}

static bool conn_req_full(const struct conn *c)
{
	for (int i = 0; i < CONN_MAX_REQS; i++)
		if (!c->reqs[i].id)
			return false;
	return true;
}

/* Sessions a and b were given a channel together: each may have the
 * other's doorbell (PEER_DB). */
static void db_pair(uint64_t a, uint64_t b)
{
	struct session *sa = session_find(a), *sb = session_find(b);

	for (int k = 0; k < 2 && sa && sb; k++) {
		struct session *x = k ? sb : sa, *y = k ? sa : sb;
		unsigned i;

		for (i = 0; i < DB_PEERS; i++)
			if (x->db_peers[i] == y->id)
				break;
		if (i == DB_PEERS)
			x->db_peers[x->db_next++ % DB_PEERS] = y->id;
	}
}

/* Is fd a memfd whose size is sealed (a peer may map it safely)? */
static bool is_sealed_memfd(int fd)
{
	int seals = fcntl(fd, F_GET_SEALS);
	int need = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL;

	return seals >= 0 && (seals & need) == need;
}

/* DOORBELL: the session's process doorbell (an eventfd) and its
 * notification page (a sealed memfd). */
static int do_doorbell(struct conn *c, const struct ctl_hdr *h,
		       const struct ctl_doorbell *m, const int *fds)
{
	if (!m->id || !is_eventfd(fds[0]) || !is_sealed_memfd(fds[1])) {
		close(fds[0]);
		close(fds[1]);
		return send_error(c, h->seq, EINVAL, "a doorbell is an "
				  "eventfd with a nonzero id and a sealed "
				  "memfd");
	}
	if (c->sess->db_fd >= 0)
		close(c->sess->db_fd);
	if (c->sess->note_fd >= 0)
		close(c->sess->note_fd);
	c->sess->db_fd = fds[0];
	c->sess->note_fd = fds[1];
	c->sess->db_id = m->id;
	return conn_send(c, CTL_R_OK, h->seq, NULL, 0);
}

/* Was session owner given a channel with me, or with a session of one of
 * me's ancestors (up to 4 up: a server that accepts, forks, and lets the
 * child serve, as postgres does, gets its channels paired with the
 * parent's session)? */
static bool db_paired(const struct session *me, const struct session *owner)
{
	pid_t pid = me->pid;

	for (int up = 0; up <= 4 && pid > 1; up++) {
		const struct session *x;

		TAILQ_FOREACH(x, &sessions, entry) {
			if (x != me && (up == 0 || x->pid != pid))
				continue;
			for (unsigned i = 0; i < DB_PEERS; i++)
				if (x->db_peers[i] == owner->id)
					return true;
		}
		{
			char st;
			int pp;

			pid = ubt_proc_stat(pid, &st, &pp) == 0 ? pp : 0;
		}
	}
	return false;
}

/* PEER_DB: the doorbell named m->id, to a session allowed to ring it. */
static int do_peer_db(struct conn *c, const struct ctl_hdr *h,
		      const struct ctl_doorbell *m)
{
	struct session *s, *me = c->sess;
	bool seen = false;

	if (!me)
		return send_error(c, h->seq, EPERM, "no session: send HELLO "
				  "first");
	TAILQ_FOREACH(s, &sessions, entry) {
		bool ok = s->uid == me->uid || me->uid == 0;

		if (s->db_fd < 0 || s->db_id != m->id || !m->id)
			continue;
		seen = true;
		if (ok || db_paired(me, s)) {
			int fds[2] = { s->db_fd, s->note_fd };

			return conn_send_fds(c, CTL_R_DOORBELL, h->seq, m,
					     sizeof(*m), fds, 2);
		}
	}
	return send_error(c, h->seq, seen ? EPERM : ENOENT, seen ?
			  "not a peer of that doorbell's process" :
			  "no such doorbell");
}

/* Hand ch to the client waiting with req_id in session req_session, then
 * forget ch. */
static void give_channel(struct chan *ch, uint64_t req_session,
			 uint64_t req_id)
{
	struct conn *o = session_conn(req_session);
	struct ctl_chan m = { .chan_id = ch->id };

	uint32_t seq;

	if (o && conn_req_take(o, req_id, &seq)) {
		db_pair(ch->session, req_session);
		conn_after_push(o, conn_send_fds(o, CTL_R_CHANNEL, seq,
						 &m, sizeof(m), ch->fd, 1));
	}
	chan_free(ch);
}

/*
 * A connection accepted by a server that did not meet its client on a
 * board (another uid's process took over a listening socket that a
 * process of the client's uid registered, e.g. a worker that changed its
 * uid after fork; see shim-socket/board.c): its client may have posted
 * its channel on its own board, where this server will never look.
 * Take such a post back for the client: the channel is decided and its
 * server side marked demoted, and the client is woken (its doorbell and
 * notification page, which it gave this daemon before posting), so that
 * it sends what it wrote over the kernel socket, where this server reads.
 */
static void board_refuse_posts(const struct sock_facts *f, uid_t server)
{
	struct ubt_board_key k;

	if (!f->cookie)
		return;
	memset(&k, 0, sizeof(k));
	k.netns = f->netns;
	k.family = f->tu.local.family;
	k.sport = f->tu.local.port;
	k.cport = f->tu.remote.port;
	memcpy(k.saddr, f->tu.local.addr, 16);
	memcpy(k.caddr, f->tu.remote.addr, 16);
	for (uint32_t i = 0; i < nboards; i++) {
		struct ubt_board *b = &boards[i].b;
		struct session *s, *cl = NULL;
		struct ubt_note n = { 0 };
		struct ubt_chan ch;
		int slot, nfd;

		/* The server's own board: its library looked already. */
		if (boards[i].uid == server)
			continue;
		/* A client between its connect() and its post: wait for it
		 * (at most a few ms; rare: a post on a board its server does
		 * not use), then a tombstone turns it to TCP. */
		slot = ubt_board_take_wait(b, &k, 2000000);
		if (slot < 0)
			continue;
		if (ubt_board_chan_adopt(b, &ch, (uint32_t)slot, 1, -1, -1) == 0) {
			uint64_t id = ubt_chan_peer_db(&ch);

			TAILQ_FOREACH(s, &sessions, entry)
				if (id && s->db_id == id && s->db_fd >= 0)
					cl = s;
			if (cl) {
				ubt_chan_set_peer_efd(&ch, cl->db_fd);
				nfd = cl->note_fd >= 0 ?
					fcntl(cl->note_fd, F_DUPFD_CLOEXEC, 0) : -1;
				if (nfd >= 0 && ubt_note_map(&n, nfd, cl->db_fd) < 0)
					close(nfd);
				else if (nfd >= 0)
					ubt_chan_set_notes(&ch, &n, NULL);
			}
			if (ubt_chan_decide(&ch, UBT_CHAN_UB) == UBT_CHAN_UB)
				ubt_chan_demote_side(&ch, 1);
			logmsg(LOG_INFO, "board %016llx slot %d: a post for port "
			       "%u<-%u taken back for its client (the server "
			       "is not on that board)%s",
			       (unsigned long long)b->id, slot, k.sport, k.cport,
			       cl ? "" : "; its doorbell is unknown");
			ubt_note_close(&n);
			ubt_chan_close(&ch);
		}
		ubt_board_slot_put(b, (uint32_t)slot);
	}
}

static int do_publish(struct conn *c, const struct ctl_hdr *h, int *fds)
{
	const char *why = NULL, *pwhy = NULL;
	struct sock_facts f;
	struct rv_answer ans;
	struct ctl_chan m;
	struct chan *ch;
	struct stat st;
	uint32_t proof = 0;
	int r;

	/* Requests sent before connect() whose connect has completed: they
	 * must be requests before this publication looks for its match. */
	if (!TAILQ_EMPTY(&earlies))
		early_try_all();
	if (c->dead) {                  /* it was one of them, and failed */
		close_fds(fds, 2);
		return 0;
	}
	r = sock_facts(c, fds[0], false, &f, &why);
	if (!r)
		proof = ns_proof(c, fds[0], &f, &pwhy);
	close(fds[0]);
	fds[0] = -1;
	if (!r && (fstat(fds[1], &st) < 0 || !S_ISREG(st.st_mode) ||
		   st.st_size <= 0)) {
		why = "channel segment is not a memfd";
		r = -EBADF;
	}
	if (r) {
		close_fds(fds + 1, 1);
		return send_error(c, h->seq, -r, why);
	}
	if (nboards)
		board_refuse_posts(&f, c->sess->uid);
	ch = calloc(1, sizeof(*ch));
	if (!ch) {
		close_fds(fds + 1, 1);
		return send_error(c, h->seq, ENOMEM, "out of memory");
	}
	ch->id = ++d.next_chan_id;
	ch->session = c->sess->id;
	ch->seq = h->seq;
	memcpy(ch->fd, fds + 1, sizeof(ch->fd));
	TAILQ_INSERT_TAIL(&chans, ch, entry);
	r = rv_publish(&d.rv, &f.tu, f.netns, proof, c->sess->id, ch->id,
		       now_ms(), &ans);
	m.chan_id = ch->id;
	logmsg(LOG_DEBUG, "pid %ld: publish chan %llu port %u<-%u netns %llu "
	       "(%s): %s", (long)c->pid, (unsigned long long)ch->id,
	       f.tu.local.port, f.tu.remote.port,
	       (unsigned long long)f.netns, proof_str(proof, pwhy),
	       r < 0 ? strerror(-r) : ans.verdict == RV_MATCH ? "matched" :
	       ans.verdict == RV_PENDING ? "pending" :
	       rv_cause_str(ans.cause));
	if (r < 0) {
		chan_free(ch);
		return send_error(c, h->seq, -r, r == -ENOSPC ?
				  "publication table full" : strerror(-r));
	}
	if (ans.verdict == RV_WITHDRAWN) {
		/* Decided in the channel too: a server about to speak
		 * first sees TCP at once. */
		ubt_chan_decide_fd(ch->fd[0], UBT_CHAN_TCP);
		chan_free(ch);
		return conn_send(c, CTL_R_WITHDRAWN, h->seq, &m, sizeof(m));
	}
	r = conn_send(c, CTL_R_PUBLISHED, h->seq, &m, sizeof(m));
	if (ans.verdict == RV_MATCH) {
		give_channel(ch, ans.req_session, ans.req_id);
	} else if (c->sess->early) {
		/* Its client, if preloaded, asked before connect(): if no
		 * input still unread matches it, none ever will. */
		ch->orphan = true;
		ch->orphan_ms = now_ms();
		norphans++;
	}
	return r;
}

/*
 * A request whose socket is connected (facts f, proof bits proof): match
 * it, store it or answer it (seq), waiting at most tmo ms.  Closes fd.
 * Returns 0 or the error of sending to c.
 */
static int request_connected(struct conn *c, uint32_t seq, int fd,
			     struct sock_facts *f, uint32_t proof,
			     const char *pwhy, uint32_t tmo)
{
	struct rv_answer ans;
	uint64_t now = now_ms();
	struct req_ctx rctx;
	const struct rv_local local = { netns_local, &rctx };
	int r;

	if (conn_req_full(c)) {
		close(fd);
		return send_error(c, seq, EBUSY, "too many requests pending "
				  "on this connection");
	}
	/* The socket stays open meanwhile: netns_local may read its
	 * namespace through it. */
	rctx.c = c;
	rctx.fd = fd;
	rctx.f = f;
	/* After a restart (clients come back with CTL_HELLO_RECONNECT),
	 * servers register their listeners again only on their next call
	 * that needs the daemon, often the accept of this very connection:
	 * for a while, no listener is no proof of a remote peer. */
	r = rv_request(&d.rv, &f->tu, f->netns, proof, c->sess->id, now,
		       now + tmo, d.reconnects_ms &&
		       now - d.reconnects_ms < LISTEN_GRACE_MS ? NULL : &local,
		       &ans);
	close(fd);
	logmsg(LOG_DEBUG, "pid %ld: request port %u->%u netns %llu (%s): %s",
	       (long)c->pid, f->tu.local.port, f->tu.remote.port,
	       (unsigned long long)f->netns, proof_str(proof, pwhy),
	       r < 0 ? strerror(-r) : ans.verdict == RV_MATCH ? "matched" :
	       ans.verdict == RV_PENDING ? "pending" :
	       rv_cause_str(ans.cause));
	if (r < 0)
		return send_error(c, seq, -r, r == -ENOSPC ?
				  "request table full" : strerror(-r));
	switch (ans.verdict) {
	case RV_MATCH:
		{
			struct chan *ch = chan_find(ans.chan_id);
			struct ctl_chan m = { .chan_id = ans.chan_id };

			if (!ch)        /* cannot happen: table and rv agree */
				return send_tcp(c, seq, "channel lost");
			db_pair(ch->session, c->sess->id);
			r = conn_send_fds(c, CTL_R_CHANNEL, seq, &m,
					  sizeof(m), ch->fd, 1);
			chan_free(ch);
			return r;
		}
	case RV_PENDING:
		conn_req_add(c, ans.req_id, seq);
		return 0;
	default:
		return send_tcp(c, seq, rv_cause_str(ans.cause));
	}
}

/*
 * Try an early request again: connected now?  Returns true when it was
 * answered or became a request (e is gone), false while it still waits.
 */
static bool early_try(struct early *e, uint64_t now)
{
	const char *why = NULL, *pwhy = NULL;
	struct conn *c = e->c;
	struct sock_facts f;
	uint32_t proof;
	int r, fd = e->src.fd;

	r = sock_facts(c, fd, false, &f, &why);
	if (r == -ENOTCONN && now < e->deadline)
		return false;
	if (r) {
		r = r == -ENOTCONN ? send_tcp(c, e->seq, "not connected in "
					      "time") :
			send_error(c, e->seq, -r, why);
		early_free(e);
		conn_after_push(c, r);
		return true;
	}
	proof = ns_proof(c, fd, &f, &pwhy);
	epoll_ctl(d.epfd, EPOLL_CTL_DEL, fd, NULL);
	e->src.fd = -1;                 /* request_connected closes it */
	r = request_connected(c, e->seq, fd, &f, proof, pwhy,
			      (uint32_t)(e->deadline - now));
	early_free(e);
	conn_after_push(c, r);
	return true;
}

/* Try every early request (a publication came, or time passed). */
static void early_try_all(void)
{
	uint64_t now = now_ms(), gen;
	struct early *e, *next;

again:
	gen = early_gen;
	for (e = TAILQ_FIRST(&earlies); e; e = next) {
		next = TAILQ_NEXT(e, entry);
		if (early_try(e, now) && gen != early_gen)
			goto again;     /* a connection closed: next may be gone */
	}
}

/* The earliest early-request deadline, UINT64_MAX for none. */
static uint64_t early_next_deadline(void)
{
	uint64_t dl = UINT64_MAX;
	struct early *e;

	TAILQ_FOREACH(e, &earlies, entry)
		if (e->deadline < dl)
			dl = e->deadline;
	return dl;
}

static int do_request(struct conn *c, const struct ctl_hdr *h,
		      const struct ctl_request *q, int fd)
{
	const char *why = NULL, *pwhy = NULL;
	struct sock_facts f;
	uint32_t tmo = q->timeout_ms, proof = 0;
	struct early *e;
	int r;

	if (tmo > CTL_REQUEST_MAX_MS)
		tmo = CTL_REQUEST_MAX_MS;
	r = sock_facts(c, fd, false, &f, &why);
	if (r == -ENOTCONN) {
		/* Asked before connect(): wait for it to complete. */
		struct epoll_event ev = { .events = EPOLLOUT | EPOLLET };

		if (c->nearly >= CONN_MAX_REQS || !(e = calloc(1, sizeof(*e)))) {
			close(fd);
			return send_error(c, h->seq, EBUSY, "too many requests "
					  "pending on this connection");
		}
		e->src.kind = EV_EARLY;
		e->src.fd = fd;
		e->c = c;
		e->seq = h->seq;
		e->deadline = now_ms() + tmo;
		ev.data.ptr = &e->src;
		if (epoll_ctl(d.epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
			r = errno;
			close(fd);
			free(e);
			return send_error(c, h->seq, r, "cannot watch the socket");
		}
		c->nearly++;
		TAILQ_INSERT_TAIL(&earlies, e, entry);
		logmsg(LOG_DEBUG, "pid %ld: request before connect (seq %u)",
		       (long)c->pid, h->seq);
		return 0;
	}
	if (!r)
		proof = ns_proof(c, fd, &f, &pwhy);
	if (r) {
		close(fd);
		return send_error(c, h->seq, -r, why);
	}
	return request_connected(c, h->seq, fd, &f, proof, pwhy, tmo);
}

static int do_listeners(struct conn *c, const struct ctl_hdr *h)
{
	struct rv_listener_info *li;
	size_t n;
	int err = 0;

	li = calloc(rv_lim.listeners, sizeof(*li));
	if (!li)
		return send_error(c, h->seq, ENOMEM, "out of memory");
	n = rv_listener_list(&d.rv, li, rv_lim.listeners);
	for (size_t i = 0; !err && i < n; i++) {
		struct ctl_listener m;

		memset(&m, 0, sizeof(m));
		m.sock_id = li[i].sock_id;
		m.netns = li[i].netns;
		m.family = li[i].addr.family;
		m.port = li[i].addr.port;
		memcpy(m.addr, li[i].addr.addr, sizeof(m.addr));
		m.v6only = li[i].v6only;
		m.holders = li[i].holders;
		err = conn_send(c, CTL_R_LISTENER, h->seq, &m, sizeof(m));
	}
	free(li);
	return err ? err : conn_send(c, CTL_R_END, h->seq, NULL, 0);
}

/* Answer what has fallen due: pending requests (use TCP) and stale or
 * superseded publications (withdrawn; the server is told). */
static void rv_tick(void)
{
	struct rv_answer out[64];
	size_t n;

	do {
		n = rv_expire(&d.rv, now_ms(), out, 64);
		for (size_t i = 0; i < n; i++) {
			struct conn *o;

			if (out[i].verdict == RV_TCP) {
				uint32_t seq;

				o = session_conn(out[i].req_session);
				if (!o || !conn_req_take(o, out[i].req_id, &seq))
					continue;
				conn_after_push(o, send_tcp(o, seq,
					rv_cause_str(out[i].cause)));
			} else if (out[i].verdict == RV_WITHDRAWN) {
				struct chan *ch = chan_find(out[i].chan_id);
				struct ctl_chan m = {
					.chan_id = out[i].chan_id };
				uint32_t seq = ch ? ch->seq : 0;

				if (ch) {
					ubt_chan_decide_fd(ch->fd[0],
							   UBT_CHAN_TCP);
					chan_free(ch);
				}
				o = session_conn(out[i].pub_session);
				if (o)
					conn_after_push(o, conn_send(o,
						CTL_R_WITHDRAWN, seq, &m,
						sizeof(m)));
			}
		}
	} while (n == 64);
}

/*
 * Withdraw the orphans: publications of early sessions that no request
 * matched although every message sent so far has been read (the loop
 * calls this when an epoll_wait with no timeout found nothing): their
 * clients are not preloaded (or not accelerated), so TCP is decided in
 * the channel and the server told.
 */
static void orphans_withdraw(void)
{
	struct chan *ch, *next;

	for (ch = TAILQ_FIRST(&chans); ch && norphans; ch = next) {
		struct ctl_chan m = { .chan_id = ch->id };
		uint32_t seq = ch->seq;
		struct conn *o;

		next = TAILQ_NEXT(ch, entry);
		if (!ch->orphan || now_ms() < ch->orphan_ms + ORPHAN_MIN_MS)
			continue;
		rv_withdraw(&d.rv, ch->session, ch->id);
		ubt_chan_decide_fd(ch->fd[0], UBT_CHAN_TCP);
		o = session_conn(ch->session);
		logmsg(LOG_DEBUG, "chan %llu withdrawn: no client asked",
		       (unsigned long long)ch->id);
		chan_free(ch);
		if (o)
			conn_after_push(o, conn_send(o, CTL_R_WITHDRAWN, seq,
						     &m, sizeof(m)));
		/* conn_after_push may close o, freeing its channels: the
		 * list may have changed behind next. */
		next = TAILQ_FIRST(&chans);
	}
}

/* epoll_wait timeout for the next rendezvous deadline, -1 for none. */
static int rv_timeout(void)
{
	uint64_t dl, now;

	/* rv_next_deadline sweeps the stores: skip it when they are empty
	 * (the common case between rendezvous). */
	if (d.rv.pubs.count == 0 && d.rv.reqs.count == 0)
		return -1;
	dl = rv_next_deadline(&d.rv);
	if (dl == UINT64_MAX)
		return -1;
	now = now_ms();
	if (dl <= now)
		return 0;
	return dl - now > INT_MAX ? INT_MAX : (int)(dl - now);
}

/* epoll_wait timeout: the next orphan due for withdrawal, rendezvous
 * deadline, early request or stats reap. */
static int loop_timeout(void)
{
	int t = rv_timeout();
	uint64_t now, dl;
	struct chan *ch;

	if (norphans) {
		/* The oldest orphan's turn: an empty wait after it. */
		uint64_t due = UINT64_MAX;

		now = now_ms();
		TAILQ_FOREACH(ch, &chans, entry)
			if (ch->orphan && ch->orphan_ms + ORPHAN_MIN_MS < due)
				due = ch->orphan_ms + ORPHAN_MIN_MS;
		if (due <= now)
			return 0;
		if (t < 0 || (uint64_t)t > due - now)
			t = (int)(due - now);
	}
	if (!TAILQ_EMPTY(&earlies)) {
		dl = early_next_deadline();
		now = now_ms();
		if (dl <= now)
			return 0;
		if (t < 0 || (uint64_t)t > dl - now)
			t = dl - now > INT_MAX ? INT_MAX : (int)(dl - now);
	}

	if (!d.stats_reap_ms)
		return t;
	now = now_ms();
	if (d.stats_reap_ms <= now)
		return 0;
	if (t < 0 || (uint64_t)t > d.stats_reap_ms - now)
		t = (int)(d.stats_reap_ms - now);
	return t;
}

/*
 * Handle every complete message in c's input buffer.  Returns 0, or -errno
 * with *why set when the connection must be dropped.
 */
static int conn_dispatch(struct conn *c, const char **why)
{
	size_t off = 0;
	int err = 0;

	while (!c->dead && c->inlen - off >= sizeof(struct ctl_hdr)) {
		struct ctl_hdr h;
		const void *body;
		int fds[CTL_MAX_FDS], nfds;

		memcpy(&h, c->in + off, sizeof(h));
		err = ctl_check(&h, NULL, why);
		if (err)
			break;
		/* Fds ride with the first byte of their message: with the
		 * header complete, they are here. */
		nfds = h.type < CTL_R_FIRST ? ctl_fd_count(h.type) : 0;
		if (c->nfds < nfds) {
			*why = "message without the fds it needs";
			err = -EPROTO;
			break;
		}
		if (c->inlen - off < sizeof(h) + h.len)
			break;                  /* wait for the whole body */
		body = c->in + off + sizeof(h);
		err = ctl_check(&h, body, why);
		if (err)
			break;
		memcpy(fds, c->fds, sizeof(int) * (size_t)nfds);
		c->nfds -= nfds;
		memmove(c->fds, c->fds + nfds, sizeof(int) * (size_t)c->nfds);
		logmsg(LOG_DEBUG, "pid %ld: %s seq %u", (long)c->pid,
		       ctl_type_name(h.type), h.seq);
		if (nfds && !c->sess) {
			close_fds(fds, nfds);
			err = send_error(c, h.seq, EPERM, "no session: send "
					 "HELLO first");
			if (err)
				break;
			d.requests++;
			off += sizeof(h) + h.len;
			continue;
		}
		switch (h.type) {
		case CTL_REQ_HELLO:
			/* The body may be unaligned in the buffer: copy it. */
			{
				struct ctl_hello m;
				memcpy(&m, body, sizeof(m));
				err = do_hello(c, &h, &m);
			}
			break;
		case CTL_REQ_STATUS:
			err = do_status(c, &h);
			break;
		case CTL_REQ_SESSIONS:
			err = do_sessions(c, &h);
			break;
		case CTL_REQ_SERVICES:
			err = do_services(c, &h);
			break;
		case CTL_REQ_SERVICE_SET:
			{
				struct ctl_service_set m;
				memcpy(&m, body, sizeof(m));
				err = do_service_set(c, &h, &m);
			}
			break;
		case CTL_REQ_POLICY_FD:
			err = do_policy_fd(c, &h);
			break;
		case CTL_REQ_LISTEN:
		case CTL_REQ_UNLISTEN:
			err = do_listen(c, &h, fds[0],
					h.type == CTL_REQ_LISTEN);
			break;
		case CTL_REQ_PUBLISH:
			err = do_publish(c, &h, fds);
			break;
		case CTL_REQ_REQUEST:
			{
				struct ctl_request m;
				memcpy(&m, body, sizeof(m));
				err = do_request(c, &h, &m, fds[0]);
			}
			break;
		case CTL_REQ_LISTENERS:
			err = do_listeners(c, &h);
			break;
		case CTL_REQ_EXCLUDES:
			err = do_excludes(c, &h);
			break;
		case CTL_REQ_BOARD:
			err = do_board(c, &h);
			break;
		case CTL_REQ_ACCEPTING:
			err = do_accepting(c, &h, fds[0]);
			break;
		case CTL_REQ_DOORBELL:
		case CTL_REQ_PEER_DB:
			{
				struct ctl_doorbell m;
				memcpy(&m, body, sizeof(m));
				err = h.type == CTL_REQ_DOORBELL ?
					do_doorbell(c, &h, &m, fds) :
					do_peer_db(c, &h, &m);
			}
			break;
		/* memory pool */
		case CTL_REQ_MEM_LEASE:
		case CTL_REQ_MEM_RETURN:
		case CTL_REQ_MEM:
		case CTL_REQ_MEM_CLAIM:
			err = do_mem(c, &h, body);
			break;

		/* verbs registry */
		case CTL_REQ_VERBS_OPEN:
		case CTL_REQ_VERBS_QP:
		case CTL_REQ_VERBS_QP_DROP:
		case CTL_REQ_VERBS_CONNECT:
		case CTL_REQ_VERBS_LIST:
			{
				struct vreg_msg *out;
				size_t n;

				err = vreg_handle(c->sess ? c->sess->id : 0,
						  c->pid, c->uid, h.type, body,
						  fds, &out, &n);
				for (size_t i = 0; !err && i < n; i++)
					err = out[i].fd >= 0 ?
						conn_send_fds(c, out[i].type,
							h.seq, out[i].body,
							out[i].len, &out[i].fd,
							1) :
						conn_send(c, out[i].type, h.seq,
							  out[i].body,
							  out[i].len);
				free(out);
			}
			break;

		default:
			*why = "reply type sent as a request";
			err = -EBADMSG;
			break;
		}
		if (err) {
			if (!*why)
				*why = err == -ENOBUFS ?
				       "output queue full (client not reading)"
				       : err == -EAGAIN ?
				       "socket full, cannot pass an fd"
				       : strerror(-err);
			break;
		}
		d.requests++;
		off += sizeof(h) + h.len;
	}
	if (c->dead)
		return 0;
	if (off) {
		memmove(c->in, c->in + off, c->inlen - off);
		c->inlen -= off;
	}
	if (!err && c->nfds) {
		/* Fds may only wait for a message still arriving, and no
		 * more of them than it takes. */
		struct ctl_hdr h;

		if (c->inlen == 0) {
			*why = "fds attached to no message";
			err = -EPROTO;
		} else if (c->inlen >= sizeof(h)) {
			memcpy(&h, c->in, sizeof(h));
			if (h.type >= CTL_R_FIRST ||
			    c->nfds > ctl_fd_count(h.type)) {
				*why = "more fds than the message takes";
				err = -EPROTO;
			}
		}
	}
	return err;
}

/* Readable connection: one read, then dispatch.  May free c. */
static void conn_read(struct conn *c)
{
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(sizeof(int) * CTL_MAX_FDS * 2)];
	} cm;
	struct iovec iov = {
		.iov_base = c->in + c->inlen,
		.iov_len = sizeof(c->in) - c->inlen,
	};
	struct msghdr mh = {
		.msg_iov = &iov, .msg_iovlen = 1,
		.msg_control = cm.buf, .msg_controllen = sizeof(cm.buf),
	};
	const char *why = NULL;
	bool too_many = false;
	ssize_t n;
	int err;

	n = recvmsg(c->src.fd, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
	if (n >= 0) {
		for (struct cmsghdr *cmsg = CMSG_FIRSTHDR(&mh); cmsg;
		     cmsg = CMSG_NXTHDR(&mh, cmsg)) {
			int k;

			if (cmsg->cmsg_level != SOL_SOCKET ||
			    cmsg->cmsg_type != SCM_RIGHTS)
				continue;
			k = (int)((cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int));
			for (int i = 0; i < k; i++) {
				int fd;

				memcpy(&fd, CMSG_DATA(cmsg) + i * sizeof(int),
				       sizeof(fd));
				if (c->nfds < CTL_MAX_FDS) {
					c->fds[c->nfds++] = fd;
				} else {
					close(fd);
					too_many = true;
				}
			}
		}
		if (mh.msg_flags & MSG_CTRUNC)
			too_many = true;
		if (too_many) {
			conn_close(c, "too many fds passed");
			return;
		}
	}
	if (n < 0) {
		if (errno == EAGAIN || errno == EINTR)
			return;
		logmsg(LOG_DEBUG, "client pid %ld: read: %s", (long)c->pid,
		       strerror(errno));
		conn_close(c, NULL);
		return;
	}
	if (n == 0) {
		conn_close(c, c->inlen ? "truncated message at close" : NULL);
		return;
	}
	c->inlen += (size_t)n;
	err = conn_dispatch(c, &why);
	if (c->dead)
		return;
	if (!err)
		err = conn_flush(c);
	if (err)
		conn_close(c, why ? why : strerror(-err));
}

static void control_accept(void)
{
	for (;;) {
		struct ucred cred;
		socklen_t len = sizeof(cred);
		struct conn *c;
		int fd;

		fd = accept4(d.listen.fd, NULL, NULL,
			     SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno != EAGAIN && errno != EINTR &&
			    errno != ECONNABORTED)
				logmsg(LOG_WARNING, "accept: %s",
				       strerror(errno));
			return;
		}
		if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) {
			logmsg(LOG_WARNING, "SO_PEERCRED: %s", strerror(errno));
			close(fd);
			continue;
		}
		c = calloc(1, sizeof(*c));
		if (!c) {
			logmsg(LOG_WARNING, "accept: out of memory");
			close(fd);
			continue;
		}
		c->src.kind = EV_CONN;
		c->src.fd = fd;
		c->pid = cred.pid;
		c->uid = cred.uid;
		c->gid = cred.gid;
		c->events = EPOLLIN;
		if (ep_mod(EPOLL_CTL_ADD, fd, EPOLLIN, c) < 0) {
			close(fd);
			free(c);
			continue;
		}
		TAILQ_INSERT_TAIL(&conns, c, entry);
		logmsg(LOG_DEBUG, "client pid %ld uid %ld connected",
		       (long)c->pid, (long)c->uid);
	}
}

/*
 * Read the configuration into *c.  A missing file is the built-in
 * configuration unless it was named with -c.  Returns 0, or -errno with
 * "FILE:LINE: message" (or "FILE: message") in err.
 */
static int config_read(struct ubs_conf *c, char *err, size_t n)
{
	int r = conf_load(d.conf_path, c, err, n);

	if (r == -ENOENT && !d.conf_given) {
		conf_init(c);
		logmsg(LOG_INFO, "%s: not found, built-in defaults",
		       d.conf_path);
		return 0;
	}
	return r;
}

/* The [daemon] settings the rendezvous table and the pool follow. */
static void apply_daemon_conf(void)
{
	pool_configure(d.conf->pool_size, d.conf->pool_hugepages);
	if (d.rv_ready)
		rv_set_flags(&d.rv, d.conf->cross_netns ? 0 :
			     RV_NO_CROSS_NETNS);
}

/*
 * SIGHUP: re-read the file.  A bad file keeps the old table (and page);
 * a good one replaces the table, run-time changes included.
 */
static void config_reload(void)
{
	char err[CONF_ERR_MAX];
	struct ubs_conf *nc = malloc(sizeof(*nc)), *old = d.conf;
	int r;

	if (!nc) {
		logmsg(LOG_ERR, "reload: out of memory; keeping the old "
		       "policy");
		return;
	}
	r = config_read(nc, err, sizeof(err));
	if (r) {
		logmsg(LOG_ERR, "reload: %s; keeping the old policy", err);
		free(nc);
		return;
	}
	d.conf = nc;
	r = publish();
	if (r) {
		logmsg(LOG_ERR, "reload: policy page: %s; keeping the old "
		       "policy", strerror(-r));
		d.conf = old;
		free(nc);
		return;
	}
	free(old);
	apply_daemon_conf();
	logmsg(LOG_INFO, "reload: %s: %u services, cross_netns %s, "
	       "generation %llu", d.conf_path, nc->nsvc,
	       nc->cross_netns ? "on" : "off",
	       (unsigned long long)pp_generation(&d.page));
}

/* Returns true when the daemon must stop. */
static bool handle_signal(void)
{
	struct signalfd_siginfo si;

	while (read(d.sig.fd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
		if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT) {
			logmsg(LOG_INFO, "signal %u: exiting", si.ssi_signo);
			return true;
		}
		if (si.ssi_signo == SIGHUP)
			config_reload();
	}
	return false;
}

/* Serve until SIGTERM/SIGINT (returns 0) or a loop failure (-errno). */
static int event_loop(void)
{
	struct epoll_event ev[MAX_EVENTS];

	for (;;) {
		int n = epoll_wait(d.epfd, ev, MAX_EVENTS, loop_timeout());

		if (n < 0) {
			if (errno == EINTR)
				continue;
			logmsg(LOG_ERR, "epoll_wait: %s", strerror(errno));
			return -errno;
		}
		for (int i = 0; i < n; i++) {
			struct ev_src *src = ev[i].data.ptr;
			struct conn *c;

			switch (src->kind) {
			case EV_LISTEN:
				control_accept();
				break;
			case EV_SIGNAL:
				if (handle_signal())
					return 0;
				break;
			case EV_EARLY:
				{
					struct early *e = (struct early *)src;

					if (!e->dead)
						early_try(e, now_ms());
				}
				break;
			case EV_CONN:
				/*
				 * A connection closed earlier in this batch
				 * is never reused here: each one appears at
				 * most once per epoll_wait and is freed only
				 * from its own event.
				 */
				c = (struct conn *)src;
				if (c->dead)
					break;
				if (ev[i].events & (EPOLLERR | EPOLLHUP) &&
				    !(ev[i].events & EPOLLIN)) {
					conn_close(c, c->inlen ?
						   "truncated message at close"
						   : NULL);
					break;
				}
				if (ev[i].events & EPOLLOUT) {
					int err = conn_flush(c);
					if (err) {
						conn_close(c, NULL);
						break;
					}
				}
				if (ev[i].events & EPOLLIN)
					conn_read(c);
				break;
			}
		}
		if (rv_timeout() == 0)
			rv_tick();
		if (!TAILQ_EMPTY(&earlies) && early_next_deadline() <= now_ms())
			early_try_all();
		if (n == 0 && norphans)
			orphans_withdraw();
		if (d.stats_reap_ms && now_ms() >= d.stats_reap_ms) {
			d.stats_reap_ms = 0;
			stats_reap();
		}
		graveyard_free();
	}
}

static void cleanup(void)
{
	pool_fini();            /* first: no live process's heap punched */
	while (!TAILQ_EMPTY(&conns))
		conn_close(TAILQ_FIRST(&conns), NULL);
	graveyard_free();
	while (!TAILQ_EMPTY(&chans))
		chan_free(TAILQ_FIRST(&chans));
	if (d.rv_ready)
		rv_table_fini(&d.rv);
	d.rv_ready = false;
	for (int i = 0; i < NSA_SLOTS; i++) {
		free(nsa[i].nets);
		memset(&nsa[i], 0, sizeof(nsa[i]));
	}
	if (d.listen.fd >= 0) {
		close(d.listen.fd);
		unlink(d.sock_path);
	}
	if (d.sig.fd >= 0)
		close(d.sig.fd);
	if (d.epfd >= 0)
		close(d.epfd);
	if (proc_fd_dir >= 0)
		close(proc_fd_dir);
	proc_fd_dir = -1;
	if (d.page.base)
		ubt_seg_unmap(&d.page);
	boards_free();
	free(d.conf);
	d.conf = NULL;
}

static void __attribute__((noreturn)) usage(void)
{
	fprintf(stderr, "usage: ubsd [-df] [-c FILE]\n"
		"  -f       stay in the foreground, log to stderr\n"
		"  -d       verbose log\n"
		"  -c FILE  configuration (default " CONF_DEFAULT_PATH
		", may be missing)\n"
		"  run directory: $UBS_RUN_DIR, default " CTL_DEFAULT_RUN_DIR
		"\n");
	exit(2);
}

int main(int argc, char **argv)
{
	const char *run_dir;
	sigset_t mask;
	long owner = 0;
	bool want_fg = false;
	int ch, err, pidfd;

	while ((ch = getopt(argc, argv, "c:df")) != -1) {
		switch (ch) {
		case 'c':
			d.conf_path = optarg;
			d.conf_given = true;
			break;
		case 'd':
			d.verbose++;
			break;
		case 'f':
			want_fg = true;
			break;
		default:
			usage();
		}
	}
	if (optind != argc)
		usage();
	/* Until we daemonize, errors go to the terminal. */
	d.foreground = true;

	/* A bad configuration stops us before anything is touched. */
	{
		char cerr[CONF_ERR_MAX];

		d.conf = malloc(sizeof(*d.conf));
		if (!d.conf) {
			logmsg(LOG_ERR, "out of memory");
			return 1;
		}
		err = config_read(d.conf, cerr, sizeof(cerr));
		if (err) {
			logmsg(LOG_ERR, "%s", cerr);
			free(d.conf);
			return 1;
		}
	}

	run_dir = getenv("UBS_RUN_DIR");
	if (!run_dir || !*run_dir)
		run_dir = CTL_DEFAULT_RUN_DIR;
	if (snprintf(d.sock_path, sizeof(d.sock_path), "%s/%s", run_dir,
		     CTL_SOCK_NAME) >= (int)sizeof(d.sock_path) ||
	    snprintf(d.pid_path, sizeof(d.pid_path), "%s/%s", run_dir,
		     CTL_PID_NAME) >= (int)sizeof(d.pid_path)) {
		logmsg(LOG_ERR, "run directory path too long: %s", run_dir);
		return 1;
	}
	err = make_dirs(run_dir);
	if (err) {
		logmsg(LOG_ERR, "%s: %s", run_dir, strerror(-err));
		return 1;
	}
	pidfd = pidfile_lock(d.pid_path, &owner);
	if (pidfd == -EWOULDBLOCK) {
		fprintf(stderr, "ubsd already running (pid %ld)\n", owner);
		return 1;
	}
	if (pidfd < 0) {
		logmsg(LOG_ERR, "%s: %s", d.pid_path, strerror(-pidfd));
		return 1;
	}
	/* Ours now (the pid lock): there before the socket appears. */
	stats_dir_init(run_dir);
	stats_reap();
	d.listen.fd = control_init(d.sock_path);
	if (d.listen.fd < 0) {
		logmsg(LOG_ERR, "%s: %s", d.sock_path,
		       strerror(-d.listen.fd));
		unlink(d.pid_path);
		return 1;
	}
	signal(SIGPIPE, SIG_IGN);
	if (!want_fg) {
		openlog("ubsd", LOG_PID | LOG_NDELAY, LOG_DAEMON);
		d.foreground = false;
		err = daemonize();
		if (err) {
			logmsg(LOG_ERR, "daemonize: %s", strerror(-err));
			goto out;
		}
	}
	err = pidfile_write(pidfd);
	if (err) {
		logmsg(LOG_ERR, "%s: %s", d.pid_path, strerror(-err));
		goto out;
	}

	err = rv_table_init(&d.rv, &rv_lim);
	if (err) {
		logmsg(LOG_ERR, "rendezvous table: %s", strerror(-err));
		goto out;
	}
	d.rv_ready = true;
	apply_daemon_conf();
	err = pp_create(&d.page);
	if (!err)
		err = publish();
	if (err) {
		logmsg(LOG_ERR, "policy page: %s", strerror(-err));
		goto out;
	}

	sigemptyset(&mask);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGHUP);
	if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0 ||
	    (d.sig.fd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC)) < 0 ||
	    (d.epfd = epoll_create1(EPOLL_CLOEXEC)) < 0 ||
	    ep_mod(EPOLL_CTL_ADD, d.listen.fd, EPOLLIN, &d.listen) < 0 ||
	    ep_mod(EPOLL_CTL_ADD, d.sig.fd, EPOLLIN, &d.sig) < 0) {
		err = -errno;
		logmsg(LOG_ERR, "event loop setup: %s", strerror(errno));
		goto out;
	}
	proc_fd_dir = open("/proc/self/fd", O_RDONLY | O_DIRECTORY |
			   O_CLOEXEC);
	d.start_ms = now_ms();
	logmsg(LOG_INFO, "listening on %s (pid %ld), %u services, "
	       "cross_netns %s, policy generation %llu", d.sock_path,
	       (long)getpid(), d.conf->nsvc, d.conf->cross_netns ? "on" :
	       "off", (unsigned long long)pp_generation(&d.page));
	err = event_loop();
out:
	cleanup();
	unlink(d.pid_path);
	close(pidfd);
	return err ? 1 : 0;
}
