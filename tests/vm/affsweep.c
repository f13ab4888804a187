/* affsweep: what tuna's "isolate" does, for comparison with a partition: walk every thread in
 * /proc/<pid>/task/<tid> and sched_setaffinity() it to CPULIST, in one process (no fork per
 * thread). Threads that refuse (per-CPU kthreads, PF_NO_SETAFFINITY) are counted, not fatal.
 *
 *   affsweep CPULIST        e.g. affsweep 0-1,4-5
 *
 * Prints "threads=N moved=M refused=R usec=T".
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int parse_list(const char *s, cpu_set_t *set) {
    CPU_ZERO(set);
    while (*s) {
        char *end;
        long a = strtol(s, &end, 10), b = a;
        if (end == s) return -1;
        if (*end == '-') { s = end + 1; b = strtol(s, &end, 10); if (end == s) return -1; }
        for (long c = a; c <= b; c++) CPU_SET(c, set);
        s = end;
        if (*s == ',') s++;
        else if (*s) return -1;
    }
    return 0;
}

int main(int argc, char **argv) {
    cpu_set_t set;
    if (argc != 2 || parse_list(argv[1], &set)) { fprintf(stderr, "usage: affsweep CPULIST\n"); return 2; }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    long threads = 0, moved = 0, refused = 0;
    DIR *proc = opendir("/proc");
    struct dirent *p;
    while (proc && (p = readdir(proc))) {
        if (p->d_name[0] < '0' || p->d_name[0] > '9') continue;
        char path[300];
        snprintf(path, sizeof path, "/proc/%s/task", p->d_name);
        DIR *tasks = opendir(path);
        struct dirent *t;
        while (tasks && (t = readdir(tasks))) {
            if (t->d_name[0] < '0' || t->d_name[0] > '9') continue;
            threads++;
            if (sched_setaffinity(atoi(t->d_name), sizeof set, &set) == 0) moved++;
            else refused++;
        }
        if (tasks) closedir(tasks);
    }
    if (proc) closedir(proc);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long usec = (t1.tv_sec - t0.tv_sec) * 1000000L + (t1.tv_nsec - t0.tv_nsec) / 1000;
    printf("threads=%ld moved=%ld refused=%ld usec=%ld\n", threads, moved, refused, usec);
    return 0;
}
