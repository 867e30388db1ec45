/*
 * loadgen: a small TCP load generator for line-echo servers (tgate's bench).
 *
 *   cc -O2 -o bench/build/loadgen bench/loadgen.c
 *   bench/build/loadgen --port 7000 --mode closed --connections 50 --duration 10
 *
 * One thread, epoll, non-blocking sockets, no dependencies. Every request is
 * one 32-byte line (31 printable bytes + '\n') naming its connection and
 * sequence number; the server must send back exactly those 32 bytes, and
 * every reply is compared byte for byte (a mismatch is an error, and the
 * connection is closed and reopened since its stream can no longer be
 * trusted).
 *
 * Modes:
 *   closed     each connection sends one request and waits for its echo
 *              before sending the next (latency = send -> full echo).
 *   pipelined  each connection keeps --depth requests in flight (default 16);
 *              latency is per request, send -> its full echo.
 *   churn      each of --connections churners loops: connect, send one
 *              request, wait for the echo, close. Latency = connect() start
 *              -> full echo, i.e. the whole connection. Reports conn/s.
 *
 * Phases: ramp (closed/pipelined only: open every connection and wait until
 * each has had one reply, at most --ramp-timeout seconds), --warmup seconds
 * (load runs, nothing is recorded), then --duration seconds measured.
 *
 * Output: one JSON line on stdout, e.g.
 *   {"mode":"closed","connections":50,"depth":1,"requests":123456,
 *    "seconds":10.000,"rps":12345.6,"conn_per_s":0,"p50_us":..,"p90_us":..,
 *    "p99_us":..,"p999_us":..,"max_us":..,"errors":0,...,"cpu_user_s":..,
 *    "cpu_sys_s":..,"cpu_pct":..}
 * Latencies come from a log-bucketed histogram of CLOCK_MONOTONIC nanosecond
 * samples (128 sub-buckets per power of two: < 0.8% relative error).
 * cpu_* is this process's getrusage() over the measured window; near 100%
 * means the generator, not the server, was the bottleneck.
 * stderr gets "loadgen: measuring" and "loadgen: measured" lines when the
 * measured window starts and ends (bench/run.py samples server CPU there).
 * Exit status: 0 when the run completed (even with errors), 2 on bad usage,
 * 1 when nothing could be measured at all.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define REQ_LEN 32
#define MAX_DEPTH 1024
#define RECONNECT_DELAY_NS 10000000LL /* 10 ms between a failure and a retry */

/* ------------------------------------------------------------ histogram */

#define SUB_BITS 7
#define SUB_COUNT (1 << SUB_BITS)           /* 128 */
#define HIST_BUCKETS (2 * SUB_COUNT + 57 * SUB_COUNT)

typedef struct {
    uint64_t counts[HIST_BUCKETS];
    uint64_t total;
    uint64_t max;
    uint64_t min;
} hist_t;

static int hist_index(uint64_t v) {
    if (v < 2 * SUB_COUNT) return (int)v;
    int msb = 63 - __builtin_clzll(v);
    int shift = msb - SUB_BITS;             /* >= 1 */
    int idx = 2 * SUB_COUNT + (shift - 1) * SUB_COUNT + (int)((v >> shift) - SUB_COUNT);
    return idx < HIST_BUCKETS ? idx : HIST_BUCKETS - 1;
}

/* Midpoint of a bucket's range (what the bucket stands for). */
static double hist_value(int idx) {
    if (idx < 2 * SUB_COUNT) return (double)idx;
    int shift = (idx - 2 * SUB_COUNT) / SUB_COUNT + 1;
    uint64_t m = (uint64_t)((idx - 2 * SUB_COUNT) % SUB_COUNT + SUB_COUNT);
    double lo = (double)(m << shift);
    return lo + (double)((1ULL << shift) - 1) / 2.0;
}

static void hist_record(hist_t *h, uint64_t v) {
    h->counts[hist_index(v)]++;
    h->total++;
    if (v > h->max) h->max = v;
    if (h->total == 1 || v < h->min) h->min = v;
}

static double hist_percentile(const hist_t *h, double q) {
    if (h->total == 0) return 0.0;
    uint64_t rank = (uint64_t)(q * (double)h->total + 0.999999);
    if (rank < 1) rank = 1;
    if (rank > h->total) rank = h->total;
    uint64_t seen = 0;
    for (int i = 0; i < HIST_BUCKETS; i++) {
        seen += h->counts[i];
        if (seen >= rank) {
            double v = hist_value(i);
            if (v > (double)h->max) v = (double)h->max;
            if (v < (double)h->min) v = (double)h->min;
            return v;
        }
    }
    return (double)h->max;
}

