/* SPDX-License-Identifier: MIT */
/*
 * socket.c - pass-through interposition of the socket calls.
 *
 * Each entry point counts the call and hands it to libc unchanged: same
 * arguments, same return value, same errno (set by the real call only).
 * The real shim (issue 4) will dispatch on the fd here.
 */
#include "preload.h"

UBS_EXPORT int socket(int domain, int type, int protocol)
{
	int err = ubs_enter(UBS_STAT_SOCKET);

	return err ? ubs_fail(err) : ubs_real.socket(domain, type, protocol);
}

UBS_EXPORT int bind(int fd, __CONST_SOCKADDR_ARG addr, socklen_t len)
{
	int err = ubs_enter(UBS_STAT_BIND);

	return err ? ubs_fail(err) : ubs_real.bind(fd, addr, len);
}

UBS_EXPORT int listen(int fd, int backlog)
{
	int err = ubs_enter(UBS_STAT_LISTEN);

	return err ? ubs_fail(err) : ubs_real.listen(fd, backlog);
}

UBS_EXPORT int connect(int fd, __CONST_SOCKADDR_ARG addr, socklen_t len)
{
	int err = ubs_enter(UBS_STAT_CONNECT);

	return err ? ubs_fail(err) : ubs_real.connect(fd, addr, len);
}

UBS_EXPORT int accept(int fd, __SOCKADDR_ARG addr, socklen_t *restrict len)
{
	int err = ubs_enter(UBS_STAT_ACCEPT);

	return err ? ubs_fail(err) : ubs_real.accept(fd, addr, len);
}

UBS_EXPORT int accept4(int fd, __SOCKADDR_ARG addr, socklen_t *restrict len, int flags)
{
	int err = ubs_enter(UBS_STAT_ACCEPT4);

	return err ? ubs_fail(err) : ubs_real.accept4(fd, addr, len, flags);
}

UBS_EXPORT int close(int fd)
{
	int err = ubs_enter(UBS_STAT_CLOSE);

	return err ? ubs_fail(err) : ubs_real.close(fd);
}
