/*
 * _fastread: the replay's read path in one pass per batch (issue 16).
 *
 * Two functions, each the C twin of a numpy step that stays as the plain
 * model (the property tests in tests/test_fastread.py hold them equal):
 *
 *   walk     the classic pcap record chain of a batch (pcapfile.Reader's
 *            lockstep lanes and plain walk: the same records, the same stop
 *            at a bogus or cut one);
 *   prepare  per packet of a batch: the filter (a classic BPF interpreter
 *            with bpfvm.py's semantics), the decoding (batch.decode_batch),
 *            the target address (batch.targets) and, with connections, the
 *            FLOW record (batch.flows), into the arrays batch.Prepared holds.
 *
 * And the accounting's per-IP rule (SPEC 4.2, accounting.count_one) over a
 * batch's packets in order, on the record columns in place: the twin of
 * accounting._count_columns's sorted groups.
 *
 * Nothing here allocates Python objects per packet: the caller hands in the
 * output arrays (numpy arrays through the buffer protocol), sized for every
 * packet of the batch, and slices them by the counts returned.  Every read
 * of capture bytes is checked against the captured length, and every packet
 * against the buffer's end, so a hostile file cannot make it read astray.
 * walk and prepare run without the GIL (they touch no Python object once the
 * buffers are held): a tracking replay's reading thread overlaps them with the
 * connection tracker's core.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* ------------------------------------------------------------------ bytes */

static inline uint32_t be16(const uint8_t *p) { return (uint32_t)p[0] << 8 | p[1]; }

static inline uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static inline uint64_t be64(const uint8_t *p)
{
    return (uint64_t)be32(p) << 32 | be32(p + 4);
}

static inline uint32_t u32_in(const uint8_t *p, int swapped)
{
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return swapped ? __builtin_bswap32(v) : v;
}

/* ------------------------------------------------------------------- walk */

#define RECORD 16                 /* pcapfile.RECORD: a classic record header */
#define INCL_AT 8
#define ORIG_AT 12
#define FRAC_AT 4
#define MAX_RECORD 262144         /* pcapfile.MAX_RECORD */
#define LINE 64                   /* a cache line */
#define AHEAD_BYTES 4096          /* the walk prefetches this far ahead of a record */

/* Prefetch the lines [from, to) of buf: a record chain is a chain of dependent
 * loads, each a memory latency, unless the lines ahead are already on their way. */
static inline void prefetch_span(const uint8_t *buf, Py_ssize_t size, Py_ssize_t from,
                                 Py_ssize_t to)
{
    if (to > size)
        to = size;
    for (Py_ssize_t at = from & ~(Py_ssize_t)(LINE - 1); at < to; at += LINE)
        __builtin_prefetch(buf + at);
}

typedef struct {
    int64_t *offs, *caplen, *wirelen, *sec, *usec;
} Records;

/* Walk records from pos while they start before stop (stop + RECORD <= size):
 * the count walked, *next the first record not taken, *bogus the length of a
 * bogus first record (else -1). */
static Py_ssize_t walk_records(const uint8_t *buf, Py_ssize_t size, Py_ssize_t pos,
                               Py_ssize_t stop, Py_ssize_t limit, int swapped,
                               int64_t snaplen, int64_t per_sec, Records *out,
                               Py_ssize_t *next, int64_t *bogus)
{
    Py_ssize_t n = 0, fetched = pos;
    *bogus = -1;
    while (pos < stop && n < limit) {
        const uint8_t *h = buf + pos;
        if (fetched < pos + AHEAD_BYTES) {
            prefetch_span(buf, size, fetched, pos + 2 * AHEAD_BYTES);
            fetched = pos + 2 * AHEAD_BYTES;
        }
        int64_t incl = u32_in(h + INCL_AT, swapped);
        if (incl > MAX_RECORD || pos + RECORD + incl > size) {
            if (n == 0 && incl > MAX_RECORD)
                *bogus = incl;
            break;
        }
        out->offs[n] = pos + RECORD;
        out->caplen[n] = incl < snaplen ? incl : snaplen;
        out->wirelen[n] = u32_in(h + ORIG_AT, swapped);
        out->sec[n] = u32_in(h, swapped);
        out->usec[n] = (int64_t)u32_in(h + FRAC_AT, swapped) / per_sec;
        n++;
        pos += RECORD + incl;
    }
    *next = pos;
    return n;
}

/* Buffers held for the length of one call; released together. */
#define MAX_VIEWS 16
typedef struct {
    Py_buffer views[MAX_VIEWS];
    int held;
} Views;

static void release(Views *v)
{
    for (int i = 0; i < v->held; i++)
        PyBuffer_Release(&v->views[i]);
    v->held = 0;
}

