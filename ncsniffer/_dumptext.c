/*
 * _dumptext: the Python-format and JSON record lines of a stats file, from one chunk
 * of table.Table.columns(arrays=True): (packed addresses, B, C, E, N, R, S, T, W[, K]).
 *
 * The plain twin is dumpfile.py's formatter (_record_lines: RECORD_LINE(_K) with %);
 * the property tests hold the two byte-identical.  The twin spends 1-2 us a record
 * on Python ints, a tuple and a %-format; here one pass writes one buffer:
 *
 *   - addresses: IPv4 as four decimal octets, IPv6 with inet_ntop (what
 *     socket.inet_ntop calls in the twin);
 *   - numbers: from int64 arrays (or lists of ints); a list's int past 64 bits
 *     (R or W rounded from a huge float) raises OverflowError and the caller
 *     formats that chunk with the twin;
 *   - names: a record without names is "[]"; one with names calls ``dumps`` (the
 *     twin's json.dumps) on a list of them, so escaping is json's own.
 *
 * The text comes back as a str, or (a third argument true) as its UTF-8 bytes,
 * which a stats file is written in: no decoding here and encoding there.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

#define FIELDS 9                /* packed, B, C, E, N, R, S, T, W */
#define K_COUNT 12              /* dumpfile.K_KEYS */
#define ROW_MAX_BYTES 1024      /* a row without its names: an address, 19 keys and numbers */

static const char *const K_KEYS[K_COUNT] = {
    "active", "closed", "evicted", "icmp", "in", "out", "refused", "reset", "tcp",
    "timedout", "udp", "unanswered"};

typedef struct {
    char *buf;
    size_t len, cap;
} out_t;

static int reserve(out_t *o, size_t more)
{
    if (o->len + more <= o->cap)
        return 0;
    size_t cap = o->cap ? o->cap : 1 << 16;
    while (cap < o->len + more)
        cap *= 2;
    char *b = PyMem_Realloc(o->buf, cap);
    if (!b) {
        PyErr_NoMemory();
        return -1;
    }
    o->buf = b;
    o->cap = cap;
    return 0;
}

static void put(out_t *o, const char *s, size_t n)
{
    memcpy(o->buf + o->len, s, n);
    o->len += n;
}

#define PUTS(o, lit) put((o), (lit), sizeof(lit) - 1)

/* A numeric column: a list of ints, or a C-contiguous buffer of int64 (numpy's
 * arrays, read without a Python int per value). */
typedef struct {
    PyObject *list;
    Py_buffer view;
    const long long *data;
    Py_ssize_t len, width;      /* values; per row (1, or 12 for K) */
} col_t;

