/* fakevm: a stand-in for a VM's QEMU process in the kvmisolate VM suite.
 *
 *   fakevm NTHREADS [BUSY_PERCENT]
 *
 * Starts NTHREADS threads named vcpu0..vcpuN-1 (with FAKEVM_QEMU_NAMES=1: "CPU 0/KVM"...) that each spin for BUSY_PERCENT of every 10 ms
 * (default 2: under software emulation spinners steal the one emulation thread from the guest's
 * housekeeping work) and sleep the rest. The main thread (named fakevm-main) waits for a signal. Threads are
 * real threads of one process, so `--pid` moves them all and every one shows up in
 * /proc/PID/task. Prints its pid and exits on SIGTERM/SIGINT.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

static int busy_pct = 2;

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void *vcpu(void *arg) {
    char name[16];
    /* FAKEVM_QEMU_NAMES=1: QEMU's names ("CPU 0/KVM"), as `kvmisolate top` recognises them */
    const char *qemu = getenv("FAKEVM_QEMU_NAMES");
    snprintf(name, sizeof name, qemu && *qemu == '1' ? "CPU %ld/KVM" : "vcpu%ld", (long)arg);
    prctl(PR_SET_NAME, name, 0, 0, 0);
    if (busy_pct == 0)  /* idle threads (benchmarks): block, no wake-ups */
        for (;;) pause();
    const long long period = 10000000LL, busy = period * busy_pct / 100;
    for (;;) {
        long long start = now_ns();
        volatile unsigned long x = 0;
        while (now_ns() - start < busy) x++;
        if (period - busy > 0) {
            struct timespec ts = {0, (long)(period - busy)};
            nanosleep(&ts, NULL);
        }
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: fakevm NTHREADS [BUSY_PERCENT]\n");
        return 2;
    }
    long n = strtol(argv[1], NULL, 10);
    if (argc > 2) busy_pct = atoi(argv[2]);
    if (n < 0 || n > 4096 || busy_pct < 0 || busy_pct > 100) return 2;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, NULL); /* threads inherit: only sigwait below gets them */
    prctl(PR_SET_NAME, "fakevm-main", 0, 0, 0);
    for (long i = 0; i < n; i++) {
        pthread_t t;
        if (pthread_create(&t, NULL, vcpu, (void *)i) != 0) {
            perror("pthread_create");
            return 1;
        }
    }
    printf("%d\n", (int)getpid());
    fflush(stdout);
    int sig;
    sigwait(&set, &sig);
    return 0;
}