/* The buffer of obj (writable if asked), at least need items of itemsize bytes. */
static void *view(Views *v, PyObject *obj, int writable, Py_ssize_t itemsize, Py_ssize_t need)
{
    Py_buffer *b = &v->views[v->held];
    if (PyObject_GetBuffer(obj, b, writable ? PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS
                                            : PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    v->held++;
    if (b->len < itemsize * need) {
        PyErr_SetString(PyExc_ValueError, "output array too short");
        return NULL;
    }
    return b->buf;
}

static PyObject *py_walk(PyObject *self, PyObject *args)
{
    PyObject *data, *o_offs, *o_cap, *o_wire, *o_sec, *o_usec;
    Py_ssize_t pos, stop, limit;
    int swapped;
    long long snaplen, per_sec;
    if (!PyArg_ParseTuple(args, "OnnnpLLOOOOO", &data, &pos, &stop, &limit, &swapped, &snaplen,
                          &per_sec, &o_offs, &o_cap, &o_wire, &o_sec, &o_usec))
        return NULL;
    Views v = {.held = 0};
    Records out;
    const uint8_t *buf = view(&v, data, 0, 1, 0);
    Py_ssize_t size = buf ? v.views[0].len : 0;
    if (buf && (out.offs = view(&v, o_offs, 1, 8, limit)) && (out.caplen = view(&v, o_cap, 1, 8, limit))
        && (out.wirelen = view(&v, o_wire, 1, 8, limit)) && (out.sec = view(&v, o_sec, 1, 8, limit))
        && (out.usec = view(&v, o_usec, 1, 8, limit))) {
        if (per_sec < 1 || pos < 0) {
            PyErr_SetString(PyExc_ValueError, "bad walk arguments");
        } else {
            if (stop > size - RECORD + 1)
                stop = size - RECORD + 1;
            Py_ssize_t next;
            int64_t bogus;
            Py_ssize_t n;
            Py_BEGIN_ALLOW_THREADS
            n = walk_records(buf, size, pos, stop, limit, swapped, snaplen, per_sec,
                             &out, &next, &bogus);
            Py_END_ALLOW_THREADS
            release(&v);
            return Py_BuildValue("nnL", n, next, (long long)bogus);
        }
    }
    release(&v);
    return NULL;
}

/* -------------------------------------------------------------------- BPF */

typedef struct {
    uint16_t code;
    uint8_t jt, jf;
    uint32_t k;
} Insn;

enum { LD, LDX, ST, STX, ALU, JMP, RET, MISC };
enum { M_IMM = 0x00, M_ABS = 0x20, M_IND = 0x40, M_MEM = 0x60, M_LEN = 0x80, M_MSH = 0xA0 };
#define MEMWORDS 16

static int load_size(uint16_t code)
{
    switch (code & 0x18) {
    case 0x00: return 4;
    case 0x08: return 2;
    case 0x10: return 1;
    }
    return 0;
}

/* Whether every instruction is one run_filter executes (bpfvm.check's set, and
 * scratch memory indices within MEMWORDS). */
static int filter_ok(const Insn *prog, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        uint16_t code = prog[i].code, cls = code & 7, mode = code & 0xE0, op = code & 0xF0;
        if (cls == LD || cls == LDX) {
            int known = mode == M_IMM || mode == M_ABS || mode == M_IND || mode == M_MEM ||
                        mode == M_LEN || (cls == LDX && mode == M_MSH && (code & 0x18) == 0x10);
            if (!known || ((mode == M_ABS || mode == M_IND) &&
                           (!load_size(code) || prog[i].k >= 0x80000000u)))
                return 0;
            if (mode == M_MEM && prog[i].k >= MEMWORDS)
                return 0;
        } else if (cls == ST || cls == STX) {
            if (prog[i].k >= MEMWORDS)
                return 0;
        } else if (cls == ALU) {
            if (op > 0xA0)
                return 0;
        } else if (cls == JMP) {
            if (op > 0x40)
                return 0;
        }
    }
    return 1;
}

/* The program translated once per batch for a dense switch: one operation per
 * instruction (its class, mode, size and operation in one number), absolute
 * jump targets (past the end: the packet is rejected, as in bpfvm). */
enum {
    OP_LD_IMM, OP_LD_LEN, OP_LD_MEM, OP_LD_W, OP_LD_H, OP_LD_B, OP_LDI_W, OP_LDI_H, OP_LDI_B,
    OP_LDX_IMM, OP_LDX_LEN, OP_LDX_MEM, OP_LDX_PKT, OP_LDX_IND, OP_LDX_MSH, OP_ST, OP_STX,
    OP_ADD, OP_SUB, OP_MUL, OP_DIV, OP_OR, OP_AND, OP_LSH, OP_RSH, OP_NEG, OP_MOD, OP_XOR,
    OP_JA, OP_JEQ, OP_JGT, OP_JGE, OP_JSET, OP_RET_K, OP_RET_A, OP_TAX, OP_TXA,
};

typedef struct {
    uint8_t op;
    uint8_t x;                    /* ALU, jumps: the operand is X, not k */
    uint8_t size;                 /* OP_LDX_PKT, OP_LDX_IND: bytes loaded */
    uint32_t k;
    Py_ssize_t jt, jf;            /* jumps: where to (absolute) */
} Op;

typedef struct {
    Op *ops;
    Py_ssize_t n;
    int uses_mem;
} Filter;

static const uint8_t LD_OPS[3][3] = {      /* [ABS, IND][word, half, byte] */
    {OP_LD_W, OP_LD_H, OP_LD_B}, {OP_LDI_W, OP_LDI_H, OP_LDI_B}};

static int size_index(int size) { return size == 4 ? 0 : size == 2 ? 1 : 2; }

static uint8_t load_op(uint16_t code)
{
    int mode = code & 0xE0, size = load_size(code);
    if ((code & 7) == LD) {
        switch (mode) {
        case M_IMM: return OP_LD_IMM;
        case M_LEN: return OP_LD_LEN;
        case M_MEM: return OP_LD_MEM;
        default: return LD_OPS[mode == M_IND][size_index(size)];
        }
    }
    switch (mode) {
    case M_IMM: return OP_LDX_IMM;
    case M_LEN: return OP_LDX_LEN;
    case M_MEM: return OP_LDX_MEM;
    case M_MSH: return OP_LDX_MSH;
    default: return mode == M_IND ? OP_LDX_IND : OP_LDX_PKT;
    }
}

static Py_ssize_t target(Py_ssize_t i, uint64_t offset, Py_ssize_t n)
{
    uint64_t to = (uint64_t)i + 1 + offset;
    return to > (uint64_t)n ? n : (Py_ssize_t)to;
}

/* One instruction (checked by filter_ok) as an Op. */
static Op translate(const Insn *in, Py_ssize_t i, Py_ssize_t n)
{
    static const uint8_t alu_ops[] = {OP_ADD, OP_SUB, OP_MUL, OP_DIV, OP_OR, OP_AND, OP_LSH,
                                      OP_RSH, OP_NEG, OP_MOD, OP_XOR};
    static const uint8_t jump_ops[] = {OP_JA, OP_JEQ, OP_JGT, OP_JGE, OP_JSET};
    uint16_t code = in->code;
    Op o = {.k = in->k, .x = (code & 0x08) != 0, .size = (uint8_t)load_size(code)};
    switch (code & 7) {
    case LD:
    case LDX: o.op = load_op(code); break;
    case ST: o.op = OP_ST; break;
    case STX: o.op = OP_STX; break;
    case ALU: o.op = alu_ops[(code & 0xF0) >> 4]; break;
    case JMP:
        o.op = jump_ops[(code & 0xF0) >> 4];
        o.jt = target(i, o.op == OP_JA ? in->k : in->jt, n);
        o.jf = target(i, in->jf, n);
        break;
    case RET:
        o.op = (code & 0x18) == 0x10 ? OP_RET_A : OP_RET_K;
        break;
    default: o.op = (code & 0xF8) == 0x00 ? OP_TAX : OP_TXA;
    }
    return o;
}

/* The program as a Filter (ops allocated: free_filter), or 0 (and no exception)
 * for one that only the numpy interpreter runs, or 0 with MemoryError. */
static int make_filter(const Insn *prog, Py_ssize_t n, Filter *f)
{
    f->n = n;
    f->uses_mem = 0;
    f->ops = NULL;
    if (!filter_ok(prog, n))
        return 0;
    f->ops = PyMem_Malloc((n ? n : 1) * sizeof *f->ops);
    if (!f->ops) {
        PyErr_NoMemory();
        return 0;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        f->ops[i] = translate(&prog[i], i, n);
        uint8_t op = f->ops[i].op;
        f->uses_mem |= op == OP_ST || op == OP_STX || op == OP_LD_MEM || op == OP_LDX_MEM;
    }
    return 1;
}

/* A load of size bytes at at: 0 if it reaches past the captured bytes. */
static inline int fetch(const uint8_t *pkt, uint64_t cap, uint64_t at, int size, uint32_t *val)
{
    if (at + size > cap)
        return 0;
    *val = size == 4 ? be32(pkt + at) : size == 2 ? be16(pkt + at) : pkt[at];
    return 1;
}

#define LOAD(at, size, reg) do { if (!fetch(pkt, cap, (at), (size), &(reg))) return 0; } while (0)
#define RHS (o->x ? x : o->k)

/* Whether the filter accepts the packet, by bpfvm's semantics: a load past the
 * captured bytes or a division by zero rejects, so does falling off the end. */
static int run_filter(const Filter *f, const uint8_t *pkt, uint64_t cap, uint64_t wirelen)
{
    uint32_t a = 0, x = 0, mem[MEMWORDS], r;
    if (f->uses_mem)
        memset(mem, 0, sizeof mem);
    Py_ssize_t pc = 0;
    while (pc < f->n) {
        const Op *o = &f->ops[pc++];
        switch (o->op) {
        case OP_LD_IMM: a = o->k; break;
        case OP_LD_LEN: a = (uint32_t)wirelen; break;
        case OP_LD_MEM: a = mem[o->k]; break;
        case OP_LD_W: LOAD(o->k, 4, a); break;
        case OP_LD_H: LOAD(o->k, 2, a); break;
        case OP_LD_B: LOAD(o->k, 1, a); break;
        case OP_LDI_W: LOAD((uint64_t)x + o->k, 4, a); break;
        case OP_LDI_H: LOAD((uint64_t)x + o->k, 2, a); break;
        case OP_LDI_B: LOAD((uint64_t)x + o->k, 1, a); break;
        case OP_LDX_IMM: x = o->k; break;
        case OP_LDX_LEN: x = (uint32_t)wirelen; break;
        case OP_LDX_MEM: x = mem[o->k]; break;
        case OP_LDX_PKT: LOAD(o->k, o->size, x); break;
        case OP_LDX_IND: LOAD((uint64_t)x + o->k, o->size, r); x = r; break;
        case OP_LDX_MSH: LOAD(o->k, 1, r); x = (r & 0xF) << 2; break;
        case OP_ST: mem[o->k] = a; break;
        case OP_STX: mem[o->k] = x; break;
        case OP_ADD: a += RHS; break;
        case OP_SUB: a -= RHS; break;
        case OP_MUL: a *= RHS; break;
        case OP_DIV: if (!RHS) return 0; a /= RHS; break;
        case OP_MOD: if (!RHS) return 0; a %= RHS; break;
        case OP_OR: a |= RHS; break;
        case OP_AND: a &= RHS; break;
        case OP_XOR: a ^= RHS; break;
        case OP_LSH: r = RHS; a = r < 32 ? a << r : 0; break;
        case OP_RSH: r = RHS; a = r < 32 ? a >> r : 0; break;
        case OP_NEG: a = -a; break;
        case OP_JA: pc = o->jt; break;
        case OP_JEQ: pc = a == RHS ? o->jt : o->jf; break;
        case OP_JGT: pc = a > RHS ? o->jt : o->jf; break;
        case OP_JGE: pc = a >= RHS ? o->jt : o->jf; break;
        case OP_JSET: pc = (a & RHS) ? o->jt : o->jf; break;
        case OP_RET_K: return o->k != 0;
        case OP_RET_A: return a != 0;
        case OP_TAX: x = a; break;
        default: a = x;
        }
    }
    return 0;
}

/* ----------------------------------------------------------------- decode */

enum { OK, TRUNCATED, NOT_IP, INVALID };      /* batch.OK ... batch.INVALID */
#define ETH_IPV4 0x0800
#define ETH_IPV6 0x86DD
#define TAG 4
#define TAG_TYPE 2
#define MAX_TAGS 4096                         /* batch.decode_batch's VLAN steps */
#define IPV4_HEADER 20
#define IPV6_HEADER 40

typedef struct {
    int by_type;                  /* the link header has an Ethernet type field */
    int64_t length;               /* the link header's length */
    int64_t type_at;              /* where its type field is (by_type) */
    uint32_t vlan[8];             /* VLAN tag types */
    int nvlan;
} Link;

static int is_vlan(const Link *link, uint32_t type)
{
    for (int i = 0; i < link->nvlan; i++)
        if (link->vlan[i] == type)
            return 1;
    return 0;
}

/* The IP header of an Ethernet type at off: its reason (OK: *is6 says which). */
static int ip_header(const uint8_t *pkt, uint64_t cap, uint64_t off, uint32_t type, int *is6)
{
    if (type == ETH_IPV4) {
        if (cap < off + IPV4_HEADER)
            return TRUNCATED;
        *is6 = 0;
        return pkt[off] >> 4 != 4 || (pkt[off] & 15) < 5 ? INVALID : OK;
    }
    if (type == ETH_IPV6) {
        if (cap < off + IPV6_HEADER)
            return TRUNCATED;
        *is6 = 1;
        return pkt[off] >> 4 != 6 ? INVALID : OK;
    }
    return NOT_IP;
}

/* Why the packet does not decode, or OK with its IP header at *l3. */
static int decode(const Link *link, const uint8_t *pkt, uint64_t cap, uint64_t *l3, int *is6)
{
    uint64_t off = link->length;
    *l3 = off;
    if (!link->by_type) {
        if (cap <= off)
            return TRUNCATED;
        int version = pkt[off] >> 4;
        if (version != 4 && version != 6)
            return INVALID;
        return ip_header(pkt, cap, off, version == 4 ? ETH_IPV4 : ETH_IPV6, is6);
    }
    if (cap < off)
        return TRUNCATED;
    uint32_t type = be16(pkt + link->type_at);
    for (int tags = 0; tags < MAX_TAGS && is_vlan(link, type); tags++) {
        if (cap < off + TAG)
            return TRUNCATED;
        type = be16(pkt + off + TAG_TYPE);
        off += TAG;
    }
    *l3 = off;
    return ip_header(pkt, cap, off, type, is6);
}

/* ------------------------------------------------------------------ flows */

/* decode.FLOW, byte for byte (fastread.py checks the offsets against it). */
typedef struct {
    int64_t sec;
    uint64_t me_hi, me_lo, peer_hi, peer_lo;
    uint32_t usec, length;
    uint16_t me_port, peer_port;
    uint8_t proto, from_me, v6, flags;
} Flow;

enum { NOT_TRACKED = 0, P_ICMP = 1, P_TCP = 6, P_UDP = 17, P_ICMP6 = 58 };
enum { HOP_BY_HOP = 0, ROUTING = 43, FRAGMENT = 44, AH = 51, DEST_OPTIONS = 60 };
#define EXTENSION_MIN 8
#define MAX_EXTENSIONS 8
#define TCP_FLAGS_AT 13
#define TCP_KEY_BYTES 14
#define PORT_BYTES 4

static int is_extension(int p)
{
    return p == HOP_BY_HOP || p == ROUTING || p == FRAGMENT || p == AH || p == DEST_OPTIONS;
}

static uint64_t extension_length(int kind, int length_byte)
{
    if (kind == FRAGMENT)
        return EXTENSION_MIN;
    if (kind == AH)
        return (uint64_t)(length_byte + 2) * 4;
    return (uint64_t)(length_byte + 1) * 8;
}

static int key_bytes(int proto)
{
    return proto == P_TCP ? TCP_KEY_BYTES : proto == P_UDP ? PORT_BYTES : 0;
}

/* (protocol, *l4) behind the IP header at l3, by batch.transport's rules. */
static int transport(const uint8_t *pkt, uint64_t cap, uint64_t l3, int is6, uint64_t *l4)
{
    int proto;
    if (!is6) {
        *l4 = l3 + (uint64_t)(pkt[l3] & 15) * 4;
        if (cap < *l4 || (be16(pkt + l3 + 6) & 0x1FFF))
            return NOT_TRACKED;
        proto = pkt[l3 + 9];
    } else {
        proto = pkt[l3 + 6];
        *l4 = l3 + IPV6_HEADER;
        for (int i = 0; i < MAX_EXTENSIONS && is_extension(proto); i++) {
            uint64_t at = *l4;
            if (cap < at + EXTENSION_MIN || (proto == FRAGMENT && be16(pkt + at + 2) >> 3))
                return NOT_TRACKED;
            *l4 = at + extension_length(proto, pkt[at + 1]);
            proto = pkt[at];
        }
    }
    int tracked = proto == P_TCP || proto == P_UDP || proto == (is6 ? P_ICMP6 : P_ICMP);
    if (!tracked || cap < *l4 + key_bytes(proto))
        return NOT_TRACKED;
    return proto;
}

typedef struct {
    uint64_t hi, lo;
} Address;

typedef struct {
    Address me;
    int me6;                      /* "me" is an IPv6 address */
    int me_len;                   /* 4, 16, or another length: never a packet's */
} Me;

static void flow_record(const uint8_t *pkt, uint64_t cap, uint64_t l3, int is6,
                        Address src, Address dst, const Me *me, Flow *f)
{
    uint64_t l4 = 0;
    int proto = transport(pkt, cap, l3, is6, &l4);
    uint32_t sport = 0, dport = 0;
    int mine = src.lo == me->me.lo && src.hi == me->me.hi && is6 == me->me6;
    f->flags = 0;
    if (proto == P_TCP || proto == P_UDP) {
        sport = be16(pkt + l4);
        dport = be16(pkt + l4 + 2);
    }
    if (proto == P_TCP)
        f->flags = pkt[l4 + TCP_FLAGS_AT];
    f->proto = proto;
    f->v6 = is6;
    f->from_me = mine;
    Address m = mine ? src : dst, p = mine ? dst : src;
    f->me_hi = m.hi;
    f->me_lo = m.lo;
    f->peer_hi = p.hi;
    f->peer_lo = p.lo;
    f->me_port = mine ? sport : dport;
    f->peer_port = mine ? dport : sport;
}

/* ---------------------------------------------------------------- prepare */

#define PACKETS_AHEAD 16          /* prepare prefetches the packet this far ahead */
#define HEADERS_READ 64           /* ... the bytes of it the headers take (two lines, mostly) */

static inline void prefetch_packet(const uint8_t *buf, Py_ssize_t size, int64_t off)
{
    if (off >= 0 && off + HEADERS_READ <= size) {
        __builtin_prefetch(buf + off);
        __builtin_prefetch(buf + off + HEADERS_READ - 1);
    }
}

typedef struct {
    const int64_t *offs, *caplen, *wirelen, *sec, *usec;   /* usec may be NULL */
} Packets;

typedef struct {
    int64_t *sec, *good, *lengths;
    uint8_t *is6;
    uint32_t *v4;
    uint64_t *hi, *lo;
    Flow *flows;                  /* NULL: no FLOW records */
    Py_ssize_t seen, counted, n4, n6, undecoded[4];
    Py_ssize_t outside;           /* the packet outside the buffer (prepare_batch -1) */
} Prepared;

static void count_packet(const uint8_t *pkt, uint64_t cap, uint64_t l3, int is6, const Me *me,
                         Prepared *out, Flow *flow)
{
    Address src, dst;
    if (is6) {
        src = (Address){be64(pkt + l3 + 8), be64(pkt + l3 + 16)};
        dst = (Address){be64(pkt + l3 + 24), be64(pkt + l3 + 32)};
        int mine = me->me_len == 16 && src.hi == me->me.hi && src.lo == me->me.lo;
        out->hi[out->n6] = mine ? dst.hi : src.hi;
        out->lo[out->n6++] = mine ? dst.lo : src.lo;
    } else {
        src = (Address){0, be32(pkt + l3 + 12)};
        dst = (Address){0, be32(pkt + l3 + 16)};
        int mine = me->me_len == 4 && src.lo == me->me.lo;
        out->v4[out->n4++] = (uint32_t)(mine ? dst.lo : src.lo);
    }
    out->is6[out->counted] = (uint8_t)is6;
    if (flow)
        flow_record(pkt, cap, l3, is6, src, dst, me, flow);
}

/* Every packet through the filter, the decoder, and into the outputs; -1 (and
 * an exception) for a packet outside the buffer. */
static int prepare_batch(const uint8_t *buf, Py_ssize_t size, const Packets *in, Py_ssize_t n,
                         const Filter *filter, const Link *link, const Me *me, Prepared *out)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t off = in->offs[i], cap = in->caplen[i];
        if (i + PACKETS_AHEAD < n)
            prefetch_packet(buf, size, in->offs[i + PACKETS_AHEAD]);
        if (off < 0 || cap < 0 || off > size || cap > size - off) {
            out->outside = i;
            return -1;
        }
        const uint8_t *pkt = buf + off;
        if (filter && !run_filter(filter, pkt, (uint64_t)cap, (uint64_t)in->wirelen[i]))
            continue;
        Py_ssize_t row = out->seen++;
        out->sec[row] = in->sec[i];
        uint64_t l3;
        int is6 = 0, reason = decode(link, pkt, (uint64_t)cap, &l3, &is6);
        if (reason != OK) {
            out->undecoded[reason]++;
            continue;
        }
        Flow *flow = out->flows ? &out->flows[out->counted] : NULL;
        count_packet(pkt, (uint64_t)cap, l3, is6, me, out, flow);
        if (flow) {
            flow->sec = in->sec[i];
            flow->usec = in->usec ? (uint32_t)in->usec[i] : 0;
            flow->length = (uint32_t)in->wirelen[i];
        }
        out->good[out->counted] = row;
        out->lengths[out->counted++] = in->wirelen[i];
    }
    return 0;
}