/* ------------------------------------------------------------ state */

enum { MODE_CLOSED, MODE_PIPELINED, MODE_CHURN };
enum { ST_IDLE, ST_CONNECTING, ST_OPEN, ST_WAIT_RETRY };

typedef struct {
    int fd;
    int state;
    uint32_t id;
    uint64_t seq;                 /* next sequence number to send */
    /* in-flight requests, oldest first: sequence numbers and send times */
    uint64_t fl_seq[MAX_DEPTH];
    int64_t fl_t[MAX_DEPTH];
    int fl_head, fl_count;
    char out[MAX_DEPTH * REQ_LEN];
    int out_off, out_len;         /* unsent bytes: out[out_off .. out_len) */
    char in[MAX_DEPTH * REQ_LEN + REQ_LEN];
    int in_len;
    int64_t t_connect;            /* churn: when connect() started */
    int64_t retry_at;
    int want_out;                 /* EPOLLOUT registered */
    int ramped;                   /* had one reply */
    uint64_t done_measured;       /* replies in the measured window */
} conn_t;

static struct {
    int mode;
    const char *host;
    const char *port;
    int connections;
    int depth;
    double duration, warmup, ramp_timeout;
    struct sockaddr_storage addr;
    socklen_t addrlen;
} cfg = {MODE_CLOSED, "127.0.0.1", NULL, 1, 16, 10.0, 1.0, 60.0, {0}, 0};

static int epfd;
static conn_t *conns;
static int measuring = 0;
static hist_t hist;
static uint64_t n_requests, n_conns_done;
static uint64_t err_mismatch, err_closed, err_reset, err_connect;
static uint64_t connects_ok;
static int pending_retries = 0;
static int n_ramped = 0;
static volatile sig_atomic_t interrupted = 0;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void on_signal(int sig) { (void)sig; interrupted = 1; }

/* The request line for (connection, seq): 31 printable bytes then '\n'. */
static void make_request(char *dst, uint32_t id, uint64_t seq) {
    char tmp[64];
    int n = snprintf(tmp, sizeof tmp, "c%06u s%012llu ", id, (unsigned long long)seq);
    memset(dst, '.', REQ_LEN - 1);
    memcpy(dst, tmp, n < REQ_LEN - 1 ? n : REQ_LEN - 1);
    dst[REQ_LEN - 1] = '\n';
}

static void ep_set(conn_t *c, int want_out) {
    struct epoll_event ev;
    ev.events = EPOLLIN | (want_out ? EPOLLOUT : 0);
    ev.data.ptr = c;
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
    c->want_out = want_out;
}

static void conn_close(conn_t *c) {
    if (c->fd >= 0) {
        epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
    }
    c->fd = -1;
    c->state = ST_IDLE;
    c->fl_head = c->fl_count = 0;
    c->out_off = c->out_len = 0;
    c->in_len = 0;
    c->want_out = 0;
}

static void schedule_retry(conn_t *c) {
    conn_close(c);
    c->state = ST_WAIT_RETRY;
    c->retry_at = now_ns() + RECONNECT_DELAY_NS;
    pending_retries++;
}

static void count_error(uint64_t *counter) {
    if (measuring) (*counter)++;
}

/* Try to write what is queued; returns -1 if the connection failed. */
static int flush_out(conn_t *c) {
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, (size_t)(c->out_len - c->out_off),
                         MSG_NOSIGNAL);
        if (n > 0) {
            c->out_off += (int)n;
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!c->want_out) ep_set(c, 1);
            return 0;
        }
        if (n < 0 && errno == EINTR) continue;
        return -1;
    }
    c->out_off = c->out_len = 0;
    if (c->want_out) ep_set(c, 0);
    return 0;
}

