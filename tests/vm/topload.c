/* topload: a vCPU-like load for measuring `kvmisolate top`'s tracing overhead (suite/bench-top).
 *
 *   topload MEASURE_S PERIOD_US
 *
 * One thread named "CPU 0/KVM" (as QEMU names a vCPU thread, so `top --pid` finds it) wakes up
 * every PERIOD_US, as a vCPU does for each guest timer interrupt, and goes back to sleep: every
 * period is a wake-up and two context switches on the CPU, the events `top` traces. The main
 * thread waits for SIGUSR1 (the caller's "go"), then spins on the same CPU (the caller pins
 * both) for MEASURE_S, counting loop iterations: the CPU time left to the "guest". With
 * PERIOD_US 0 the two threads instead pass a byte back and forth through two pipes (the worst
 * case: every round trip is two wake-ups and two switches) and the count is round trips.
 * Prints its pid, then "iterations N seconds S wakeups W".
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

static long period_us;
static volatile long wakeups;
static int ping[2], pong[2];

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void *vcpu(void *arg) {
    (void)arg;
    prctl(PR_SET_NAME, "CPU 0/KVM", 0, 0, 0);
    if (period_us == 0) {
        char c;
        while (read(ping[0], &c, 1) == 1 && write(pong[1], &c, 1) == 1)
            wakeups++;
        return NULL;
    }
    struct timespec ts = {period_us / 1000000, (period_us % 1000000) * 1000};
    for (;;) {
        nanosleep(&ts, NULL);
        wakeups++;
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: topload MEASURE_S PERIOD_US\n");
        return 2;
    }
    double measure = atof(argv[1]);
    period_us = atol(argv[2]);
    if (measure <= 0 || period_us < 0) return 2;
    if (pipe(ping) != 0 || pipe(pong) != 0) return 1;
    sigset_t go;
    sigemptyset(&go);
    sigaddset(&go, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &go, NULL); /* inherited by the vCPU thread */
    pthread_t t;
    if (pthread_create(&t, NULL, vcpu, NULL) != 0) return 1;
    printf("%d\n", (int)getpid());
    fflush(stdout);
    int sig;
    sigwait(&go, &sig);
    long w0 = wakeups;
    long long start = now_ns(), end = start + (long long)(measure * 1e9);
    unsigned long long n = 0;
    long long t1;
    do {
        if (period_us == 0) {
            char c = 'x';
            if (write(ping[1], &c, 1) != 1 || read(pong[0], &c, 1) != 1) return 1;
        } else {
            /* checking the clock every 1024 iterations keeps an iteration's cost constant */
            for (volatile int i = 0; i < 1024; i++) {
            }
        }
        n++;
        t1 = now_ns();
    } while (t1 < end);
    printf("iterations %llu seconds %.6f wakeups %ld\n", n, (t1 - start) / 1e9, wakeups - w0);
    return 0;
}