/* The link description from (by_type, length, type_at, vlan types). */
static int parse_link(PyObject *o, Link *link)
{
    PyObject *tags;
    long long length, type_at;
    if (!PyArg_ParseTuple(o, "pLLO", &link->by_type, &length, &type_at, &tags))
        return 0;
    PyObject *seq = PySequence_Fast(tags, "vlan types: a sequence");
    if (!seq)
        return 0;
    Py_ssize_t nv = PySequence_Fast_GET_SIZE(seq);
    int ok = nv <= 8 && length >= 0 && (!link->by_type || (type_at >= 0 && type_at + 2 <= length));
    for (Py_ssize_t i = 0; ok && i < nv; i++)
        link->vlan[i] = (uint32_t)PyLong_AsUnsignedLong(PySequence_Fast_GET_ITEM(seq, i));
    Py_DECREF(seq);
    if (!ok || PyErr_Occurred()) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "bad link description");
        return 0;
    }
    link->nvlan = (int)nv;
    link->length = length;
    link->type_at = type_at;
    return 1;
}

static PyObject *py_prepare(PyObject *self, PyObject *args)
{
    PyObject *data, *o_offs, *o_cap, *o_wire, *o_sec, *o_usec, *o_prog, *o_link;
    PyObject *o_osec, *o_good, *o_len, *o_is6, *o_v4, *o_hi, *o_lo, *o_flows;
    const char *me_bytes;            /* only its length is read: hi and lo are its words */
    Py_ssize_t me_len;
    unsigned long long me_hi, me_lo;
    if (!PyArg_ParseTuple(args, "OOOOOOOOy#KKOOOOOOOO", &data, &o_offs, &o_cap, &o_wire, &o_sec,
                          &o_usec, &o_prog, &o_link, &me_bytes, &me_len, &me_hi, &me_lo, &o_osec,
                          &o_good, &o_len, &o_is6, &o_v4, &o_hi, &o_lo, &o_flows))
        return NULL;
    Link link;
    Me me = {.me = {me_hi, me_lo}, .me6 = me_len == 16, .me_len = (int)me_len};
    Filter filter = {0};
    Py_ssize_t n = 0;
    if (!parse_link(o_link, &link))
        return NULL;
    if (o_prog != Py_None) {             /* the program: packed struct bpf_insn */
        char *code;
        Py_ssize_t size;
        if (PyBytes_AsStringAndSize(o_prog, &code, &size) < 0)
            return NULL;
        if (!make_filter((const Insn *)code, size / (Py_ssize_t)sizeof(Insn), &filter)) {
            if (PyErr_Occurred())
                return NULL;
            Py_RETURN_NONE;               /* the numpy path runs it */
        }
    }
    Views v = {.held = 0};
    Packets in = {0};
    Prepared out = {0};
    PyObject *result = NULL;
    const uint8_t *buf = view(&v, data, 0, 1, 0);
    if (!buf || !(in.offs = view(&v, o_offs, 0, 8, 0)))
        goto done;
    n = v.views[1].len / 8;
    if (!(in.caplen = view(&v, o_cap, 0, 8, n)) || !(in.wirelen = view(&v, o_wire, 0, 8, n)) ||
        !(in.sec = view(&v, o_sec, 0, 8, n)) ||
        (o_usec != Py_None && !(in.usec = view(&v, o_usec, 0, 8, n))) ||
        !(out.sec = view(&v, o_osec, 1, 8, n)) || !(out.good = view(&v, o_good, 1, 8, n)) ||
        !(out.lengths = view(&v, o_len, 1, 8, n)) || !(out.is6 = view(&v, o_is6, 1, 1, n)) ||
        !(out.v4 = view(&v, o_v4, 1, 4, n)) || !(out.hi = view(&v, o_hi, 1, 8, n)) ||
        !(out.lo = view(&v, o_lo, 1, 8, n)) ||
        (o_flows != Py_None && !(out.flows = view(&v, o_flows, 1, sizeof(Flow), n))))
        goto done;
    int failed;
    Py_BEGIN_ALLOW_THREADS
    failed = prepare_batch(buf, v.views[0].len, &in, n, filter.ops ? &filter : NULL, &link, &me,
                           &out);
    Py_END_ALLOW_THREADS
    if (failed)
        PyErr_Format(PyExc_ValueError, "packet %zd lies outside the buffer", out.outside);
    else
        result = Py_BuildValue("nnnnnnn", out.seen, out.counted, out.n4, out.n6,
                               out.undecoded[TRUNCATED], out.undecoded[NOT_IP],
                               out.undecoded[INVALID]);
done:
    PyMem_Free(filter.ops);
    release(&v);
    return result;
}