static int col_open(col_t *c, PyObject *obj, Py_ssize_t width)
{
    c->list = NULL;
    c->data = NULL;
    c->width = width;
    if (PyList_Check(obj)) {
        c->list = obj;
        c->len = PyList_GET_SIZE(obj);
        return 0;
    }
    if (PyObject_GetBuffer(obj, &c->view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
        return -1;
    const char *f = c->view.format ? c->view.format : "B";
    if (c->view.itemsize != 8 || (strcmp(f, "l") && strcmp(f, "q") && strcmp(f, "=q") &&
                                  strcmp(f, "<q") && strcmp(f, "=l") && strcmp(f, "<l")) ||
        c->view.len % (8 * width)) {
        PyBuffer_Release(&c->view);
        PyErr_SetString(PyExc_TypeError, "a column is a list or an int64 array");
        return -1;
    }
    c->data = c->view.buf;
    c->len = c->view.len / (8 * width);
    return 0;
}

static void col_close(col_t *c)
{
    if (c->data)
        PyBuffer_Release(&c->view);
    c->data = NULL;
}

/* Row ``i``'s value ``j`` as a C long long; -1 with an exception set when it is not one. */
static int value(const col_t *c, Py_ssize_t i, Py_ssize_t j, long long *v)
{
    if (c->data) {
        *v = c->data[i * c->width + j];
        return 0;
    }
    PyObject *x = PyList_GET_ITEM(c->list, i);
    if (c->width > 1) {
        if (!PyTuple_Check(x) || PyTuple_GET_SIZE(x) != c->width) {
            PyErr_SetString(PyExc_TypeError, "K must be a tuple of 12 ints");
            return -1;
        }
        x = PyTuple_GET_ITEM(x, j);
    }
    *v = PyLong_AsLongLong(x);
    return (*v == -1 && PyErr_Occurred()) ? -1 : 0;
}

/* "00" to "99": two digits a division. */
static const char PAIRS[201] =
    "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
    "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
    "8081828384858687888990919293949596979899";

/* ``v`` in decimal, as %lld (snprintf costs 60-100 ns a number: most of a row). */
static void number(out_t *o, long long v)
{
    char digits[24], *end = digits + sizeof digits, *p = end;
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    while (u >= 100) {
        const char *pair = PAIRS + 2 * (u % 100);
        u /= 100;
        *--p = pair[1];
        *--p = pair[0];
    }
    if (u >= 10) {
        *--p = PAIRS[2 * u + 1];
        *--p = PAIRS[2 * u];
    } else {
        *--p = (char)('0' + u);
    }
    if (v < 0)
        *--p = '-';
    put(o, p, (size_t)(end - p));
}

/* ``"key": value`` pairs of one row's numbers (``key``: a string literal). */
#define FIELD(o, key, col, i) field((o), (key), sizeof(key) - 1, (col), (i))

static int field(out_t *o, const char *key, size_t key_len, const col_t *col, Py_ssize_t i)
{
    long long v;
    if (value(col, i, 0, &v) < 0)
        return -1;
    put(o, key, key_len);
    number(o, v);
    return 0;
}

static int address(out_t *o, const unsigned char *a, Py_ssize_t width)
{
    if (width == 4) {
        for (int j = 0; j < 4; j++) {
            if (j)
                PUTS(o, ".");
            number(o, a[j]);
        }
        return 0;
    }
    if (!inet_ntop(AF_INET6, a, o->buf + o->len, INET6_ADDRSTRLEN)) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    o->len += strlen(o->buf + o->len);
    return 0;
}

/* What precedes each K value: '{"active": ', ', "closed": ' ... (made at import). */
static char k_lead[K_COUNT][24];
static size_t k_lead_len[K_COUNT];

static void k_leads(void)
{
    for (int j = 0; j < K_COUNT; j++)
        k_lead_len[j] = (size_t)snprintf(k_lead[j], sizeof k_lead[j], "%s\"%s\": ",
                                         j ? ", " : "{", K_KEYS[j]);
}

/* The K dict of a row: K_COUNT ints in K_KEYS order. */
static int kdict(out_t *o, const col_t *k, Py_ssize_t i)
{
    for (int j = 0; j < K_COUNT; j++) {
        long long v;
        if (value(k, i, j, &v) < 0)
            return -1;
        put(o, k_lead[j], k_lead_len[j]);
        number(o, v);
    }
    PUTS(o, "}");
    return 0;
}

/* A row's names: "[]", or ``dumps(list(names))``. */
static int names(out_t *o, PyObject *n, PyObject *dumps)
{
    if (PyObject_Not(n)) {
        PUTS(o, "[]");
        return 0;
    }
    PyObject *list = PySequence_List(n);
    PyObject *text = list ? PyObject_CallOneArg(dumps, list) : NULL;
    Py_XDECREF(list);
    if (!text)
        return -1;
    Py_ssize_t size;
    const char *s = PyUnicode_AsUTF8AndSize(text, &size);
    if (!s || reserve(o, (size_t)size + ROW_MAX_BYTES) < 0) {
        Py_DECREF(text);
        return -1;
    }
    put(o, s, (size_t)size);
    Py_DECREF(text);
    return 0;
}

/* A chunk of table.Table.columns(): the addresses, the numeric columns (index 0 is
 * unused, N is a list), and K when the chunk has it. */
typedef struct {
    Py_buffer packed;
    Py_ssize_t n, width;        /* records; 4 or 16 bytes an address */
    col_t num[FIELDS];          /* B C E at 1-3, R S T W at 5-8 */
    PyObject *names;
    col_t k;
    int has_k;
} chunk_t;

/* One record: "IP": {"B": .., "C": .., "E": ..[, "K": {..}], "N": .., "R": .., ...} */
static int row(out_t *o, const chunk_t *c, Py_ssize_t i, PyObject *dumps)
{
    if (reserve(o, ROW_MAX_BYTES) < 0)
        return -1;
    PUTS(o, "\"");
    if (address(o, (const unsigned char *)c->packed.buf + i * c->width, c->width) < 0)
        return -1;
    PUTS(o, "\": {");
    if (FIELD(o, "\"B\": ", &c->num[1], i) < 0 || FIELD(o, ", \"C\": ", &c->num[2], i) < 0 ||
        FIELD(o, ", \"E\": ", &c->num[3], i) < 0)
        return -1;
    if (c->has_k) {
        PUTS(o, ", \"K\": ");
        if (kdict(o, &c->k, i) < 0)
            return -1;
    }
    PUTS(o, ", \"N\": ");
    if (names(o, PyList_GET_ITEM(c->names, i), dumps) < 0)
        return -1;
    if (FIELD(o, ", \"R\": ", &c->num[5], i) < 0 || FIELD(o, ", \"S\": ", &c->num[6], i) < 0 ||
        FIELD(o, ", \"T\": ", &c->num[7], i) < 0 || FIELD(o, ", \"W\": ", &c->num[8], i) < 0)
        return -1;
    PUTS(o, "}");
    return 0;
}

static void chunk_close(chunk_t *c)
{
    for (int j = 1; j < FIELDS; j++)
        col_close(&c->num[j]);
    col_close(&c->k);
    if (c->packed.obj)
        PyBuffer_Release(&c->packed);
}

/* The chunk's columns, checked: all of one length, packed addresses to match. */
static int chunk_open(chunk_t *c, PyObject *chunk)
{
    memset(c, 0, sizeof *c);
    Py_ssize_t size = PyTuple_Check(chunk) ? PyTuple_GET_SIZE(chunk) : 0;
    if (size != FIELDS && size != FIELDS + 1) {
        PyErr_SetString(PyExc_TypeError, "a chunk is (packed, B, C, E, N, R, S, T, W[, K])");
        return -1;
    }
    c->names = PyTuple_GET_ITEM(chunk, 4);
    if (!PyList_Check(c->names)) {
        PyErr_SetString(PyExc_TypeError, "a chunk's names are a list");
        return -1;
    }
    c->n = PyList_GET_SIZE(c->names);
    c->has_k = size > FIELDS;
    for (int j = 1; j < size; j++) {
        col_t *col = j == FIELDS ? &c->k : &c->num[j];
        if (j == 4)
            continue;
        if (col_open(col, PyTuple_GET_ITEM(chunk, j), j == FIELDS ? K_COUNT : 1) < 0)
            goto fail;
        if (col->len != c->n) {
            PyErr_SetString(PyExc_ValueError, "a chunk's columns are of one length");
            goto fail;
        }
    }
    if (PyObject_GetBuffer(PyTuple_GET_ITEM(chunk, 0), &c->packed, PyBUF_SIMPLE) < 0)
        goto fail;
    c->width = c->n ? c->packed.len / c->n : 4;
    if ((c->width != 4 && c->width != 16) || c->width * c->n != c->packed.len) {
        PyErr_SetString(PyExc_ValueError, "packed addresses: 4 or 16 bytes a record");
        goto fail;
    }
    return 0;
fail:
    chunk_close(c);
    return -1;
}

static PyObject *format_chunk(PyObject *args, const char *end, const char *sep)
{
    PyObject *arg, *dumps;
    int as_bytes = 0;
    if (!PyArg_ParseTuple(args, "OO|p", &arg, &dumps, &as_bytes))
        return NULL;
    chunk_t c;
    if (chunk_open(&c, arg) < 0)
        return NULL;
    out_t o = {NULL, 0, 0};
    size_t tail = strlen(end), between = strlen(sep);
    PyObject *result = NULL;
    for (Py_ssize_t i = 0; i < c.n; i++) {
        if (reserve(&o, between + tail) < 0)
            goto done;
        if (i)
            put(&o, sep, between);
        if (row(&o, &c, i, dumps) < 0 || reserve(&o, tail) < 0)
            goto done;
        put(&o, end, tail);
    }
    result = as_bytes ? PyBytes_FromStringAndSize(o.buf ? o.buf : "", (Py_ssize_t)o.len)
                      : PyUnicode_DecodeUTF8(o.buf ? o.buf : "", (Py_ssize_t)o.len, NULL);
done:
    chunk_close(&c);
    PyMem_Free(o.buf);
    return result;
}

static PyObject *python_lines(PyObject *self, PyObject *args)
{
    return format_chunk(args, ",\n", "");
}

static PyObject *json_lines(PyObject *self, PyObject *args)
{
    return format_chunk(args, "", ",\n");
}

static PyMethodDef methods[] = {
    {"python_lines", python_lines, METH_VARARGS,
     "python_lines(chunk, dumps[, as_bytes]) -> str (or bytes): the Python-format lines "
     "of a columns() chunk, "
     "each ending ',\\n'"},
    {"json_lines", json_lines, METH_VARARGS,
     "json_lines(chunk, dumps[, as_bytes]) -> str (or bytes): the JSON records of a "
     "columns() chunk, "
     "joined by ',\\n'"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_dumptext",
    .m_doc = "The stats file's record lines; see dumpfile.py.",
    .m_size = -1,
    .m_methods = methods,
};

/* The module, with K_KEYS as a tuple: dumpfile.py checks it is its own. */
PyMODINIT_FUNC PyInit__dumptext(void)
{
    k_leads();
    PyObject *m = PyModule_Create(&module);
    PyObject *keys = m ? PyTuple_New(K_COUNT) : NULL;
    for (int j = 0; keys && j < K_COUNT; j++) {
        PyObject *key = PyUnicode_FromString(K_KEYS[j]);
        if (!key) {
            Py_CLEAR(keys);
            break;
        }
        PyTuple_SET_ITEM(keys, j, key);
    }
    if (!keys || PyModule_AddObject(m, "K_KEYS", keys) < 0) {
        Py_XDECREF(keys);
        Py_XDECREF(m);
        return NULL;
    }
    return m;
}
