/*
 * _conntrack: the connection table of spec 10.1/10.2, fed whole batches.
 *
 * The rules are those of ncsniffer/conntrack_ref.py (the model, plain Python);
 * the property tests hold the two equal event for event, so a change of rule
 * is made in both.  Here the same rules run over a batch without touching a
 * Python object per packet:
 *
 *   - entries: a pool of fixed-size structs, grown by doubling, freed ones
 *     chained for reuse; linked by 32-bit indices (NIL = none);
 *   - lookup: an open-addressing hash table of (entry index, 32-bit hash)
 *     slots, linear probing, at most half full (doubled beyond), deletion by
 *     backward shift; a miss is one cache line, and the batch loop prefetches
 *     the slots, then the entries, of the packets a few rows ahead;
 *   - eviction: an intrusive LRU list of the live entries (not the lingering
 *     ones), the least recently active at the head; the lingering ones in a
 *     list of their own through the same links, in the order they began to
 *     linger: at most max_connections of them, the oldest linger ends first;
 *   - open tally: per peer, the begun counts of its live connections (by
 *     protocol, inbound), kept where a connection becomes live or ends: a
 *     dense array of packed peer records, indexed by an open-addressing table
 *     of 32-bit record numbers; a peer leaves when its last one ends, so it
 *     holds at most max_connections peers (spec 10.3: what a record made anew
 *     counts as begun, asked by open_counts);
 *   - K per peer (process_counted, advance_counted): the call's events counted
 *     into one row per peer (spec 10.3's K deltas), with the peer's open tally
 *     as it was before its first event of the call; the peer's tally record,
 *     which the event touches anyway, names its row (a record whose last
 *     connection ends stays until the call's end), so counting costs no
 *     lookup; the event rows themselves only if asked for;
 *   - expiry: a timer wheel, one slot per second, more slots than the longest
 *     timeout, so a slot only ever holds entries of one deadline; an entry is
 *     moved to the tail of its new slot only when its deadline changes (on
 *     a busy flow once a second, or when a new state changes its timeout).
 *     Advancing the clock empties the slots it passes, in order: never a
 *     scan of the table.
 *
 * Time is the whole second of the packets on a clock that never goes back.
 * Not thread-safe; the batch loop runs without the GIL.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define NIL UINT32_MAX
#define MAX_ENTRIES (UINT32_MAX - 1)
#define MAX_TIMEOUT 1000000       /* seconds: timeouts.MAX_TIMEOUT; the wheel's size */
#define AHEAD 16                  /* rows looked up in advance (a power of two) */
#define MAX_BATCH (1u << 30)      /* packets of one counted call: its counts fit 32 bits */

/* IP protocols, TCP flags */
enum { P_ICMP = 1, P_TCP = 6, P_UDP = 17, P_ICMP6 = 58 };
enum { F_FIN = 0x01, F_SYN = 0x02, F_RST = 0x04, F_ACK = 0x10 };

/* event kinds and states (conntrack.py: NEW END, STATES, DIRS) */
enum { K_NEW = 0, K_END = 1 };
enum { E_ACTIVE, E_CLOSED, E_RESET, E_REFUSED, E_UNANSWERED, E_TIMEDOUT, E_EVICTED,
       E_DRAINED };
enum { DIR_IN = 0, DIR_OUT = 1 };

/* entry states; FREE = 0 for a pooled entry */
enum { S_FREE, S_SYN_SENT, S_ESTABLISHED, S_FLOW, S_LINGER };

/* entry flags */
enum { B_INIT_ME = 1, B_PICKUP = 2, B_SYNACK = 4, B_FIN_ORIG = 8, B_FIN_RESP = 16 };

/* The two addresses of a key, as two 64-bit words each (table.py's H and L). */
typedef struct {
    uint64_t me_hi, me_lo, peer_hi, peer_lo;
} addrs_t;

/* What a connection carried, orig = the initiator's side. */
typedef struct {
    uint64_t orig_packets, orig_bytes, resp_packets, resp_bytes;
} counts_t;

/* One packet: conntrack.PACKET_DTYPE (56 bytes, no padding). */
typedef struct {
    int64_t sec;
    addrs_t a;
    uint32_t usec, wirelen;
    uint16_t me_port, peer_port;
    uint8_t proto, from_me, v6, flags;
} packet_t;

/* One event: conntrack.EVENT_DTYPE (96 bytes). */
typedef struct {
    double start, end;
    addrs_t a;
    counts_t n;
    uint16_t me_port, peer_port;
    uint8_t kind, state, proto, dir, v6;
    uint8_t pad[7];
} event_t;

/* One connection (120 bytes). */
typedef struct {
    addrs_t a;
    counts_t n;
    double start, end;            /* first, last packet's timestamp */
    int64_t deadline;             /* expired once now > deadline */
    uint32_t hash;                /* of the key; the next free entry while pooled */
    uint32_t lru_prev, lru_next;
    uint32_t wh_prev, wh_next;
    uint32_t peer;                /* its peer's record in the open tally, while live */
    uint16_t me_port, peer_port;
    uint8_t proto, v6, bits, state;
} entry_t;

typedef struct { uint32_t head, tail; } list_t;

/* One peer of the open tally (37 bytes, packed: it costs memory per peer). */
typedef struct __attribute__((packed)) {
    uint64_t hi, lo;
    uint32_t n[4];                /* live connections: TCP, UDP, ICMP, inbound */
    uint32_t row;                 /* its K row + 1 in a counting call, 0, or FREE_ROW */
    uint8_t v6;
} peer_t;

/* A peer as conncounts.PEER_DTYPE lays it out (17 bytes). */
typedef struct __attribute__((packed)) {
    uint8_t v6;
    uint64_t hi, lo;
} peer_key_t;

enum { N_TCP, N_UDP, N_ICMP, N_IN };
#define FREE_ROW UINT32_MAX       /* the row of a free record (a live one's is below) */
#define K_WIDTH 12                /* conncounts.K_FIELDS: tcp udp icmp in out active ... */

/* K_FIELDS columns: tcp udp icmp in out active, then the ends closed..evicted */
enum { K_TCP, K_UDP, K_ICMP, K_IN, K_OUT, K_ACTIVE, K_CLOSED };
#define K_COUNTED (K_WIDTH - 1)   /* all but active (begun less ended) */

/* One peer's K in one call (64 bytes: one cache line): its counters (K_FIELDS but
 * active), its open tally before the call (N_TCP..N_IN), its tally record.  Counts
 * of one call: its events, under 2^32 (live < 2^31, MAX_BATCH packets). */
typedef struct {
    uint32_t k[K_COUNTED];
    uint32_t before[4];
    uint32_t record;
} krow_t;

/* The K rows of the peers of one call and their keys; a peer's record names its row;
 * the records whose last connection ended in the call. */
typedef struct {
    krow_t *rows;
    void *block;                  /* what rows lie in, aligned to a cache line */
    peer_key_t *keys;
    uint32_t n, cap;
    uint32_t peak;                /* the most rows of one call (written pages) */
    uint32_t *emptied;
    uint32_t nemptied, emptied_cap;
} counted_t;

/* A hash table slot: the entry (NIL: empty) and its key's hash, compared first. */
typedef struct { uint32_t entry, hash; } slot_t;

typedef struct {
    PyObject_HEAD
    /* settings */
    int64_t t_establish, t_tcp, t_udp, t_icmp, t_linger;
    uint32_t max_live;
    /* the pool */
    entry_t *pool;
    uint32_t capacity, used, free_head;
    /* the hash table */
    slot_t *slots;
    uint32_t hash_size;           /* a power of two */
    /* LRU of live entries; lingering ones, oldest first (the same links) */
    list_t lru, linger;
    uint32_t live, lingering;
    uint64_t evictions;
    /* the timer wheel */
    list_t *wheel;
    uint32_t wheel_size;          /* a power of two > longest timeout + 1 */
    int64_t now;
    int started;
    /* the open tally: peer records, their index (NIL: empty) */
    peer_t *peers;
    uint32_t npeers, peers_used, peers_cap, peer_free;   /* freed records chained by n[0] */
    uint32_t *pslots;
    uint32_t pslot_size;          /* a power of two, at most half full */
    /* events of the call under way */
    event_t *events;
    size_t nevents, events_cap;
    size_t events_peak;           /* the most events of one call (written pages) */
    int keeping;                  /* the event rows wanted (else only counted) */
    /* K per peer of the call under way (counting): keys, rows, their index */
    int counting;
    counted_t counted;
    int failed;                   /* out of memory in the batch loop */
} Core;