/* ------------------------------------------------------------ the per-IP rule */

typedef struct {
    int64_t *b, *c, *e, *s;
    double *r, *w;
    Py_ssize_t size;              /* records the columns hold */
} Columns;

typedef struct {
    int64_t interval, first_packets, hour;   /* accounting's IP_INTERVAL, FIRST_PACKETS, ONEHOUR */
} Rule;

/* SPEC 4.2 for one packet of the record in slot (accounting.count_one). */
static void count_one(const Columns *col, const Rule *rule, Py_ssize_t slot, int64_t now,
                      int64_t length)
{
    int64_t b = col->b[slot], c = col->c[slot], e = col->e[slot], s = col->s[slot];
    if (e + rule->interval > now || (e == s && c < rule->first_packets)) {
        col->b[slot] = b + length;
        col->c[slot] = c + 1;
        return;
    }
    double m = 3600.0 / (double)(s == e ? now - s : rule->hour + now - e);
    col->r[slot] = (col->r[slot] + (double)c) * m;
    col->w[slot] = (col->w[slot] + (double)b) * m;
    col->b[slot] = length;
    col->c[slot] = 1;
    col->e[slot] = now;
}

static PyObject *py_count_records(PyObject *self, PyObject *args)
{
    PyObject *o_slots, *o_secs, *o_len, *o_b, *o_c, *o_e, *o_s, *o_r, *o_w;
    Rule rule;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOLLL", &o_slots, &o_secs, &o_len, &o_b, &o_c, &o_e,
                          &o_s, &o_r, &o_w, &rule.interval, &rule.first_packets, &rule.hour))
        return NULL;
    Views v = {.held = 0};
    Columns col;
    const int64_t *slots, *secs, *lengths;
    PyObject *result = NULL;
    if (!(slots = view(&v, o_slots, 0, 8, 0)))
        goto done;
    Py_ssize_t n = v.views[0].len / 8;
    if (!(secs = view(&v, o_secs, 0, 8, n)) || !(lengths = view(&v, o_len, 0, 8, n)) ||
        !(col.b = view(&v, o_b, 1, 8, 0)))
        goto done;
    col.size = v.views[3].len / 8;
    if (!(col.c = view(&v, o_c, 1, 8, col.size)) || !(col.e = view(&v, o_e, 1, 8, col.size)) ||
        !(col.s = view(&v, o_s, 1, 8, col.size)) || !(col.r = view(&v, o_r, 1, 8, col.size)) ||
        !(col.w = view(&v, o_w, 1, 8, col.size)))
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (slots[i] < 0 || slots[i] >= col.size) {
            PyErr_Format(PyExc_IndexError, "slot %lld of packet %zd: no such record",
                         (long long)slots[i], i);
            goto done;
        }
    }
    for (Py_ssize_t i = 0; i < n; i++)
        count_one(&col, &rule, slots[i], secs[i], lengths[i]);
    result = Py_NewRef(Py_None);
