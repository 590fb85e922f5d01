/*
 * _eventtext: the JSON lines of spec 10.4 from a buffer of conntrack.EVENT_DTYPE rows.
 *
 * The plain twin is events.py's formatter (LOG_LINE / FEED_LINE with % and numpy
 * columns); the property tests hold the two byte-identical.  Here one pass over
 * the rows writes into one growing buffer, so the feed keeps up with 200,000
 * events/s where the plain one costs 5-15 us an event:
 *
 *   - floats as Python's repr (PyOS_double_to_string, mode 'r', what %r calls);
 *   - addresses with inet_ntop, as socket.inet_ntoa / inet_ntop in the twin,
 *     the previous row's text reused when its address repeats (the sniffed host);
 *   - names from the same tables as conntrack.py (a value outside them is an error);
 *   - without the GIL (the log's writer thread formats while the loop runs), taken
 *     back only for the floats that need dtoa.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <arpa/inet.h>
#include <stdint.h>
#include <string.h>

/* One event: conntrack.EVENT_DTYPE (96 bytes); the same struct as _conntrack.c's. */
typedef struct {
    double start, end;
    uint64_t me_hi, me_lo, peer_hi, peer_lo;
    uint64_t orig_packets, orig_bytes, resp_packets, resp_bytes;
    uint16_t me_port, peer_port;
    uint8_t kind, state, proto, dir, v6;
    uint8_t pad[7];
} event_t;

/* conntrack.py: KINDS, STATES, DIRS, PROTO_NAMES */
static const char *const KINDS[] = {"new", "end"};
static const char *const STATES[] = {"active", "closed", "reset", "refused", "unanswered",
                                     "timedout", "evicted", "drained"};
static const char *const DIRS[] = {"in", "out"};
enum { P_ICMP = 1, P_TCP = 6, P_UDP = 17, P_ICMP6 = 58 };

/* a line's most: two 24-byte floats, two 45-byte addresses, six 20-digit counts, names */
#define LINE_MAX_BYTES 512

/* The text so far; formatted without the GIL (``save``), taken back for dtoa alone. */
typedef struct {
    char *buf;
    size_t len, cap;
    PyThreadState *save;
} out_t;

/* Room for ``more`` bytes (raw allocator: no GIL needed); -1 when out of memory. */
static int reserve(out_t *o, size_t more)
{
    if (o->len + more <= o->cap)
        return 0;
    size_t cap = o->cap ? o->cap : 4096;
    while (cap < o->len + more)
        cap *= 2;
    char *b = PyMem_RawRealloc(o->buf, cap);
    if (!b)
        return -1;
    o->buf = b;
    o->cap = cap;
    return 0;
}

static inline void put(out_t *o, const char *s)
{
    size_t n = strlen(s);
    memcpy(o->buf + o->len, s, n);
    o->len += n;
}