/* Queue requests until `target` are in flight, then write them. */
static int fill(conn_t *c, int target) {
    if (c->out_off > 0 && c->out_off == c->out_len) c->out_off = c->out_len = 0;
    int64_t t = now_ns();
    while (c->fl_count < target) {
        if (c->out_len + REQ_LEN > (int)sizeof c->out) {
            /* compact */
            memmove(c->out, c->out + c->out_off, (size_t)(c->out_len - c->out_off));
            c->out_len -= c->out_off;
            c->out_off = 0;
            if (c->out_len + REQ_LEN > (int)sizeof c->out) break;
        }
        int slot = (c->fl_head + c->fl_count) % MAX_DEPTH;
        c->fl_seq[slot] = c->seq;
        c->fl_t[slot] = t;
        make_request(c->out + c->out_len, c->id, c->seq);
        c->out_len += REQ_LEN;
        c->seq++;
        c->fl_count++;
    }
    return flush_out(c);
}

static int start_connect(conn_t *c) {
    int fd = socket(cfg.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        count_error(&err_connect);
        c->state = ST_WAIT_RETRY;
        c->retry_at = now_ns() + RECONNECT_DELAY_NS;
        pending_retries++;
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->fd = fd;
    c->t_connect = now_ns();
    c->fl_head = c->fl_count = 0;
    c->out_off = c->out_len = 0;
    c->in_len = 0;
    struct epoll_event ev;
    ev.events = EPOLLIN | EPOLLOUT;
    ev.data.ptr = c;
    c->want_out = 1;
    int r = connect(fd, (struct sockaddr *)&cfg.addr, cfg.addrlen);
    if (r < 0 && errno != EINPROGRESS) {
        close(fd);
        c->fd = -1;
        count_error(&err_connect);
        c->state = ST_WAIT_RETRY;
        c->retry_at = now_ns() + RECONNECT_DELAY_NS;
        pending_retries++;
        return -1;
    }
    c->state = ST_CONNECTING;
    epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
    return 0;
}

static int per_conn_target(void) {
    return cfg.mode == MODE_PIPELINED ? cfg.depth : 1;
}

static void on_connected(conn_t *c) {
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0) {
        count_error(&err_connect);
        schedule_retry(c);
        return;
    }
    c->state = ST_OPEN;
    connects_ok++;
    ep_set(c, 0);
    if (fill(c, per_conn_target()) < 0) {
        count_error(&err_reset);
        schedule_retry(c);
    }
}

/* Handle replies; returns -1 when the connection was dropped. */
static int on_readable(conn_t *c) {
    for (;;) {
        ssize_t n = recv(c->fd, c->in + c->in_len, sizeof c->in - (size_t)c->in_len, 0);
        if (n == 0) {
            count_error(&err_closed);
            schedule_retry(c);
            return -1;
        }
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            if (errno == EINTR) continue;
            count_error(&err_reset);
            schedule_retry(c);
            return -1;
        }
        c->in_len += (int)n;
        int off = 0;
        int64_t t = now_ns();
        while (c->in_len - off >= REQ_LEN) {
            if (c->fl_count == 0) {  /* bytes nobody asked for */
                count_error(&err_mismatch);
                schedule_retry(c);
                return -1;
            }
            char expect[REQ_LEN];
            int slot = c->fl_head;
            make_request(expect, c->id, c->fl_seq[slot]);
            if (memcmp(expect, c->in + off, REQ_LEN) != 0) {
                count_error(&err_mismatch);
                schedule_retry(c);
                return -1;
            }
            int64_t lat = cfg.mode == MODE_CHURN ? t - c->t_connect : t - c->fl_t[slot];
            c->fl_head = (c->fl_head + 1) % MAX_DEPTH;
            c->fl_count--;
            off += REQ_LEN;
            if (!c->ramped) {
                c->ramped = 1;
                n_ramped++;
            }
            if (measuring) {
                hist_record(&hist, lat > 0 ? (uint64_t)lat : 0);
                n_requests++;
                c->done_measured++;
            }
            if (cfg.mode == MODE_CHURN) {
                if (c->in_len - off > 0) {  /* more than one reply */
                    count_error(&err_mismatch);
                }
                if (measuring) n_conns_done++;
                conn_close(c);
                start_connect(c);
                return -1;
            }
        }
        if (off > 0) {
            memmove(c->in, c->in + off, (size_t)(c->in_len - off));
            c->in_len -= off;
            if (fill(c, per_conn_target()) < 0) {
                count_error(&err_reset);
                schedule_retry(c);
                return -1;
            }
        }
        if ((size_t)c->in_len == sizeof c->in) break;  /* cannot happen: bounded by depth */
    }
    return 0;
}

