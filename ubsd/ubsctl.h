/* SPDX-License-Identifier: MIT */
/*
 * ubsctl.h - what ubsctl.c shares with the commands kept in their own
 * files (ubsctl_conns.c).
 */
#ifndef UBSD_UBSCTL_H
#define UBSD_UBSCTL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <dirent.h>

/* Print s as a JSON string. */
void ubsctl_json_str(const char *s);
/* Copy s for a table cell of n bytes, non-printable bytes shown as '?'. */
void ubsctl_printable(char *dst, const char *s, size_t n);
/* Print an age of ms milliseconds (1.5s, 3m07s, 2h05m). */
void ubsctl_print_age(uint64_t ms);
/* Is pid alive (EPERM counts: it exists)? */
bool ubsctl_pid_alive(pid_t pid);
/* The pid a stats file is named after, 0 if the name is not one. */
pid_t ubsctl_pid_name(const char *name);

/*
 * RUN_DIR/stats opened for reading (its path into dir[n]), after checking
 * filter (all digits: a pid; else a service name).  NULL with *rc the exit
 * code after a message naming what (the stats pages, the connections) is
 * published only there.
 */
DIR *ubsctl_stats_dir(const char *run_dir, const char *filter,
		      const char *what, char *dir, size_t n, int *rc);

/* `ubsctl [--json] [--all] conns [PID|SERVICE]`; returns the exit code. */
int ubsctl_conns(const char *run_dir, const char *filter, bool json,
		 bool all);

/* `ubsctl [--json] mem --sites PID`; returns the exit code. */
int ubsctl_sites(const char *run_dir, const char *pid, bool json);

#endif