static inline void put_u64(out_t *o, uint64_t v)
{
    char tmp[24];
    int k = 0;
    do {
        tmp[k++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (k)
        o->buf[o->len++] = tmp[--k];
}

/* The timestamps' common case (sec + usec / 1e6, 1 <= v < 2^33) without dtoa, which
 * costs ~500 ns here: the fewest decimals k <= 6 whose nearest k-digit decimal M / 10^k
 * reads back as v.  M < 2^53 and 10^k are exact doubles, so the one division is correctly
 * rounded (Clinger's fast path) and the test is exact; for k <= 6 the half-decimal
 * between two candidates is wider than v's ulp, so the rounded candidate is the only
 * one that can read back: the digits repr prints.  Returns 0 if it does not apply. */
static const double P10[] = {1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6};
static const uint64_t I10[] = {1, 10, 100, 1000, 10000, 100000, 1000000};

static int put_timestamp(out_t *o, double v)
{
    if (!(v >= 1.0 && v < 8589934592.0))
        return 0;
    uint64_t whole = (uint64_t)v;
    double frac = v - (double)whole;            /* exact */
    for (int k = 0; k <= 6; k++) {
        uint64_t m = whole * I10[k] + (uint64_t)(frac * P10[k] + 0.5);
        if ((double)m / P10[k] != v)
            continue;
        put_u64(o, m / I10[k]);
        o->buf[o->len++] = '.';
        if (!k)
            o->buf[o->len++] = '0';
        for (uint64_t rest = m % I10[k], d = I10[k] / 10; d; d /= 10)
            o->buf[o->len++] = (char)('0' + rest / d % 10);
        return 1;
    }
    return 0;
}

/* repr(float): the shortest text that reads back as the same double; -1 out of memory. */
static int put_float(out_t *o, double v)
{
    if (put_timestamp(o, v))
        return 0;
    PyEval_RestoreThread(o->save);              /* dtoa allocates: the GIL, briefly */
    char *s = PyOS_double_to_string(v, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
    if (s) {
        put(o, s);
        PyMem_Free(s);
    } else
        PyErr_Clear();
    o->save = PyEval_SaveThread();
    return s ? 0 : -1;
}

/* An address as text, cached by its last (hi, lo, v6) so the sniffed host is formatted once. */
typedef struct {
    uint64_t hi, lo;
    int v6, valid;
    char text[INET6_ADDRSTRLEN];
} addr_cache_t;

static const char *address(addr_cache_t *c, uint64_t hi, uint64_t lo, int v6)
{
    if (c->valid && c->hi == hi && c->lo == lo && c->v6 == v6)
        return c->text;
    unsigned char raw[16];
    if (v6) {
        for (int k = 0; k < 8; k++) {
            raw[k] = (unsigned char)(hi >> (56 - 8 * k));
            raw[8 + k] = (unsigned char)(lo >> (56 - 8 * k));
        }
        inet_ntop(AF_INET6, raw, c->text, sizeof c->text);
    } else {                                    /* by hand: glibc's inet_ntop is sprintf */
        uint32_t a = (uint32_t)lo;              /* the twin takes the low 32 bits */
        char *t = c->text;
        for (int k = 0; k < 4; k++) {
            unsigned b = (a >> (24 - 8 * k)) & 0xff;
            if (b >= 100)
                *t++ = (char)('0' + b / 100);
            if (b >= 10)
                *t++ = (char)('0' + b / 10 % 10);
            *t++ = (char)('0' + b % 10);
            *t++ = k < 3 ? '.' : '\0';
        }
    }
    c->hi = hi;
    c->lo = lo;
    c->v6 = v6;
    c->valid = 1;
    return c->text;
}

static const char *proto_name(uint8_t p, char *tmp)
{
    switch (p) {
    case P_TCP: return "tcp";
    case P_UDP: return "udp";
    case P_ICMP: return "icmp";
    case P_ICMP6: return "icmp6";
    }
    snprintf(tmp, 4, "%u", p);
    return tmp;
}

static int check(const event_t *e)
{
    if (e->kind < 2 && e->state < sizeof STATES / sizeof *STATES && e->dir < 2)
        return 0;
    PyErr_SetString(PyExc_ValueError, "events: kind, state or dir out of range");
    return -1;
}

static int one_line(out_t *o, const event_t *e, int feed, addr_cache_t *me, addr_cache_t *peer)
{
    char tmp[4];
    int icmp = e->proto == P_ICMP || e->proto == P_ICMP6;
    if (reserve(o, LINE_MAX_BYTES) < 0)
        return -1;
    if (feed) {
        put(o, "{\"event\": \"");
        put(o, KINDS[e->kind]);
        put(o, "\", \"start\": ");
    } else
        put(o, "{\"start\": ");
    if (put_float(o, e->start) < 0)
        return -1;
    put(o, ", \"end\": ");
    if (put_float(o, e->end) < 0)
        return -1;
    put(o, ", \"proto\": \"");
    put(o, proto_name(e->proto, tmp));
    put(o, "\", \"me\": \"");
    put(o, address(me, e->me_hi, e->me_lo, e->v6 != 0));
    put(o, "\", \"me_port\": ");
    put_u64(o, icmp ? 0 : e->me_port);
    put(o, ", \"peer\": \"");
    put(o, address(peer, e->peer_hi, e->peer_lo, e->v6 != 0));
    put(o, "\", \"peer_port\": ");
    put_u64(o, icmp ? 0 : e->peer_port);
    put(o, ", \"dir\": \"");
    put(o, DIRS[e->dir]);
    put(o, "\", \"state\": \"");
    put(o, STATES[e->state]);
    put(o, "\", \"orig_packets\": ");
    put_u64(o, e->orig_packets);
    put(o, ", \"orig_bytes\": ");
    put_u64(o, e->orig_bytes);
    put(o, ", \"resp_packets\": ");
    put_u64(o, e->resp_packets);
    put(o, ", \"resp_bytes\": ");
    put_u64(o, e->resp_bytes);
    put(o, "}\n");
    return 0;
}

/* lines(events, feed, ended_only) -> bytes */
static PyObject *lines(PyObject *self, PyObject *args)
{
    Py_buffer view;
    int feed, ended_only;
    if (!PyArg_ParseTuple(args, "y*pp", &view, &feed, &ended_only))
        return NULL;
    if (view.len % (Py_ssize_t)sizeof(event_t)) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "events: not rows of conntrack.EVENT_DTYPE");
        return NULL;
    }
    const event_t *ev = view.buf;
    size_t n = (size_t)view.len / sizeof(event_t), i;
    out_t o = {NULL, 0, 0, NULL};
    addr_cache_t me = {0}, peer = {0};
    PyObject *result = NULL;
    for (i = 0; i < n; i++)
        if (check(&ev[i]) < 0)
            goto done;
    /* The log's writer thread formats while the loop runs: without the GIL. */
    o.save = PyEval_SaveThread();
    for (i = 0; i < n; i++)
        if (!(ended_only && ev[i].kind != 1) && one_line(&o, &ev[i], feed, &me, &peer) < 0)
            break;
    PyEval_RestoreThread(o.save);
    if (i < n)
        PyErr_NoMemory();
    else
        result = PyBytes_FromStringAndSize(o.buf ? o.buf : "", (Py_ssize_t)o.len);
done:
    PyMem_RawFree(o.buf);
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef methods[] = {
    {"lines", lines, METH_VARARGS,
     "lines(events, feed, ended_only) -> bytes: the 10.4 JSON lines of EVENT_DTYPE rows "
     "(feed: with the leading event field; ended_only: end events alone, the log's)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_eventtext",
    .m_doc = "The JSON lines of connection events (spec 10.4); see events.py.",
    .m_methods = methods,
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__eventtext(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m && PyModule_AddIntConstant(m, "EVENT_SIZE", sizeof(event_t)) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