done:
    release(&v);
    return result;
}

static PyObject *py_first_packets(PyObject *self, PyObject *args)
{
    PyObject *o_which, *o_first;
    Views v = {.held = 0};
    PyObject *result = NULL;
    const int64_t *which;
    int64_t *first;
    if (!PyArg_ParseTuple(args, "OO", &o_which, &o_first))
        return NULL;
    if (!(which = view(&v, o_which, 0, 8, 0)) || !(first = view(&v, o_first, 1, 8, 0)))
        goto done;
    Py_ssize_t n = v.views[0].len / 8, keys = v.views[1].len / 8;
    for (Py_ssize_t k = 0; k < keys; k++)
        first[k] = -1;
    for (Py_ssize_t i = n - 1; i >= 0; i--) {
        if (which[i] < 0 || which[i] >= keys) {
            PyErr_Format(PyExc_IndexError, "address %lld of packet %zd: no such address",
                         (long long)which[i], i);
            goto done;
        }
        first[which[i]] = i;
    }
    result = Py_NewRef(Py_None);
done:
    release(&v);
    return result;
}

/* Per packet i in order, its record's number becomes base + i where that is more:
 * np.maximum.at(q, slots, base + arange(n)), without its per-element dispatch. */
static PyObject *py_number_last(PyObject *self, PyObject *args)
{
    PyObject *o_slots, *o_q;
    long long base;
    Views v = {.held = 0};
    PyObject *result = NULL;
    const int64_t *slots;
    int64_t *q;
    if (!PyArg_ParseTuple(args, "OOL", &o_slots, &o_q, &base))
        return NULL;
    if (!(slots = view(&v, o_slots, 0, 8, 0)) || !(q = view(&v, o_q, 1, 8, 0)))
        goto done;
    Py_ssize_t n = v.views[0].len / 8, size = v.views[1].len / 8;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (slots[i] < 0 || slots[i] >= size) {
            PyErr_Format(PyExc_IndexError, "slot %lld of packet %zd: no such record",
                         (long long)slots[i], i);
            goto done;
        }
        if (q[slots[i]] < base + i)
            q[slots[i]] = base + i;
    }
    result = Py_NewRef(Py_None);