static void run_retries(int64_t t) {
    if (pending_retries == 0) return;
    for (int i = 0; i < cfg.connections; i++) {
        conn_t *c = &conns[i];
        if (c->state == ST_WAIT_RETRY && c->retry_at <= t) {
            pending_retries--;
            c->state = ST_IDLE;
            start_connect(c);
        }
    }
}

static int run_until(int64_t deadline, int until_ramped) {
    struct epoll_event evs[256];
    for (;;) {
        int64_t t = now_ns();
        if (t >= deadline || interrupted) return 0;
        if (until_ramped && n_ramped >= cfg.connections) return 1;
        run_retries(t);
        int64_t wait_ms = (deadline - t) / 1000000 + 1;
        if (pending_retries && wait_ms > 5) wait_ms = 5;
        if (until_ramped && wait_ms > 50) wait_ms = 50;
        int n = epoll_wait(epfd, evs, 256, (int)wait_ms);
        if (n < 0) {
            if (errno == EINTR) continue;
            perror("epoll_wait");
            exit(1);
        }
        for (int i = 0; i < n; i++) {
            conn_t *c = evs[i].data.ptr;
            if (c->fd < 0) continue;
            if (c->state == ST_CONNECTING) {
                if (evs[i].events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) on_connected(c);
                continue;
            }
            if (c->state != ST_OPEN) continue;
            if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
                if (on_readable(c) < 0) continue;
            }
            if ((evs[i].events & EPOLLOUT) && c->state == ST_OPEN) {
                if (flush_out(c) < 0) {
                    count_error(&err_reset);
                    schedule_retry(c);
                }
            }
        }
    }
}

static double tv_s(struct timeval tv) { return (double)tv.tv_sec + (double)tv.tv_usec / 1e6; }