/* ------------------------------------------------------------------ hashing */

static inline uint64_t mix64(uint64_t x)
{
    /* the finaliser of MurmurHash3: every input bit reaches every output bit */
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

static inline uint32_t hash_key(const addrs_t *a, uint16_t me_port, uint16_t peer_port,
                                uint8_t proto, uint8_t v6)
{
    uint64_t h = mix64(a->peer_lo ^ 0x9e3779b97f4a7c15ULL);
    h = mix64(h ^ a->peer_hi);
    h = mix64(h ^ a->me_lo);
    h = mix64(h ^ a->me_hi ^ ((uint64_t)me_port << 40) ^ ((uint64_t)peer_port << 24)
              ^ ((uint64_t)proto << 8) ^ v6);
    return (uint32_t)h ^ (uint32_t)(h >> 32);
}

/* The key of packet p: ports count for TCP and UDP only (ICMP: 0, 0). */
static inline int has_ports(uint8_t proto)
{
    return proto == P_TCP || proto == P_UDP;
}

static inline uint32_t packet_hash(const packet_t *p)
{
    int ports = has_ports(p->proto);
    return hash_key(&p->a, ports ? p->me_port : 0, ports ? p->peer_port : 0, p->proto, p->v6);
}

static inline uint32_t mask_of(const Core *c)
{
    return c->hash_size - 1;
}

static uint32_t lookup(const Core *c, const packet_t *p, uint32_t hash, uint16_t me_port,
                       uint16_t peer_port)
{
    for (uint32_t k = hash & mask_of(c);; k = (k + 1) & mask_of(c)) {
        const slot_t *s = &c->slots[k];
        if (s->entry == NIL)
            return NIL;
        if (s->hash != hash)
            continue;
        const entry_t *e = &c->pool[s->entry];
        if (e->a.peer_lo == p->a.peer_lo && e->a.me_lo == p->a.me_lo
            && e->peer_port == peer_port && e->me_port == me_port && e->proto == p->proto
            && e->v6 == p->v6 && e->a.peer_hi == p->a.peer_hi && e->a.me_hi == p->a.me_hi)
            return s->entry;
    }
}

static void hash_insert(Core *c, uint32_t i)
{
    uint32_t hash = c->pool[i].hash, k = hash & mask_of(c);
    while (c->slots[k].entry != NIL)
        k = (k + 1) & mask_of(c);
    c->slots[k].entry = i;
    c->slots[k].hash = hash;
}

/* Remove entry i; the slots after it move back so that no probe stops short. */
static void hash_remove(Core *c, uint32_t i)
{
    uint32_t mask = mask_of(c), hole = c->pool[i].hash & mask;
    while (c->slots[hole].entry != i)
        hole = (hole + 1) & mask;
    for (uint32_t k = (hole + 1) & mask; c->slots[k].entry != NIL; k = (k + 1) & mask) {
        uint32_t home = c->slots[k].hash & mask;
        /* slot k may fill the hole unless its home lies after the hole, up to k */
        if (((k - home) & mask) >= ((k - hole) & mask)) {
            c->slots[hole] = c->slots[k];
            hole = k;
        }
    }
    c->slots[hole].entry = NIL;
}

/* Large tables in huge pages where the kernel allows (THP "madvise"): a
 * flood filling them then takes one page fault per 2 MiB, not per 4 KiB. */
static void hugepages(void *start, size_t len)
{
#ifdef MADV_HUGEPAGE
    const uintptr_t huge = (uintptr_t)2 << 20;
    uintptr_t from = ((uintptr_t)start + huge - 1) & ~(huge - 1);
    uintptr_t to = ((uintptr_t)start + len) & ~(huge - 1);
    if (to > from)
        madvise((void *)from, to - from, MADV_HUGEPAGE);   /* a hint: failure is harmless */
#endif
}

static int hash_alloc(Core *c, uint32_t n)
{
    slot_t *slots = malloc((size_t)n * sizeof *slots);
    if (!slots)
        return -1;
    hugepages(slots, (size_t)n * sizeof *slots);
    for (uint32_t k = 0; k < n; k++)
        slots[k].entry = NIL;
    free(c->slots);
    c->slots = slots;
    c->hash_size = n;
    return 0;
}

/* Double the table when it would be more than half full: probes stay short. */
static int hash_grow(Core *c)
{
    if (c->hash_size >= (1u << 31) || hash_alloc(c, c->hash_size * 2) < 0)
        return -1;
    for (uint32_t i = 0; i < c->used; i++) {
        if (i + AHEAD < c->used)          /* random slots: fetch them ahead */
            __builtin_prefetch(&c->slots[c->pool[i + AHEAD].hash & mask_of(c)], 1);
        if (c->pool[i].state != S_FREE)
            hash_insert(c, i);
    }
    return 0;
}

/* ------------------------------------------------------------------ lists */

/* The LRU list links through lru_prev/lru_next, a wheel slot through wh_prev/wh_next. */
#define LIST_FUNCS(NAME, PREV, NEXT)                                                  \
    static inline void NAME##_append(Core *c, list_t *l, uint32_t i)                  \
    {                                                                                 \
        entry_t *e = &c->pool[i];                                                     \
        e->PREV = l->tail;                                                            \
        e->NEXT = NIL;                                                                \
        if (l->tail != NIL)                                                           \
            c->pool[l->tail].NEXT = i;                                                \
        else                                                                          \
            l->head = i;                                                              \
        l->tail = i;                                                                  \
    }                                                                                 \
    static inline void NAME##_remove(Core *c, list_t *l, uint32_t i)                  \
    {                                                                                 \
        entry_t *e = &c->pool[i];                                                     \
        if (e->PREV != NIL)                                                           \
            c->pool[e->PREV].NEXT = e->NEXT;                                          \
        else                                                                          \
            l->head = e->NEXT;                                                        \
        if (e->NEXT != NIL)                                                           \
            c->pool[e->NEXT].PREV = e->PREV;                                          \
        else                                                                          \
            l->tail = e->PREV;                                                        \
    }

LIST_FUNCS(lru, lru_prev, lru_next)
LIST_FUNCS(wh, wh_prev, wh_next)

static inline list_t *slot_of(Core *c, int64_t deadline)
{
    /* expired in second deadline + 1, emptied when the clock reaches it */
    return &c->wheel[(uint64_t)(deadline + 1) & (c->wheel_size - 1)];
}

/* Give entry i the deadline now + timeout; it moves only if that changed. */
static inline void arm(Core *c, uint32_t i, int64_t timeout)
{
    entry_t *e = &c->pool[i];
    int64_t deadline = c->now + timeout;
    if (deadline == e->deadline)
        return;
    wh_remove(c, slot_of(c, e->deadline), i);
    e->deadline = deadline;
    wh_append(c, slot_of(c, deadline), i);
}

static inline void lru_touch(Core *c, uint32_t i)
{
    if (c->lru.tail != i) {
        lru_remove(c, &c->lru, i);
        lru_append(c, &c->lru, i);
    }
}

/* ------------------------------------------------------------------ open tally */

static inline uint32_t peer_hash(uint64_t hi, uint64_t lo, uint8_t v6)
{
    uint64_t h = mix64(lo ^ 0x9e3779b97f4a7c15ULL);
    h = mix64(h ^ hi ^ ((uint64_t)v6 << 63));
    return (uint32_t)h ^ (uint32_t)(h >> 32);
}

/* The record of peer (hi, lo, v6), NIL if it has none; *where: its index slot, or
 * the empty one a new record of it would take. */
static uint32_t peer_find(const Core *c, uint64_t hi, uint64_t lo, uint8_t v6, uint32_t *where)
{
    uint32_t mask = c->pslot_size - 1;
    for (uint32_t k = peer_hash(hi, lo, v6) & mask;; k = (k + 1) & mask) {
        uint32_t r = c->pslots[k];
        *where = k;
        if (r == NIL)
            return NIL;
        const peer_t *q = &c->peers[r];
        if (q->lo == lo && q->hi == hi && q->v6 == v6)
            return r;
    }
}

/* Pages of the tally's own (mmap): growing moves no byte (mremap), and what it gives
 * back goes back to the system at once, so it costs what it holds whatever the heap
 * did before (a freed heap block the size of a table stays resident). */
static void *pages_resize(void *old, size_t old_len, size_t len)
{
    void *p = old ? mremap(old, old_len, len, MREMAP_MAYMOVE)
                  : mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
#ifdef MADV_HUGEPAGE
    madvise(p, len, MADV_HUGEPAGE);   /* the whole mapping: one piece, that mremap can move */
#endif
    return p;
}

static void pages_free(void *p, size_t len)
{
    if (p)
        munmap(p, len);
}

/* A new index of n slots for the records the old one names. */
static int pslots_alloc(Core *c, uint32_t n)
{
    uint32_t *slots = pages_resize(NULL, 0, (size_t)n * sizeof *slots);
    if (!slots)
        return -1;
    for (uint32_t k = 0; k < n; k++)
        slots[k] = NIL;
    pages_free(c->pslots, (size_t)c->pslot_size * sizeof *slots);
    c->pslots = slots;
    c->pslot_size = n;
    for (uint32_t r = 0; r < c->peers_used; r++) {      /* the records in order, not the slots */
        const peer_t *q = &c->peers[r];
        if (r + AHEAD < c->peers_used) {
            const peer_t *ahead = &c->peers[r + AHEAD];
            __builtin_prefetch(&slots[peer_hash(ahead->hi, ahead->lo, ahead->v6) & (n - 1)], 1);
        }
        uint32_t where;
        if (q->row != FREE_ROW && peer_find(c, q->hi, q->lo, q->v6, &where) == NIL)
            slots[where] = r;
    }
    return 0;
}

/* A free record: a freed one, else the next of the array (grown by doubling). */
static uint32_t peer_record(Core *c)
{
    if (c->peer_free != NIL) {
        uint32_t r = c->peer_free;
        c->peer_free = c->peers[r].n[0];
        return r;
    }
    if (c->peers_used == c->peers_cap) {
        uint64_t cap = c->peers_cap ? (uint64_t)c->peers_cap * 2 : 1024;
        if (cap > MAX_ENTRIES)
            cap = MAX_ENTRIES;
        if (cap <= c->peers_used)
            return NIL;
        peer_t *peers = pages_resize(c->peers, (size_t)c->peers_cap * sizeof *peers,
                                     cap * sizeof *peers);
        if (!peers)
            return NIL;
        c->peers = peers;
        c->peers_cap = (uint32_t)cap;
    }
    return c->peers_used++;
}

/* ------------------------------------------------------------------ K per peer */

/* K_FIELDS' column of each krow_t counter (active left out) */
static inline int k_column(int j)
{
    return j < K_ACTIVE ? j : j + 1;
}

/* Open counts (n[N_TCP..N_IN]) as a K row counted as begun (tcp udp icmp in out
 * active; the rest left as they are): what open_counts answers. */
static void tally_row(const uint32_t *m, int64_t *row)
{
    int64_t all = (int64_t)m[N_TCP] + m[N_UDP] + m[N_ICMP];
    row[K_TCP] = m[N_TCP];
    row[K_UDP] = m[N_UDP];
    row[K_ICMP] = m[N_ICMP];
    row[K_IN] = m[N_IN];
    row[K_OUT] = all - m[N_IN];
    row[K_ACTIVE] = all;
}

/* Room for one more row of the call: the rows moved to a block twice the size. */
static int counted_room(counted_t *t)
{
    if (t->n < t->cap)
        return 0;
    uint64_t cap = t->cap ? (uint64_t)t->cap * 2 : 1024;
    if (cap > MAX_ENTRIES)
        return -1;
    const uintptr_t line = sizeof(krow_t);
    void *block = malloc(cap * sizeof(krow_t) + line);
    peer_key_t *keys = realloc(t->keys, cap * sizeof *keys);
    if (keys)
        t->keys = keys;
    if (!block || !keys) {
        free(block);
        return -1;
    }
    krow_t *rows = (krow_t *)(((uintptr_t)block + line - 1) & ~(line - 1));
    if (t->n)
        memcpy(rows, t->rows, t->n * sizeof *rows);
    free(t->block);
    t->block = block;
    t->rows = rows;
    t->cap = (uint32_t)cap;
    return 0;
}

/* The K row in this call of peer record r: made at the peer's first event of the
 * call, with its open tally as it is then, before the call changed it.  The record
 * names its row (and stays for the call: counted_end frees it if its last one
 * went); NULL: no memory. */
static krow_t *counted_row(Core *c, uint32_t r)
{
    counted_t *t = &c->counted;
    peer_t *q = &c->peers[r];
    if (q->row)
        return &t->rows[q->row - 1];
    if (counted_room(t) < 0)
        return NULL;
    uint32_t i = t->n++;
    if (t->n > t->peak)
        t->peak = t->n;
    q->row = i + 1;
    t->keys[i] = (peer_key_t){.v6 = q->v6, .hi = q->hi, .lo = q->lo};
    krow_t *row = &t->rows[i];
    memset(row->k, 0, sizeof row->k);
    memcpy(row->before, q->n, sizeof row->before);
    row->record = r;
    return row;
}

/* Record r had its last connection end in this call: it goes at the call's end
 * (counted_end) unless one begins by then; -1: no memory. */
static int counted_emptied(counted_t *t, uint32_t r)
{
    if (t->nemptied == t->emptied_cap) {
        uint64_t cap = t->emptied_cap ? (uint64_t)t->emptied_cap * 2 : 1024;
        uint32_t *emptied = cap > MAX_ENTRIES ? NULL : realloc(t->emptied, cap * sizeof *emptied);
        if (!emptied)
            return -1;
        t->emptied = emptied;
        t->emptied_cap = (uint32_t)cap;
    }
    t->emptied[t->nemptied++] = r;
    return 0;
}

static void peer_release(Core *c, uint32_t r);

/* The call is over: its rows' records name no row (their lines are likely still
 * cached: each had the call's events), and the records it emptied and nothing
 * refilled go (they stayed so that a peer has one row in a call). */
static void counted_end(Core *c)
{
    counted_t *t = &c->counted;
    for (uint32_t i = 0; i < t->n; i++) {
        if (i + AHEAD < t->n)
            __builtin_prefetch(&c->peers[t->rows[i + AHEAD].record], 1);
        c->peers[t->rows[i].record].row = 0;
    }
    for (uint32_t i = 0; i < t->nemptied; i++) {
        peer_t *q = &c->peers[t->emptied[i]];
        if (q->row != FREE_ROW && !(q->n[N_TCP] | q->n[N_UDP] | q->n[N_ICMP]))
            peer_release(c, t->emptied[i]);
    }
    t->n = t->nemptied = 0;
}

/* Entry e becomes live: its peer's record (made if it has none) counts it begun, and
 * so does its K row when the call counts. */
static int tally_new(Core *c, entry_t *e)
{
    uint32_t where, r = peer_find(c, e->a.peer_hi, e->a.peer_lo, e->v6, &where);
    if (r == NIL) {
        if (2 * ((uint64_t)c->npeers + 1) > c->pslot_size) {     /* at most half full */
            if (c->pslot_size >= (1u << 31) || pslots_alloc(c, c->pslot_size * 2) < 0)
                return -1;
            peer_find(c, e->a.peer_hi, e->a.peer_lo, e->v6, &where);
        }
        if ((r = peer_record(c)) == NIL)
            return -1;
        c->pslots[where] = r;
        c->npeers++;
        peer_t *q = &c->peers[r];
        memset(q, 0, sizeof *q);
        q->hi = e->a.peer_hi;
        q->lo = e->a.peer_lo;
        q->v6 = e->v6;
    }
    e->peer = r;
    int proto = e->proto == P_TCP ? N_TCP : e->proto == P_UDP ? N_UDP : N_ICMP,
        in = !(e->bits & B_INIT_ME);
    if (c->counting) {
        krow_t *row = counted_row(c, r);
        if (!row)
            return -1;
        row->k[proto]++;                  /* N_TCP N_UDP N_ICMP are K_TCP K_UDP K_ICMP */
        row->k[in ? K_IN : K_OUT]++;
    }
    peer_t *q = &c->peers[r];
    q->n[proto]++;
    if (in)
        q->n[N_IN]++;
    return 0;
}

/* Take record r out of the index and into the free chain. */
static void peer_release(Core *c, uint32_t r)
{
    peer_t *q = &c->peers[r];
    uint32_t mask = c->pslot_size - 1, hole = peer_hash(q->hi, q->lo, q->v6) & mask;
    while (c->pslots[hole] != r)
        hole = (hole + 1) & mask;
    /* the slots after it move back so that no probe stops short (as hash_remove) */
    for (uint32_t k = (hole + 1) & mask; c->pslots[k] != NIL; k = (k + 1) & mask) {
        const peer_t *p = &c->peers[c->pslots[k]];
        uint32_t home = peer_hash(p->hi, p->lo, p->v6) & mask;
        if (((k - home) & mask) >= ((k - hole) & mask)) {
            c->pslots[hole] = c->pslots[k];
            hole = k;
        }
    }
    c->pslots[hole] = NIL;
    c->npeers--;
    q->n[0] = c->peer_free;           /* the free records' chain */
    q->row = FREE_ROW;
    c->peer_free = r;
}

/* Entry e ends (how: state): its peer's record counts it no more, and goes with its
 * last one (in a counting call at the call's end: counted_end); its K row counts the
 * end (drained ones count nowhere). */
static int tally_end(Core *c, const entry_t *e, uint8_t state)
{
    uint32_t r = e->peer;
    if (c->counting && state >= E_CLOSED && state <= E_EVICTED) {
        krow_t *row = counted_row(c, r);
        if (!row)
            return -1;
        row->k[K_CLOSED - 1 + state - E_CLOSED]++;     /* no active column */
    }
    peer_t *q = &c->peers[r];
    q->n[e->proto == P_TCP ? N_TCP : e->proto == P_UDP ? N_UDP : N_ICMP]--;
    if (!(e->bits & B_INIT_ME))
        q->n[N_IN]--;
    if (q->n[N_TCP] | q->n[N_UDP] | q->n[N_ICMP])
        return 0;
    if (!c->counting)
        peer_release(c, r);
    else if (counted_emptied(&c->counted, r) < 0)
        return -1;
    return 0;
}

/* ------------------------------------------------------------------ events */

static int emit_row(Core *c, uint8_t kind, uint8_t state, const entry_t *e)
{
    if (c->nevents == c->events_cap) {
        size_t cap = c->events_cap ? c->events_cap * 2 : 1024;
        event_t *ev = realloc(c->events, cap * sizeof *ev);
        if (!ev) {
            c->failed = 1;
            return -1;
        }
        c->events = ev;
        c->events_cap = cap;
    }
    event_t *ev = &c->events[c->nevents++];
    if (c->nevents > c->events_peak)
        c->events_peak = c->nevents;
    memset(ev->pad, 0, sizeof ev->pad);
    ev->start = e->start;
    ev->end = e->end;
    ev->a = e->a;
    ev->n = e->n;
    ev->me_port = e->me_port;
    ev->peer_port = e->peer_port;
    ev->kind = kind;
    ev->state = state;
    ev->proto = e->proto;
    ev->dir = (e->bits & B_INIT_ME) ? DIR_OUT : DIR_IN;
    ev->v6 = e->v6;
    return 0;
}

/* An event of the table: a new connection is live, an ended one no longer (the tally). */
static int emit(Core *c, uint8_t kind, uint8_t state, entry_t *e)
{
    if (c->keeping && emit_row(c, kind, state, e) < 0)
        return -1;
    if ((kind == K_NEW ? tally_new(c, e) : tally_end(c, e, state)) < 0) {
        c->failed = 1;
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ entries */

/* Take entry i out of everything and back into the pool. */
static void release(Core *c, uint32_t i)
{
    entry_t *e = &c->pool[i];
    hash_remove(c, i);
    wh_remove(c, slot_of(c, e->deadline), i);
    if (e->state == S_LINGER) {
        lru_remove(c, &c->linger, i);
        c->lingering--;
    } else {
        lru_remove(c, &c->lru, i);
        c->live--;
    }
    e->state = S_FREE;
    e->hash = c->free_head;
    c->free_head = i;
}

static int pool_grow(Core *c)
{
    if (c->capacity >= MAX_ENTRIES)
        return -1;
    uint64_t cap = c->capacity ? (uint64_t)c->capacity * 2 : 1024;
    if (cap > MAX_ENTRIES)
        cap = MAX_ENTRIES;
    entry_t *pool = realloc(c->pool, cap * sizeof *pool);
    if (!pool)
        return -1;
    c->pool = pool;
    c->capacity = (uint32_t)cap;
    hugepages(pool, cap * sizeof *pool);
    return 0;
}

/* A new live entry for packet p's key, evicting the least recently active
 * live entry if the table is full (unless its packet ends it at once: it is
 * never live after that packet); NIL if out of memory. */
static uint32_t open_entry(Core *c, const packet_t *p, uint32_t hash, uint16_t me_port,
                           uint16_t peer_port, uint8_t state, uint8_t bits, double ts,
                           int ends_at_once)
{
    if (c->live >= c->max_live && !ends_at_once) {
        uint32_t victim = c->lru.head;
        if (emit(c, K_END, E_EVICTED, &c->pool[victim]) < 0)
            return NIL;
        release(c, victim);
        c->evictions++;
        if (c->lru.head != NIL) {     /* a flood evicts again: fetch the next victim's slot */
            const entry_t *next = &c->pool[c->lru.head];
            __builtin_prefetch(&c->slots[next->hash & mask_of(c)], 1);
            __builtin_prefetch(&c->peers[next->peer], 1);
            if (next->lru_next != NIL)
                __builtin_prefetch(&c->pool[next->lru_next], 1);
        }
    }
    if (2 * ((uint64_t)c->live + c->lingering + 1) > c->hash_size && hash_grow(c) < 0)
        return NIL;
    uint32_t i;
    if (c->free_head != NIL) {
        i = c->free_head;
        c->free_head = c->pool[i].hash;
    } else {
        if (c->used == c->capacity && pool_grow(c) < 0)
            return NIL;
        i = c->used++;
    }
    entry_t *e = &c->pool[i];
    e->a = p->a;
    e->me_port = me_port;
    e->peer_port = peer_port;
    e->proto = p->proto;
    e->v6 = p->v6;
    e->bits = bits | (p->from_me ? B_INIT_ME : 0);
    e->state = state;
    memset(&e->n, 0, sizeof e->n);
    e->start = e->end = ts;
    e->hash = hash;
    hash_insert(c, i);
    lru_append(c, &c->lru, i);
    c->live++;
    /* first arming: always into the tail of its slot */
    e->deadline = c->now;         /* a placeholder arm() sees as changed */
    wh_append(c, slot_of(c, e->deadline), i);
    return i;
}

/* Count packet p in entry i: its side's packets and bytes, the last packet. */
static inline int count(Core *c, uint32_t i, const packet_t *p, double ts)
{
    entry_t *e = &c->pool[i];
    int from_initiator = (p->from_me != 0) == ((e->bits & B_INIT_ME) != 0);
    if (from_initiator) {
        e->n.orig_packets++;
        e->n.orig_bytes += p->wirelen;
    } else {
        e->n.resp_packets++;
        e->n.resp_bytes += p->wirelen;
    }
    e->end = ts;
    lru_touch(c, i);
    return from_initiator;
}

static inline int64_t timeout_of(const Core *c, const entry_t *e)
{
    switch (e->state) {
    case S_SYN_SENT:
        return c->t_establish;
    case S_ESTABLISHED:
        return c->t_tcp;
    case S_LINGER:
        return c->t_linger;
    default:
        return e->proto == P_UDP ? c->t_udp : c->t_icmp;
    }
}

/* Ended by a packet: the end event, then the linger (not live, not in the LRU);
 * with max_connections lingering already, the oldest linger ends (no event). */
static int finish(Core *c, uint32_t i, uint8_t state)
{
    entry_t *e = &c->pool[i];
    if (emit(c, K_END, state, e) < 0)
        return -1;
    lru_remove(c, &c->lru, i);
    c->live--;
    if (c->lingering >= c->max_live)
        release(c, c->linger.head);
    c->lingering++;
    e->state = S_LINGER;
    lru_append(c, &c->linger, i);
    arm(c, i, c->t_linger);
    return 0;
}

/* ------------------------------------------------------------------ time */

/* Move the clock to sec, ending what expires on the way, slot by slot. */
static int advance(Core *c, int64_t sec)
{
    if (!c->started) {
        c->started = 1;
        c->now = sec;
        return 0;
    }
    if (sec <= c->now)
        return 0;
    int64_t last = sec;
    if (sec - c->now > (int64_t)c->wheel_size)
        last = c->now + c->wheel_size;  /* every deadline lies within one turn */
    for (int64_t x = c->now + 1; x <= last; x++) {
        list_t *slot = &c->wheel[(uint64_t)x & (c->wheel_size - 1)];
        while (slot->head != NIL) {
            uint32_t i = slot->head;
            entry_t *e = &c->pool[i];
            if (e->state != S_LINGER
                && emit(c, K_END, e->state == S_SYN_SENT ? E_UNANSWERED : E_TIMEDOUT, e) < 0)
                return -1;
            release(c, i);
        }
    }
    c->now = sec;
    return 0;
}

/* ------------------------------------------------------------------ packets */

static int tcp_packet(Core *c, uint32_t i, const packet_t *p, uint32_t hash, double ts)
{
    uint8_t f = p->flags;
    int opening = (f & F_SYN) && !(f & (F_ACK | F_RST));
    if (i != NIL && c->pool[i].state == S_LINGER) {
        if (!opening)
            return 0;                 /* absorbed by the linger: B/C only */
        release(c, i);                /* a new SYN: a new connection at once */
        i = NIL;
    }
    int from_initiator;
    if (i == NIL) {
        i = open_entry(c, p, hash, p->me_port, p->peer_port,
                       opening ? S_SYN_SENT : S_ESTABLISHED, opening ? 0 : B_PICKUP, ts,
                       !opening && (f & F_RST));
        if (i == NIL)
            return -1;
        from_initiator = count(c, i, p, ts);
        if (emit(c, K_NEW, E_ACTIVE, &c->pool[i]) < 0)
            return -1;
        if (opening) {
            arm(c, i, c->t_establish);
            return 0;
        }
    } else {
        from_initiator = count(c, i, p, ts);
        if (opening) {                /* a SYN retransmission: activity only */
            arm(c, i, timeout_of(c, &c->pool[i]));
            return 0;
        }
    }
    entry_t *e = &c->pool[i];
    if (f & F_RST) {
        int refused = !(e->bits & (B_PICKUP | B_SYNACK)) && !from_initiator;
        return finish(c, i, refused ? E_REFUSED : E_RESET);
    }
    if ((f & F_SYN) && (f & F_ACK) && !from_initiator) {
        e->bits |= B_SYNACK;
        e->state = S_ESTABLISHED;
    }
    if (f & F_FIN) {
        e->bits |= from_initiator ? B_FIN_ORIG : B_FIN_RESP;
        if ((e->bits & (B_FIN_ORIG | B_FIN_RESP)) == (B_FIN_ORIG | B_FIN_RESP))
            return finish(c, i, E_CLOSED);
    }
    arm(c, i, timeout_of(c, e));
    return 0;
}

static inline int tracked(uint8_t proto)
{
    return proto == P_TCP || proto == P_UDP || proto == P_ICMP || proto == P_ICMP6;
}

/* Packet p, whose key hashes to hash: spec 10.2 in the order the rules apply. */
static int one_packet(Core *c, const packet_t *p, uint32_t hash)
{
    if (!tracked(p->proto))
        return 0;
    if (advance(c, p->sec) < 0)       /* expiry before lookup */
        return -1;
    int ports = has_ports(p->proto);
    uint16_t me_port = ports ? p->me_port : 0, peer_port = ports ? p->peer_port : 0;
    double ts = (double)p->sec + (double)p->usec / 1e6;
    uint32_t i = lookup(c, p, hash, me_port, peer_port);
    if (p->proto == P_TCP)
        return tcp_packet(c, i, p, hash, ts);
    int fresh = i == NIL;
    if (fresh && (i = open_entry(c, p, hash, me_port, peer_port, S_FLOW, 0, ts, 0)) == NIL)
        return -1;
    count(c, i, p, ts);
    if (fresh && emit(c, K_NEW, E_ACTIVE, &c->pool[i]) < 0)
        return -1;
    arm(c, i, timeout_of(c, &c->pool[i]));
    return 0;
}

/*
 * The batch loop.  Lookups are random accesses to a large table: hashes are
 * computed AHEAD rows in advance and their slots prefetched, and half-way the
 * entry the slot names is prefetched, so that by its turn a packet's memory
 * is in the cache.  Prefetches are hints only: a table changed meanwhile costs
 * a miss, never a wrong answer.
 */
static inline void prefetch_entry(const Core *c, uint32_t hash, const packet_t *p)
{
    const slot_t *s = &c->slots[hash & mask_of(c)];
    if (s->entry != NIL)
        __builtin_prefetch(&c->pool[s->entry]);
    else                          /* likely a new connection: its peer's index slot */
        __builtin_prefetch(&c->pslots[peer_hash(p->a.peer_hi, p->a.peer_lo, p->v6)
                                      & (c->pslot_size - 1)]);
}

static int run_batch(Core *c, const packet_t *p, size_t n)
{
    uint32_t ring[AHEAD];
    size_t lead = n < AHEAD ? n : AHEAD;
    for (size_t k = 0; k < lead; k++) {
        ring[k] = packet_hash(&p[k]);
        __builtin_prefetch(&c->slots[ring[k] & mask_of(c)]);
    }
    for (size_t k = 0; k < n; k++) {
        uint32_t hash = ring[k & (AHEAD - 1)];
        if (k + AHEAD / 2 < n)
            prefetch_entry(c, ring[(k + AHEAD / 2) & (AHEAD - 1)], &p[k + AHEAD / 2]);
        if (k + AHEAD < n) {
            uint32_t next = packet_hash(&p[k + AHEAD]);
            ring[(k + AHEAD) & (AHEAD - 1)] = next;
            __builtin_prefetch(&c->slots[next & mask_of(c)]);
        }
        if (one_packet(c, &p[k], hash) < 0)
            return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ Python */

/* The events gathered so far as bytes (conntrack.EVENT_DTYPE rows); resets them. */
static PyObject *take_events(Core *c)
{
    if (c->failed) {
        c->failed = 0;
        c->nevents = 0;
        return PyErr_NoMemory();
    }
    PyObject *out = PyBytes_FromStringAndSize((const char *)c->events,
                                              (Py_ssize_t)(c->nevents * sizeof(event_t)));
    c->nevents = 0;
    return out;
}

/* A Core made by __new__ alone has no tables: refuse it rather than crash. */
static int ready(const Core *c)
{
    if (c->wheel)
        return 1;
    PyErr_SetString(PyExc_RuntimeError, "conntrack: Core not initialised");
    return 0;
}

/* arg's buffer into view as rows of `size` bytes; -1 (an exception set) if it is not. */
static int get_rows(const Core *c, PyObject *arg, Py_buffer *view, size_t size,
                    const char *refusal)
{
    if (!ready(c) || PyObject_GetBuffer(arg, view, PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    if (view->len % (Py_ssize_t)size) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_ValueError, refusal);
        return -1;
    }
    return 0;
}

/* Track a buffer of packets (the events gathered, counted as the mode says). */
static int track(Core *c, PyObject *arg)
{
    Py_buffer view;
    if (get_rows(c, arg, &view, sizeof(packet_t),
                 "packets: not rows of conntrack.PACKET_DTYPE") < 0)
        return -1;
    const packet_t *p = view.buf;
    size_t n = (size_t)view.len / sizeof(packet_t);
    if (c->counting && n > MAX_BATCH) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "packets: over 2^30 in one counted batch");
        return -1;
    }
    Py_BEGIN_ALLOW_THREADS
    if (run_batch(c, p, n) < 0)
        c->failed = 1;
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    return 0;
}

/* Move the clock to the second arg with no packet. */
static int tick(Core *c, PyObject *arg)
{
    long long sec = PyLong_AsLongLong(arg);
    if ((sec == -1 && PyErr_Occurred()) || !ready(c))
        return -1;
    if (advance(c, sec) < 0)
        c->failed = 1;
    return 0;
}

static PyObject *Core_process(Core *c, PyObject *arg)
{
    return track(c, arg) < 0 ? NULL : take_events(c);
}

static PyObject *Core_advance(Core *c, PyObject *arg)
{
    return tick(c, arg) < 0 ? NULL : take_events(c);
}

/* ------------------------------------------------------------------ K rows out */

#define RADIX_BITS 11             /* three passes sort 32-bit keys */
#define RADIX (1u << RADIX_BITS)

static inline int plain_v4(const peer_key_t *key)
{
    return !key->v6 && !key->hi && key->lo <= UINT32_MAX;
}

/* order[0..n) sorted by key[order[i]] (one LSD radix pass per 11 bits): stable. */
static void radix_sort32(uint32_t *order, uint32_t *spare, const uint32_t *key, size_t n)
{
    size_t count[RADIX];
    for (int shift = 0; shift < 32; shift += RADIX_BITS) {
        memset(count, 0, sizeof count);
        for (size_t i = 0; i < n; i++)
            count[(key[order[i]] >> shift) & (RADIX - 1)]++;
        size_t at = 0;
        for (uint32_t b = 0; b < RADIX; b++) {
            size_t m = count[b];
            count[b] = at;
            at += m;
        }
        for (size_t i = 0; i < n; i++)
            spare[count[(key[order[i]] >> shift) & (RADIX - 1)]++] = order[i];
        memcpy(order, spare, n * sizeof *order);
    }
}

static const peer_key_t *sorting_keys;    /* qsort's context: the rows being ordered */

static int by_peer(const void *a, const void *b)
{
    const peer_key_t *x = &sorting_keys[*(const uint32_t *)a],
                     *y = &sorting_keys[*(const uint32_t *)b];
    if (x->v6 != y->v6)
        return x->v6 < y->v6 ? -1 : 1;
    if (x->hi != y->hi)
        return x->hi < y->hi ? -1 : 1;
    return x->lo < y->lo ? -1 : x->lo > y->lo;
}

/* Into order: the permutation that sorts the rows' peers as conncounts.count's are
 * (by v6, hi, lo: the IPv4 ones, most, by a radix sort of their address); -1: no
 * memory.  Asked in that order, the records' index answers several times faster
 * (Table.peer_slots); counted_result gathers the rows in it (the rows of a call
 * are few and recent, mostly cached: cheaper here than a permutation in numpy). */
static int counted_order(const counted_t *t, uint32_t *order)
{
    size_t n = t->n, n4 = 0;
    uint32_t *spare = malloc((n + 1) * sizeof *spare), *low = malloc((n + 1) * sizeof *low);
    const peer_key_t *keys = t->keys;
    int ok = spare && low;
    if (ok) {
        size_t rest = n;
        for (uint32_t r = 0; r < n; r++) {
            low[r] = (uint32_t)keys[r].lo;
            if (plain_v4(&keys[r]))
                order[n4++] = r;
            else
                order[--rest] = r;
        }
        radix_sort32(order, spare, low, n4);
        sorting_keys = keys;             /* the GIL is held: no other sort runs */
        qsort(order + n4, n - n4, sizeof *order, by_peer);
    }
    free(spare);
    free(low);
    return ok ? 0 : -1;
}

/* The K deltas and open counts before of the rows, taken in ``order`` (K_WIDTH
 * integers of size bytes each, 4 or 8) into delta and before; -1 if a count does not
 * fit that size. */
static int counted_rows(const counted_t *t, const uint32_t *order, size_t size, char *delta,
                        char *before)
{
    for (size_t i = 0; i < t->n; i++) {
        const krow_t *row = &t->rows[order[i]];
        int64_t d[K_WIDTH], b[K_WIDTH] = {0}, ended = 0;
        for (int j = 0; j < K_COUNTED; j++)
            d[k_column(j)] = row->k[j];
        for (int j = K_CLOSED; j < K_WIDTH; j++)
            ended += d[j];
        d[K_ACTIVE] = d[K_TCP] + d[K_UDP] + d[K_ICMP] - ended;
        tally_row(row->before, b);
        for (int j = 0; j < K_WIDTH; j++, delta += size, before += size) {
            if (size == sizeof(int64_t)) {
                memcpy(delta, &d[j], size);
                memcpy(before, &b[j], size);
                continue;
            }
            if (d[j] < INT32_MIN || d[j] > INT32_MAX || b[j] > INT32_MAX)
                return -1;
            int32_t narrow[2] = {(int32_t)d[j], (int32_t)b[j]};
            memcpy(delta, &narrow[0], size);
            memcpy(before, &narrow[1], size);
        }
    }
    return 0;
}

/* Bytes objects of n items of size bytes each, into out; -1 (no memory). */
static int new_bytes(PyObject **out, int count, const size_t *n, const size_t *size)
{
    for (int a = 0; a < count; a++)
        if (!(out[a] = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(n[a] * size[a])))) {
            while (a--)
                Py_CLEAR(out[a]);
            return -1;
        }
    return 0;
}

/* (events, peers, K deltas, open before) of the call: the rows sorted by peer as
 * conncounts.count's are (the records' index answers several times faster asked in
 * that order); the counts as int32 (int64 where one does not fit). */
static PyObject *counted_result(Core *c)
{
    const counted_t *t = &c->counted;
    size_t n = t->n;
    PyObject *out[3] = {NULL};
    uint32_t *order = PyMem_Malloc((n ? n : 1) * sizeof *order);
    if (!order || counted_order(t, order) < 0) {
        PyMem_Free(order);
        c->nevents = 0;                  /* the events gone with the rows */
        return PyErr_NoMemory();
    }
    for (size_t size = sizeof(int32_t);; size = sizeof(int64_t)) {
        size_t counts[3] = {n, n * K_WIDTH, n * K_WIDTH},
               sizes[3] = {sizeof(peer_key_t), size, size};
        if (new_bytes(out, 3, counts, sizes) < 0)
            break;
        peer_key_t *keys = (peer_key_t *)PyBytes_AS_STRING(out[0]);
        for (size_t i = 0; i < n; i++)
            keys[i] = t->keys[order[i]];
        if (counted_rows(t, order, size, PyBytes_AS_STRING(out[1]),
                         PyBytes_AS_STRING(out[2])) == 0) {
            PyMem_Free(order);
            return Py_BuildValue("(NNNN)", take_events(c), out[0], out[1], out[2]);
        }
        for (int a = 0; a < 3; a++)
            Py_CLEAR(out[a]);
    }
    for (int a = 0; a < 3; a++)
        Py_CLEAR(out[a]);
    PyMem_Free(order);
    c->nevents = 0;                      /* the events gone with the rows */
    return NULL;
}

/* One call of step (track or tick) counted per peer: (events, peers, K deltas, open
 * before) as bytes; the events empty unless keep is true.  The index emptied after. */
static PyObject *counted_call(Core *c, PyObject *args, int (*step)(Core *, PyObject *))
{
    PyObject *arg;
    int keep;
    if (!PyArg_ParseTuple(args, "Op", &arg, &keep))
        return NULL;
    c->counting = 1;
    c->keeping = keep;
    int ok = step(c, arg) == 0;
    c->counting = 0;
    c->keeping = 1;
    PyObject *out = NULL;
    if (ok && !c->failed)
        out = counted_result(c);
    else if (ok)
        take_events(c);                  /* out of memory: the error, the events gone */
    counted_end(c);
    return out;
}

static PyObject *Core_process_counted(Core *c, PyObject *args)
{
    return counted_call(c, args, track);
}

static PyObject *Core_advance_counted(Core *c, PyObject *args)
{
    return counted_call(c, args, tick);
}

/* An event for every live entry, least recently active first. */
static void emit_live(Core *c, uint8_t kind, uint8_t state)
{
    for (uint32_t i = c->lru.head; i != NIL; i = c->pool[i].lru_next)
        if (emit_row(c, kind, state, &c->pool[i]) < 0)
            break;
}

/* Every live entry ends as drained, least recently active first; the table empties. */
static PyObject *Core_drain(Core *c, PyObject *unused)
{
    if (!ready(c))
        return NULL;
    emit_live(c, K_END, E_DRAINED);
    for (uint32_t s = 0; s < c->wheel_size; s++)
        c->wheel[s].head = c->wheel[s].tail = NIL;
    for (uint32_t k = 0; k < c->hash_size; k++)
        c->slots[k].entry = NIL;
    c->lru.head = c->lru.tail = NIL;
    c->linger.head = c->linger.tail = NIL;
    c->used = 0;
    c->free_head = NIL;
    c->live = c->lingering = 0;
    c->npeers = c->peers_used = 0;
    c->peer_free = NIL;
    for (uint32_t k = 0; k < c->pslot_size; k++)
        c->pslots[k] = NIL;
    return take_events(c);
}

/* Every live entry as a new event, least recently active first; the table unchanged:
 * what a reset (SIGHUP) or a replay about to delete records counts as begun. */
static PyObject *Core_still_open(Core *c, PyObject *unused)
{
    if (!ready(c))
        return NULL;
    emit_live(c, K_NEW, E_ACTIVE);
    return take_events(c);
}

/* Per peer of a buffer of conncounts.PEER_DTYPE rows, the K row (int64, K_FIELDS
 * order) of its live connections counted as begun: tcp udp icmp in out active. */
static PyObject *Core_open_counts(Core *c, PyObject *arg)
{
    Py_buffer view;
    if (get_rows(c, arg, &view, sizeof(peer_key_t),
                 "peers: not rows of conncounts.PEER_DTYPE") < 0)
        return NULL;
    size_t n = (size_t)view.len / sizeof(peer_key_t);
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(n * K_WIDTH * sizeof(int64_t)));
    if (!out) {
        PyBuffer_Release(&view);
        return NULL;
    }
    const peer_key_t *keys = view.buf;
    int64_t *row = (int64_t *)PyBytes_AS_STRING(out);
    memset(row, 0, n * K_WIDTH * sizeof(int64_t));
    for (size_t i = 0; i < n; i++, row += K_WIDTH) {
        peer_key_t key = keys[i];
        uint32_t where, r = peer_find(c, key.hi, key.lo, key.v6, &where);
        if (r == NIL)
            continue;
        uint32_t m[4];
        memcpy(m, c->peers[r].n, sizeof m);
        tally_row(m, row);
    }
    PyBuffer_Release(&view);
    return out;
}

static PyObject *Core_live(Core *c, PyObject *unused)
{
    return PyLong_FromUnsignedLong(c->live);
}

static PyObject *Core_lingering(Core *c, PyObject *unused)
{
    return PyLong_FromUnsignedLong(c->lingering);
}

static PyObject *Core_evictions(Core *c, PyObject *unused)
{
    return PyLong_FromUnsignedLongLong(c->evictions);
}

/* The bytes written of the buffers one call needs whatever the table holds (its
 * events, its K rows): sized by the largest batch so far, not by the connections. */
static PyObject *Core_scratch_bytes(Core *c, PyObject *unused)
{
    const counted_t *t = &c->counted;
    size_t bytes = c->events_peak * sizeof(event_t) +
                   (size_t)t->peak * (sizeof(krow_t) + sizeof(peer_key_t));
    return PyLong_FromSize_t(bytes);
}

static int Core_init(Core *c, PyObject *args, PyObject *kwds)
{
    long long establish, tcp, udp, icmp, linger;
    unsigned long max_live;
    if (!PyArg_ParseTuple(args, "LLLLLk", &establish, &tcp, &udp, &icmp, &linger, &max_live))
        return -1;
    long long longest = establish;
    long long all[] = {tcp, udp, icmp, linger};
    for (int k = 0; k < 4; k++)
        if (all[k] > longest)
            longest = all[k];
    if (establish < 0 || tcp < 0 || udp < 0 || icmp < 0 || linger < 0 || longest > MAX_TIMEOUT
        || max_live < 1 || max_live >= MAX_ENTRIES) {
        PyErr_SetString(PyExc_ValueError, "conntrack: timeouts or max_connections out of range");
        return -1;
    }
    if (c->wheel) {
        PyErr_SetString(PyExc_RuntimeError, "conntrack: Core initialised twice");
        return -1;
    }
    c->t_establish = establish;
    c->t_tcp = tcp;
    c->t_udp = udp;
    c->t_icmp = icmp;
    c->t_linger = linger;
    c->max_live = (uint32_t)max_live;
    c->wheel_size = 4;
    while ((long long)c->wheel_size <= longest + 1)
        c->wheel_size *= 2;
    c->wheel = malloc(c->wheel_size * sizeof *c->wheel);
    if (!c->wheel || hash_alloc(c, 2048) < 0 || pslots_alloc(c, 2048) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    for (uint32_t s = 0; s < c->wheel_size; s++)
        c->wheel[s].head = c->wheel[s].tail = NIL;
    c->lru.head = c->lru.tail = NIL;
    c->linger.head = c->linger.tail = NIL;
    c->free_head = NIL;
    c->peer_free = NIL;
    c->keeping = 1;
    return 0;
}

static void Core_dealloc(Core *c)
{
    free(c->pool);
    free(c->slots);
    free(c->wheel);
    free(c->events);
    free(c->counted.block);
    free(c->counted.keys);
    free(c->counted.emptied);
    pages_free(c->peers, (size_t)c->peers_cap * sizeof *c->peers);
    pages_free(c->pslots, (size_t)c->pslot_size * sizeof *c->pslots);
    Py_TYPE(c)->tp_free((PyObject *)c);
}

static PyMethodDef Core_methods[] = {
    {"process", (PyCFunction)Core_process, METH_O,
     "process(packets) -> bytes: track a buffer of PACKET_DTYPE rows; the events."},
    {"advance", (PyCFunction)Core_advance, METH_O,
     "advance(sec) -> bytes: move the clock with no packet; the expiries."},
    {"process_counted", (PyCFunction)Core_process_counted, METH_VARARGS,
     "process_counted(packets, keep_events) -> (events, peers, deltas, before): "
     "process, with the K deltas per peer and its open counts before (int32 or int64 "
     "rows), the rows sorted by peer; events kept only if asked for."},
    {"advance_counted", (PyCFunction)Core_advance_counted, METH_VARARGS,
     "advance_counted(sec, keep_events) -> (events, peers, deltas, before): advance, "
     "counted as process_counted counts."},
    {"drain", (PyCFunction)Core_drain, METH_NOARGS,
     "drain() -> bytes: end every live connection as drained, empty the table."},
    {"still_open", (PyCFunction)Core_still_open, METH_NOARGS,
     "still_open() -> bytes: every live connection as a new event; the table unchanged."},
    {"open_counts", (PyCFunction)Core_open_counts, METH_O,
     "open_counts(peers) -> bytes: int64 K rows of the live connections of each peer."},
    {"live", (PyCFunction)Core_live, METH_NOARGS, "live() -> open connections."},
    {"lingering", (PyCFunction)Core_lingering, METH_NOARGS, "lingering() -> ended, lingering."},
    {"evictions", (PyCFunction)Core_evictions, METH_NOARGS, "evictions() -> evicted so far."},
    {"scratch_bytes", (PyCFunction)Core_scratch_bytes, METH_NOARGS,
     "scratch_bytes() -> bytes of the per-call buffers (events, K rows)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject CoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ncsniffer._conntrack.Core",
    .tp_doc = "Core(tcp_establish, tcp, udp, icmp, tcp_linger, max_connections): "
              "the connection table.",
    .tp_basicsize = sizeof(Core),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Core_init,
    .tp_dealloc = (destructor)Core_dealloc,
    .tp_methods = Core_methods,
};

/* ------------------------------------------------------------------ records' K */

/* table.Table's stored K (uint32 per record, CONN_STORED: K_FIELDS without active) */
#define K_STORED (K_WIDTH - 1)
#define CONN_MAX UINT32_MAX
enum { S_BEGUN = 3, S_ENDED = 5 };   /* tcp udp icmp first; the six ends last */

/* One record's K plus one row of deltas, as Table.add_connections_plain adds them:
 * negative deltas dropped, ends beyond what it began dropped (in column order), each
 * counter saturated at CONN_MAX, its int64 result stored as numpy stores it. */
static void add_k_row(uint32_t *k, const int64_t *delta)
{
    int64_t d[K_STORED], room = 0;
    for (int j = 0; j < K_STORED; j++) {
        int64_t v = delta[j < K_ACTIVE ? j : j + 1];
        d[j] = v > 0 ? v : 0;
    }
    for (int j = 0; j < S_BEGUN; j++)
        room += (int64_t)k[j] + d[j];
    for (int j = S_ENDED; j < K_STORED; j++)
        room -= k[j];
    int64_t sum = 0, prev = 0;
    for (int j = S_ENDED; j < K_STORED; j++) {
        sum += d[j];
        int64_t upto = sum < room ? sum : room;
        d[j] = upto - prev;
        prev = upto;
    }
    for (int j = 0; j < K_STORED; j++) {
        int64_t v = (int64_t)k[j] + d[j];
        k[j] = (uint32_t)(v > (int64_t)CONN_MAX ? (int64_t)CONN_MAX : v);
    }
}

/* Whether the non-negative slots are distinct and within rows (else IndexError, -1). */
static int distinct_slots(const int64_t *slots, size_t n, size_t rows)
{
    unsigned char *seen = calloc(rows / 8 + 1, 1);
    if (!seen) {
        PyErr_NoMemory();
        return -1;
    }
    int distinct = 1;
    for (size_t i = 0; i < n; i++) {
        int64_t s = slots[i];
        if (s < 0)
            continue;
        if ((uint64_t)s >= rows) {
            free(seen);
            PyErr_SetString(PyExc_IndexError, "add_k: a slot beyond the records");
            return -1;
        }
        if (seen[s / 8] & (1u << (s % 8)))
            distinct = 0;
        seen[s / 8] |= (unsigned char)(1u << (s % 8));
    }
    free(seen);
    return distinct;
}

/* add_k(k, slots, deltas): Table.add_connections in one pass; False (nothing done)
 * when a slot comes twice (the plain twin sums those first). */
static PyObject *add_k(PyObject *module, PyObject *args)
{
    PyObject *ko, *so, *dob;
    if (!PyArg_ParseTuple(args, "OOO", &ko, &so, &dob))
        return NULL;
    Py_buffer k, slots, deltas;
    if (PyObject_GetBuffer(ko, &k, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    if (PyObject_GetBuffer(so, &slots, PyBUF_C_CONTIGUOUS) < 0) {
        PyBuffer_Release(&k);
        return NULL;
    }
    if (PyObject_GetBuffer(dob, &deltas, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) {
        PyBuffer_Release(&k);
        PyBuffer_Release(&slots);
        return NULL;
    }
    PyObject *out = NULL;
    size_t rows = (size_t)k.len / (K_STORED * sizeof(uint32_t)),
           n = (size_t)slots.len / sizeof(int64_t);
    size_t width = (size_t)deltas.itemsize;
    const char *f = deltas.format;
    int signed_int = f && ((f[0] == 'i' && width == 4) || ((f[0] == 'l' || f[0] == 'q')
                                                           && width == 8)) && !f[1];
    if (k.len % (K_STORED * sizeof(uint32_t)) || slots.len % sizeof(int64_t) || !signed_int
        || (size_t)deltas.len != n * K_WIDTH * width)
        PyErr_SetString(PyExc_ValueError,
                        "add_k: not K columns, int64 slots and K rows of int32 or int64");
    else {
        const int64_t *at = slots.buf;
        const char *d = deltas.buf;
        uint32_t *cols = k.buf;
        int distinct = distinct_slots(at, n, rows);
        for (size_t i = 0; distinct > 0 && i < n; i++) {
            if (i + AHEAD < n && at[i + AHEAD] >= 0)     /* random records: fetch ahead */
                __builtin_prefetch(&cols[(size_t)at[i + AHEAD] * K_STORED], 1);
            int64_t row[K_WIDTH];
            for (int j = 0; j < K_WIDTH; j++) {
                const char *v = d + (i * K_WIDTH + j) * width;
                int32_t v32;
                if (width == sizeof v32) {
                    memcpy(&v32, v, sizeof v32);
                    row[j] = v32;
                } else
                    memcpy(&row[j], v, sizeof row[j]);
            }
            if (at[i] >= 0)
                add_k_row(&cols[(size_t)at[i] * K_STORED], row);
        }
        if (distinct >= 0)
            out = PyBool_FromLong(distinct);
    }
    PyBuffer_Release(&k);
    PyBuffer_Release(&slots);
    PyBuffer_Release(&deltas);
    return out;
}

static PyMethodDef module_methods[] = {
    {"add_k", add_k, METH_VARARGS,
     "add_k(k, slots, deltas) -> bool: K deltas into the records' uint32 K columns "
     "(table.Table.add_connections); False, nothing done, if a slot comes twice."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_conntrack",
    .m_doc = "Connection tracking core (spec 10); see conntrack.py and conntrack_ref.py.",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__conntrack(void)
{
    if (PyType_Ready(&CoreType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    Py_INCREF(&CoreType);
    if (PyModule_AddObject(m, "Core", (PyObject *)&CoreType) < 0
        || PyModule_AddIntConstant(m, "PACKET_SIZE", sizeof(packet_t)) < 0
        || PyModule_AddIntConstant(m, "EVENT_SIZE", sizeof(event_t)) < 0
        || PyModule_AddIntConstant(m, "ENTRY_SIZE", sizeof(entry_t)) < 0
        || PyModule_AddIntConstant(m, "PEER_SIZE", sizeof(peer_t)) < 0
        || PyModule_AddIntConstant(m, "PEER_KEY_SIZE", sizeof(peer_key_t)) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