done:
    release(&v);
    return result;
}

/* ------------------------------------------------------------- distinct */

#define RADIX_BITS 11              /* three passes over 32 bits: small tables for small batches */
#define RADIX (1 << RADIX_BITS)

/* Scratch space kept from call to call (fresh blocks of a batch's size would
 * fault their pages in every time); the GIL serialises the calls. */
enum { S_ORDER, S_SLOTS, S_KEYS, S_RANK, S_INV4, S_INV6, SCRATCHES };
static void *scratch_block[SCRATCHES];
static size_t scratch_size[SCRATCHES];

static void *scratch(int which, size_t bytes)
{
    if (bytes > scratch_size[which]) {
        void *grown = PyMem_Realloc(scratch_block[which], bytes);
        if (!grown) {
            PyErr_NoMemory();
            return NULL;
        }
        scratch_block[which] = grown;
        scratch_size[which] = bytes;
    }
    return scratch_block[which];
}

/* One stable counting-sort pass of order[] (NULL: 0..n-1) by 11 bits of values. */
static void radix_pass(const uint32_t *values, const int64_t *order, int64_t *out, Py_ssize_t n,
                       int shift)
{
    int64_t count[RADIX] = {0};
    for (Py_ssize_t i = 0; i < n; i++)
        count[(values[order ? order[i] : i] >> shift) & (RADIX - 1)]++;
    int64_t at = 0;
    for (Py_ssize_t d = 0; d < RADIX; d++) {
        int64_t c = count[d];
        count[d] = at;
        at += c;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t j = order ? order[i] : i;
        out[count[(values[j] >> shift) & (RADIX - 1)]++] = j;
    }
}