static void usage(void) {
    fprintf(stderr,
            "usage: loadgen --port PORT [--host 127.0.0.1] [--mode closed|pipelined|churn]\n"
            "               [--connections N] [--duration S] [--warmup S] [--depth D]\n"
            "               [--ramp-timeout S]\n");
    exit(2);
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) usage();
        if (!v) usage();
        if (!strcmp(a, "--host")) cfg.host = v;
        else if (!strcmp(a, "--port")) cfg.port = v;
        else if (!strcmp(a, "--connections") || !strcmp(a, "-c")) cfg.connections = atoi(v);
        else if (!strcmp(a, "--duration") || !strcmp(a, "-d")) cfg.duration = atof(v);
        else if (!strcmp(a, "--warmup")) cfg.warmup = atof(v);
        else if (!strcmp(a, "--depth")) cfg.depth = atoi(v);
        else if (!strcmp(a, "--ramp-timeout")) cfg.ramp_timeout = atof(v);
        else if (!strcmp(a, "--mode")) {
            if (!strcmp(v, "closed")) cfg.mode = MODE_CLOSED;
            else if (!strcmp(v, "pipelined")) cfg.mode = MODE_PIPELINED;
            else if (!strcmp(v, "churn")) cfg.mode = MODE_CHURN;
            else usage();
        } else usage();
        i++;
    }
    if (!cfg.port || cfg.connections < 1 || cfg.duration <= 0 || cfg.warmup < 0 ||
        cfg.depth < 1 || cfg.depth > MAX_DEPTH)
        usage();
    if (cfg.mode != MODE_PIPELINED) cfg.depth = 1;

    struct addrinfo hints = {0}, *res;
    hints.ai_socktype = SOCK_STREAM;
    int gai = getaddrinfo(cfg.host, cfg.port, &hints, &res);
    if (gai != 0) {
        fprintf(stderr, "loadgen: %s:%s: %s\n", cfg.host, cfg.port, gai_strerror(gai));
        return 2;
    }
    memcpy(&cfg.addr, res->ai_addr, res->ai_addrlen);
    cfg.addrlen = res->ai_addrlen;
    freeaddrinfo(res);

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);

    epfd = epoll_create1(EPOLL_CLOEXEC);
    conns = calloc((size_t)cfg.connections, sizeof(conn_t));
    if (!conns) { perror("calloc"); return 1; }
    for (int i = 0; i < cfg.connections; i++) {
        conns[i].fd = -1;
        conns[i].id = (uint32_t)i;
        conns[i].state = ST_IDLE;
    }

    int64_t t_start = now_ns();
    for (int i = 0; i < cfg.connections; i++) start_connect(&conns[i]);

    /* ramp: every connection open and answered once */
    double ramp_s = 0.0;
    int ramp_missing = 0;
    if (cfg.mode != MODE_CHURN) {
        run_until(t_start + (int64_t)(cfg.ramp_timeout * 1e9), 1);
        ramp_s = (double)(now_ns() - t_start) / 1e9;
        for (int i = 0; i < cfg.connections; i++) ramp_missing += !conns[i].ramped;
    }
    /* warmup */
    int64_t t = now_ns();
    run_until(t + (int64_t)(cfg.warmup * 1e9), 0);

    /* measured window */
    struct rusage ru0, ru1;
    getrusage(RUSAGE_SELF, &ru0);
    fputs("loadgen: measuring\n", stderr);  /* markers for a driver sampling server CPU */
    fflush(stderr);
    measuring = 1;
    int64_t t0 = now_ns();
    run_until(t0 + (int64_t)(cfg.duration * 1e9), 0);
    int64_t t1 = now_ns();
    measuring = 0;
    getrusage(RUSAGE_SELF, &ru1);
    fputs("loadgen: measured\n", stderr);
    fflush(stderr);

    double secs = (double)(t1 - t0) / 1e9;
    double user = tv_s(ru1.ru_utime) - tv_s(ru0.ru_utime);
    double sys = tv_s(ru1.ru_stime) - tv_s(ru0.ru_stime);

    /* stalls: requests still unanswered at the end, and connections that
     * completed nothing in the measured window */
    uint64_t inflight = 0;
    double oldest_ms = 0.0;
    int idle_conns = 0, open_conns = 0;
    for (int i = 0; i < cfg.connections; i++) {
        conn_t *c = &conns[i];
        if (c->state == ST_OPEN) open_conns++;
        if (cfg.mode != MODE_CHURN && c->done_measured == 0) idle_conns++;
        if (c->state == ST_OPEN && c->fl_count > 0) {
            inflight += (uint64_t)c->fl_count;
            double age = (double)(t1 - c->fl_t[c->fl_head]) / 1e6;
            if (age > oldest_ms) oldest_ms = age;
        }
    }
    uint64_t errors = err_mismatch + err_closed + err_reset + err_connect;
    const char *mode = cfg.mode == MODE_CLOSED ? "closed"
                       : cfg.mode == MODE_PIPELINED ? "pipelined" : "churn";
    printf("{\"mode\":\"%s\",\"connections\":%d,\"depth\":%d,\"requests\":%llu,"
           "\"seconds\":%.3f,\"rps\":%.1f,\"conn_per_s\":%.1f,"
           "\"p50_us\":%.1f,\"p90_us\":%.1f,\"p99_us\":%.1f,\"p999_us\":%.1f,\"max_us\":%.1f,"
           "\"errors\":%llu,\"err_mismatch\":%llu,\"err_closed\":%llu,\"err_reset\":%llu,"
           "\"err_connect\":%llu,\"connects\":%llu,\"inflight_at_end\":%llu,"
           "\"oldest_inflight_ms\":%.1f,\"idle_conns\":%d,\"open_conns\":%d,"
           "\"ramp_s\":%.3f,\"ramp_missing\":%d,"
           "\"cpu_user_s\":%.3f,\"cpu_sys_s\":%.3f,\"cpu_pct\":%.1f,\"interrupted\":%s}\n",
           mode, cfg.connections, cfg.depth, (unsigned long long)n_requests, secs,
           secs > 0 ? (double)n_requests / secs : 0.0,
           secs > 0 ? (double)n_conns_done / secs : 0.0,
           hist_percentile(&hist, 0.50) / 1e3, hist_percentile(&hist, 0.90) / 1e3,
           hist_percentile(&hist, 0.99) / 1e3, hist_percentile(&hist, 0.999) / 1e3,
           (double)hist.max / 1e3, (unsigned long long)errors,
           (unsigned long long)err_mismatch, (unsigned long long)err_closed,
           (unsigned long long)err_reset, (unsigned long long)err_connect,
           (unsigned long long)connects_ok, (unsigned long long)inflight, oldest_ms,
           idle_conns, open_conns, ramp_s, ramp_missing, user, sys,
           secs > 0 ? 100.0 * (user + sys) / secs : 0.0, interrupted ? "true" : "false");
    fflush(stdout);
    for (int i = 0; i < cfg.connections; i++) conn_close(&conns[i]);
    return n_requests > 0 ? 0 : 1;
}