/* np.unique(values, return_inverse=True): the count of distinct values, or -1. */
static Py_ssize_t unique32(const uint32_t *values, Py_ssize_t n, uint32_t *unique,
                           int64_t *inverse)
{
    int64_t *order = scratch(S_ORDER, 2 * (size_t)(n ? n : 1) * sizeof *order);
    Py_ssize_t k = 0;
    if (!order)
        return -1;
    radix_pass(values, NULL, order, n, 0);                    /* lowest bits first */
    radix_pass(values, order, order + n, n, RADIX_BITS);
    radix_pass(values, order + n, order, n, 2 * RADIX_BITS);
    for (Py_ssize_t i = 0; i < n; i++) {
        uint32_t x = values[order[i]];
        if (i == 0 || x != unique[k - 1])
            unique[k++] = x;
        inverse[order[i]] = k - 1;
    }
    return k;
}

/* The distinct 128-bit keys (hi, lo), sorted: a hash table numbers them in the
 * order first seen, a sort of the few distinct ones ranks them. */
typedef struct {
    uint64_t hi, lo;
    int64_t id;                   /* its number in the order first seen */
} Key;

static int key_order(const void *a, const void *b)
{
    const Key *x = a, *y = b;
    if (x->hi != y->hi)
        return x->hi < y->hi ? -1 : 1;
    return x->lo < y->lo ? -1 : x->lo > y->lo;
}

static inline size_t key_hash(uint64_t hi, uint64_t lo)
{
    uint64_t h = (hi ^ (lo * 0x9E3779B97F4A7C15ull)) * 0xFF51AFD7ED558CCDull;
    return (size_t)(h ^ (h >> 29));
}

/* Number each key in first-seen order into ids[]; the distinct ones into keys[]. */
static Py_ssize_t number_keys(const uint64_t *hi, const uint64_t *lo, Py_ssize_t n,
                              int64_t *slots, size_t mask, Key *keys, int64_t *ids)
{
    Py_ssize_t k = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        size_t at = key_hash(hi[i], lo[i]) & mask;
        while (slots[at] >= 0 && (keys[slots[at]].hi != hi[i] || keys[slots[at]].lo != lo[i]))
            at = (at + 1) & mask;
        if (slots[at] < 0) {
            slots[at] = k;
            keys[k] = (Key){hi[i], lo[i], k};
            k++;
        }
        ids[i] = slots[at];
    }
    return k;
}

/* The distinct (hi, lo) pairs sorted into uhi/ulo, each pair's index among
 * them into inverse: the count, or -1. */
static Py_ssize_t unique128(const uint64_t *hi, const uint64_t *lo, Py_ssize_t n, uint64_t *uhi,
                            uint64_t *ulo, int64_t *inverse)
{
    size_t size = 16, items = (size_t)(n ? n : 1);
    while (size < 2 * (size_t)n)
        size <<= 1;
    int64_t *slots = scratch(S_SLOTS, size * sizeof *slots);
    Key *keys = scratch(S_KEYS, items * sizeof *keys);
    int64_t *rank = scratch(S_RANK, items * sizeof *rank);
    if (!slots || !keys || !rank)
        return -1;
    memset(slots, 0xFF, size * sizeof *slots);               /* -1: empty */
    Py_ssize_t k = number_keys(hi, lo, n, slots, size - 1, keys, inverse);
    qsort(keys, (size_t)k, sizeof *keys, key_order);
    for (Py_ssize_t j = 0; j < k; j++) {
        rank[keys[j].id] = j;
        uhi[j] = keys[j].hi;
        ulo[j] = keys[j].lo;
    }
    for (Py_ssize_t i = 0; i < n; i++)
        inverse[i] = rank[inverse[i]];
    return k;
}

/* batch.distinct: the distinct IPv4 targets, then the IPv6 ones, and per packet
 * the index of its own (IPv6 ones after every IPv4 one). */
static PyObject *py_distinct(PyObject *self, PyObject *args)
{
    PyObject *o_is6, *o_v4, *o_hi, *o_lo, *o_which, *o_u4, *o_uhi, *o_ulo;
    Views v = {.held = 0};
    PyObject *result = NULL;
    const uint8_t *is6;
    const uint32_t *v4;
    const uint64_t *hi, *lo;
    int64_t *which;
    uint32_t *u4;
    uint64_t *uhi, *ulo;
    if (!PyArg_ParseTuple(args, "OOOOOOOO", &o_is6, &o_v4, &o_hi, &o_lo, &o_which, &o_u4, &o_uhi,
                          &o_ulo))
        return NULL;
    if (!(is6 = view(&v, o_is6, 0, 1, 0)) || !(v4 = view(&v, o_v4, 0, 4, 0)) ||
        !(hi = view(&v, o_hi, 0, 8, 0)))
        goto done;
    Py_ssize_t n = v.views[0].len, n4 = v.views[1].len / 4, n6 = v.views[2].len / 8;
    if (!(lo = view(&v, o_lo, 0, 8, n6)) || !(which = view(&v, o_which, 1, 8, n)) ||
        !(u4 = view(&v, o_u4, 1, 4, n4)) || !(uhi = view(&v, o_uhi, 1, 8, n6)) ||
        !(ulo = view(&v, o_ulo, 1, 8, n6)))
        goto done;
    Py_ssize_t six = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        six += is6[i] != 0;
    if (six != n6 || n - six != n4) {
        PyErr_SetString(PyExc_ValueError, "the families do not match the addresses");
        goto done;
    }
    int64_t *inv4 = scratch(S_INV4, (size_t)(n4 ? n4 : 1) * 8);
    int64_t *inv6 = scratch(S_INV6, (size_t)(n6 ? n6 : 1) * 8);
    Py_ssize_t k4 = inv4 && inv6 ? unique32(v4, n4, u4, inv4) : -1;
    Py_ssize_t k6 = k4 >= 0 ? unique128(hi, lo, n6, uhi, ulo, inv6) : -1;
    if (k6 < 0)
        goto done;
    for (Py_ssize_t i = 0, j4 = 0, j6 = 0; i < n; i++)
        which[i] = is6[i] ? k4 + inv6[j6++] : inv4[j4++];
    result = Py_BuildValue("nn", k4, k6);
done:
    release(&v);
    return result;
}

static PyObject *py_flow_layout(PyObject *self, PyObject *unused)
{
    return Py_BuildValue("n(nnnnnnnnnnnnn)", (Py_ssize_t)sizeof(Flow),
                         offsetof(Flow, sec), offsetof(Flow, usec), offsetof(Flow, proto),
                         offsetof(Flow, v6), offsetof(Flow, from_me), offsetof(Flow, me_hi),
                         offsetof(Flow, me_lo), offsetof(Flow, peer_hi), offsetof(Flow, peer_lo),
                         offsetof(Flow, me_port), offsetof(Flow, peer_port), offsetof(Flow, flags),
                         offsetof(Flow, length));
}

static PyMethodDef methods[] = {
    {"walk", py_walk, METH_VARARGS,
     "walk(buf, pos, stop, limit, swapped, snaplen, per_sec, offs, caplen, wirelen, sec, usec)"
     " -> (records, next, bogus length or -1): the classic pcap records from pos."},
    {"prepare", py_prepare, METH_VARARGS,
     "prepare(buf, offs, caplen, wirelen, sec, usec, prog, link, me, me_hi, me_lo, out_sec, "
     "good, lengths, is6, v4, hi, lo, flows) -> (seen, counted, v4, v6, truncated, non-ip, "
     "invalid), or None for a program only the numpy interpreter runs."},
    {"count_records", py_count_records, METH_VARARGS,
     "count_records(slots, secs, lengths, B, C, E, S, R, W, interval, first_packets, hour):"
     " SPEC 4.2 for each packet in order, on the record columns in place."},
    {"first_packets", py_first_packets, METH_VARARGS,
     "first_packets(which, first): per address, its first packet's index (-1: none)."},
    {"number_last", py_number_last, METH_VARARGS,
     "number_last(slots, q, base): q[slots[i]] = max(q[slots[i]], base + i), in order."},
    {"distinct", py_distinct, METH_VARARGS,
     "distinct(is6, v4, hi, lo, which, unique_v4, unique_hi, unique_lo) -> (v4 count, v6"
     " count): batch.distinct's sorted distinct targets and each packet's index."},
    {"flow_layout", py_flow_layout, METH_NOARGS,
     "(size, offsets in decode.FLOW's field order) of the C FLOW record."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastread",
    "The replay's read path in C: the pcap record walk and batch.prepare's one pass.", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fastread(void)
{
    return PyModule_Create(&module);
}
