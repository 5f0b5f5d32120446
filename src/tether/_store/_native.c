/* Tether's native core: cutting a buffer into FastCDC chunks and hashing them
 * with BLAKE3, with the GIL released for the whole buffer.
 *
 * Why: pyfastcdc releases the GIL for each chunk it cuts and takes it back to
 * hand the chunk to Python, and blake3 does the same for each chunk it hashes.
 * A thread that takes the GIL back 13,000 times a GB waits behind any busy
 * Python thread (up to its switch interval each time), so cutting on threads
 * stalled and Tether cut on worker processes instead. Here one call cuts and
 * hashes a whole window (megabytes) without the GIL: threads scale, and the
 * window is read once, into the buffer the pack is written from.
 *
 * The cut is FastCDC 2020 with normalized chunking, exactly as pyfastcdc's
 * (and nlfiedler/fastcdc-rs's) `cut_gear`: the gear tables and masks are
 * passed in from pyfastcdc's own constants (native.py), and
 * tests/test_store_native.py checks every boundary against pyfastcdc on
 * random, repetitive and edited bytes, so chunks, and deduplication against
 * versions logged before, are unchanged.
 *
 * follow() checks a new version of a file against its previous version's chunk
 * records (following.py): each chunk hashed and compared in turn, one call for
 * each stretch that follows, stopping at the first that differs (no batch hashed
 * past a change, none handed between threads).
 *
 * Output: one 40-byte record per chunk, the 32-byte BLAKE3 digest then the
 * chunk's length as a little-endian u64 (chunklist.RECORD's layout).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "blake3.h"

#define RECORD_SIZE 40

typedef struct {
    uint64_t min_size, avg_size, max_size;
    uint64_t mask_s, mask_l, mask_s_ls, mask_l_ls;
    const uint64_t *gear, *gear_ls;
} cut_config;

/* One phase of cut_gear: from `from` to `to`, two bytes a step, against one pair of
 * masks (the stricter one before the average size, the looser after). Returns where
 * to cut, or 0 for nowhere in this phase (a cut is never at 0: from >= 2). */
static inline uint64_t scan(const cut_config *c, const uint8_t *buf, uint64_t *hash,
                            uint64_t from, uint64_t to, uint64_t mask, uint64_t mask_ls)
{
    /* Locals, so the loop keeps them in registers. */
    const uint64_t *gear = c->gear, *gear_ls = c->gear_ls;
    uint64_t h = *hash;
    for (uint64_t pos = from; pos < to; pos += 2) {
        h = (h << 2) + gear_ls[buf[pos]];
        if ((h & mask_ls) == 0)
            return pos;
        h = h + gear[buf[pos + 1]];
        if ((h & mask) == 0)
            return pos + 1;
    }
    *hash = h;
    return 0;
}

/* Where cut_gear looks for the end of a chunk of at most `len` bytes: from `start`
 * to `mid` against the stricter mask, from `mid` to `end` against the looser; a
 * chunk not cut by then is `remaining` bytes long. */
typedef struct {
    uint64_t remaining, start, mid, end;
} scan_bounds;

/* 0 when the chunk is simply all `len` bytes (no longer than the smallest). */
static int bounds_of(const cut_config *c, uint64_t len, scan_bounds *b)
{
    b->remaining = len;
    if (len <= c->min_size)
        return 0;
    uint64_t center = c->avg_size;
    if (b->remaining > c->max_size)
        b->remaining = c->max_size;
    else if (b->remaining < center)
        center = b->remaining;
    b->start = (c->min_size / 2) * 2;
    b->mid = (center / 2) * 2;
    b->end = (b->remaining / 2) * 2;
    return 1;
}

/* The length of the chunk that starts at buf (pyfastcdc's _cut_gear). */
static uint64_t cut_gear(const cut_config *c, const uint8_t *buf, uint64_t len)
{
    scan_bounds b;
    if (!bounds_of(c, len, &b))
        return b.remaining;
    uint64_t hash = 0;
    uint64_t cut = scan(c, buf, &hash, b.start, b.mid, c->mask_s, c->mask_s_ls);
    if (cut == 0)
        cut = scan(c, buf, &hash, b.mid, b.end, c->mask_l, c->mask_l_ls);
    return cut != 0 ? cut : b.remaining;
}

/* Cutting a whole buffer in lanes.
 *
 * cut_gear's hash is a chain: each byte's step waits for the one before, which
 * held the cutter near 1.7 GB/s on one core whatever else the core could do.
 * But a gear hash forgets: with 64-bit arithmetic, a byte 64 or more steps back
 * has been shifted out entirely, so the hash at position p, once the chunk's scan
 * has covered 64 bytes, is the "window hash" H(p) of buf[p-63..p] alone, the same
 * whichever chunk p falls in. So the window hash of every position is computed in
 * LANES independent chains over contiguous stretches (each started 64 bytes early)
 * whose steps the core overlaps, and only the rare positions whose hash could cut
 * (its bits under both masks' common bits are zero: about one in 16,000) are kept.
 * Walking the chunks then needs the exact hash only for the first 64 positions of
 * each chunk's scan (computed directly); after that, a cut is the first kept
 * position that passes the mask in force there. Boundaries are exactly
 * cut_gear's (tests/test_store_native.py compares them with pyfastcdc's). A buffer
 * with too many candidates (a run of one repeated byte can make every position one)
 * is cut the plain way instead. */
#define LANES 4
#define WARM 64
/* Candidates kept per byte, at most: far above random bytes' 1 in 16,000. */
#define CANDIDATE_SHARE 256

typedef struct {
    uint64_t *at;  /* positions, ascending */
    size_t count, cap;
    int overflow;
} candidates;

/* The number of bits set in x (portable: no compiler builtin). */
static int bits_set(uint64_t x)
{
    int n = 0;
    for (; x; x &= x - 1)
        n++;
    return n;
}

/* One position of a lane: its window hash, and the position kept when it could cut;
 * 0 when the lane has no room left for it. */
static inline int lane_step(const uint64_t *gear, uint64_t common, const uint8_t *buf,
                            uint64_t p, uint64_t *h, candidates *lane)
{
    *h = (*h << 1) + gear[buf[p]];
    if ((*h & common) == 0) {
        if (lane->count == lane->cap)
            return 0;
        lane->at[lane->count++] = p;
    }
    return 1;
}

static void find_candidates(const cut_config *c, const uint8_t *buf, uint64_t from,
                            uint64_t to, candidates *out)
{
    const uint64_t *gear = c->gear;
    const uint64_t common = c->mask_s & c->mask_l;
    uint64_t span = (to - from) / LANES;
    uint64_t start[LANES], stop[LANES], h[LANES];
    candidates lane[LANES];
    for (int j = 0; j < LANES; j++) {
        start[j] = from + j * span;
        stop[j] = j == LANES - 1 ? to : start[j] + span;
        h[j] = 0;
        for (uint64_t p = start[j] >= WARM ? start[j] - WARM : 0; p < start[j]; p++)
            h[j] = (h[j] << 1) + gear[buf[p]];
        lane[j].cap = out->cap / LANES + 16;
        lane[j].at = out->at + j * lane[j].cap;
        lane[j].count = 0;
    }
    out->count = 0;
    out->overflow = 0;
    /* All lanes step together while every one has bytes left ... (a lane out of room
     * ends the scan: the buffer is cut the plain way) */
    uint64_t together = span;
    for (uint64_t i = 0; i < together; i++) {
        for (int j = 0; j < LANES; j++)
            if (!lane_step(gear, common, buf, start[j] + i, &h[j], &lane[j]))
                goto overflowed;
    }
    /* ... and the last lane finishes its remainder alone. */
    for (int j = 0; j < LANES; j++) {
        for (uint64_t p = start[j] + together; p < stop[j]; p++)
            if (!lane_step(gear, common, buf, p, &h[j], &lane[j]))
                goto overflowed;
    }
    for (int j = 0; j < LANES; j++) {
        memmove(out->at + out->count, lane[j].at, lane[j].count * sizeof(uint64_t));
        out->count += lane[j].count;
    }
    return;
overflowed:
    out->overflow = 1;
}

/* The window hash of position p (p >= WARM - 1), for a candidate's mask test. */
static inline uint64_t window_hash(const cut_config *c, const uint8_t *buf, uint64_t p)
{
    uint64_t h = 0;
    for (uint64_t q = p + 1 - WARM; q <= p; q++)
        h = (h << 1) + c->gear[buf[q]];
    return h;
}

/* cut_gear's answer for the chunk at `at`, from the candidates (from *next on,
 * which this moves past the ones it has looked at). */
static uint64_t cut_from_candidates(const cut_config *c, const uint8_t *buf, uint64_t at,
                                    uint64_t len, const candidates *found, size_t *next)
{
    scan_bounds b;
    if (!bounds_of(c, len, &b))
        return b.remaining;
    uint64_t remaining = b.remaining, start = b.start, mid = b.mid, end = b.end;
    /* The scan's first WARM positions: its hash there still counts from its start. */
    uint64_t exact_end = start + WARM < end ? start + WARM : end;
    uint64_t h = 0;
    for (uint64_t pos = start; pos < exact_end; pos++) {
        h = (h << 1) + c->gear[buf[at + pos]];
        if ((h & (pos < mid ? c->mask_s : c->mask_l)) == 0)
            return pos;
    }
    size_t i = *next;
    while (i < found->count && found->at[i] < at + exact_end)
        i++;
    for (; i < found->count && found->at[i] < at + end; i++) {
        uint64_t pos = found->at[i] - at;
        uint64_t hp = window_hash(c, buf, found->at[i]);
        if ((hp & (pos < mid ? c->mask_s : c->mask_l)) == 0) {
            *next = i + 1;
            return pos;
        }
    }
    *next = i;
    return remaining;
}

static void put_length(uint8_t *out, uint64_t length)
{
    for (int i = 0; i < 8; i++)
        out[i] = (uint8_t)(length >> (8 * i));
}

static uint64_t get_length(const uint8_t *in)
{
    uint64_t length = 0;
    for (int i = 7; i >= 0; i--)
        length = (length << 8) | in[i];
    return length;
}

static void hash_into(uint8_t *out, const uint8_t *data, size_t length)
{
    blake3_hasher hasher;
    blake3_hasher_init(&hasher);
    blake3_hasher_update(&hasher, data, length);
    blake3_hasher_finalize(&hasher, out, 32);
}

static int table_of(Py_buffer *view, const char *name)
{
    if (view->len != 256 * (Py_ssize_t)sizeof(uint64_t)) {
        PyErr_Format(PyExc_ValueError, "%s must be 256 u64 (2048 bytes)", name);
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(cut_doc,
"cut(buffer, gear, gear_ls, min_size, avg_size, max_size, mask_s, mask_l, keep_last, hash)\n"
"\n"
"The FastCDC chunks of buffer as 40-byte records (BLAKE3 digest, u64 LE length);\n"
"digests are zero unless hash. Unless keep_last, a last chunk that ends only\n"
"because the buffer does is left out (when there is more than one chunk).");

static PyObject *native_cut(PyObject *self, PyObject *args)
{
    Py_buffer data, gear, gear_ls;
    unsigned long long min_size, avg_size, max_size, mask_s, mask_l;
    int keep_last, hash;
    if (!PyArg_ParseTuple(args, "y*y*y*KKKKKpp", &data, &gear, &gear_ls, &min_size,
                          &avg_size, &max_size, &mask_s, &mask_l, &keep_last, &hash))
        return NULL;
    PyObject *result = NULL;
    if (table_of(&gear, "gear") < 0 || table_of(&gear_ls, "gear_ls") < 0)
        goto done;
    if (min_size < 2 || !(min_size <= avg_size && avg_size <= max_size)) {
        PyErr_SetString(PyExc_ValueError, "sizes must satisfy 2 <= min <= avg <= max");
        goto done;
    }
    cut_config config = {
        .min_size = min_size, .avg_size = avg_size, .max_size = max_size,
        .mask_s = mask_s, .mask_l = mask_l, .mask_s_ls = mask_s << 1, .mask_l_ls = mask_l << 1,
        .gear = (const uint64_t *)gear.buf, .gear_ls = (const uint64_t *)gear_ls.buf,
    };
    uint64_t length = (uint64_t)data.len;
    /* Every chunk but the last is at least (min_size / 2) * 2 bytes long (cut_gear's
     * first candidate; min_size - 1 when it is odd), and min_size >= 2. */
    Py_ssize_t most = (Py_ssize_t)(length / ((min_size / 2) * 2) + 2);
    result = PyBytes_FromStringAndSize(NULL, most * RECORD_SIZE);
    if (result == NULL)
        goto done;
    uint8_t *out = (uint8_t *)PyBytes_AS_STRING(result);
    const uint8_t *buf = (const uint8_t *)data.buf;
    Py_ssize_t count = 0;
    /* Candidate positions for the lanes (see find_candidates), when the buffer is
     * worth it; NULL (and the plain cut) for a small one or if memory is short. */
    candidates found = {NULL, 0, 0, 0};
    /* Worth it for a large buffer, and masks whose common bits make candidates rare
     * (64 KiB chunks: 14 bits, one position in 16,000; below about 4 KiB chunks too
     * many positions are candidates to gain anything). */
    if (length >= 16 * (uint64_t)max_size && bits_set(mask_s & mask_l) >= 12) {
        /* Each lane holds cap / LANES + 16: the 16 more each are what is added here. */
        found.cap = (size_t)(length / CANDIDATE_SHARE);
        found.at = PyMem_RawMalloc((found.cap + LANES * 16) * sizeof(uint64_t));
    }
    Py_BEGIN_ALLOW_THREADS
    if (found.at != NULL) {
        find_candidates(&config, buf, 0, length, &found);
        if (found.overflow) {
            PyMem_RawFree(found.at);
            found.at = NULL;
        }
    }
    uint64_t offset = 0;
    size_t next = 0;
    while (offset < length) {
        uint64_t size = found.at != NULL
            ? cut_from_candidates(&config, buf, offset, length - offset, &found, &next)
            : cut_gear(&config, buf + offset, length - offset);
        if (!keep_last && count > 0 && offset + size >= length)
            break; /* the last chunk ends only because the buffer does: not hashed */
        uint8_t *record = out + count * RECORD_SIZE;
        if (hash)
            hash_into(record, buf + offset, (size_t)size);
        else
            memset(record, 0, 32);
        put_length(record + 32, size);
        count++;
        offset += size;
    }
    Py_END_ALLOW_THREADS
    PyMem_RawFree(found.at);
    if (_PyBytes_Resize(&result, count * RECORD_SIZE) < 0)
        result = NULL;
done:
    PyBuffer_Release(&data);
    PyBuffer_Release(&gear);
    PyBuffer_Release(&gear_ls);
    return result;
}

PyDoc_STRVAR(hash_spans_doc,
"hash_spans(buffer, spans) -> bytes\n"
"\n"
"The 32-byte BLAKE3 digest of each span of buffer, one after another; spans is\n"
"a buffer of u64 (offset, length) pairs in native byte order.");

static PyObject *native_hash_spans(PyObject *self, PyObject *args)
{
    Py_buffer data, spans;
    if (!PyArg_ParseTuple(args, "y*y*", &data, &spans))
        return NULL;
    PyObject *result = NULL;
    if (spans.len % 16 != 0) {
        PyErr_SetString(PyExc_ValueError, "spans must be u64 (offset, length) pairs");
        goto done;
    }
    Py_ssize_t count = spans.len / 16;
    /* A private copy, checked and then used without the GIL: another thread could
     * change the caller's buffer in between. */
    uint64_t *pairs = PyMem_Malloc(count > 0 ? (size_t)spans.len : 1);
    if (pairs == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    memcpy(pairs, spans.buf, (size_t)spans.len);
    for (Py_ssize_t i = 0; i < count; i++) {
        uint64_t offset = pairs[2 * i], size = pairs[2 * i + 1];
        if (offset > (uint64_t)data.len || size > (uint64_t)data.len - offset) {
            PyErr_Format(PyExc_ValueError, "span %zd (%llu + %llu) is past the buffer's %zd bytes",
                         i, (unsigned long long)offset, (unsigned long long)size, data.len);
            goto free_pairs;
        }
    }
    result = PyBytes_FromStringAndSize(NULL, count * 32);
    if (result == NULL)
        goto free_pairs;
    uint8_t *out = (uint8_t *)PyBytes_AS_STRING(result);
    const uint8_t *buf = (const uint8_t *)data.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < count; i++)
        hash_into(out + 32 * i, buf + pairs[2 * i], (size_t)pairs[2 * i + 1]);
    Py_END_ALLOW_THREADS
free_pairs:
    PyMem_Free(pairs);
done:
    PyBuffer_Release(&data);
    PyBuffer_Release(&spans);
    return result;
}

PyDoc_STRVAR(follow_doc,
"follow(buffer, offset, records, first, longest) -> bytes\n"
"\n"
"The records (40 bytes each, as cut's) of the chunks of buffer from offset on that\n"
"are, one after another, the chunks described by records from record first on:\n"
"each is hashed and compared with its record's digest, stopping at the first that\n"
"differs, does not fit in buffer, or has a length of 0 or over longest. What is\n"
"returned is what was hashed, not read back from records.");

static PyObject *native_follow(PyObject *self, PyObject *args)
{
    Py_buffer data, records;
    Py_ssize_t offset, first, longest;
    if (!PyArg_ParseTuple(args, "y*ny*nn", &data, &offset, &records, &first, &longest))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t count = records.len / RECORD_SIZE;
    if (records.len % RECORD_SIZE != 0) {
        PyErr_SetString(PyExc_ValueError, "records must be 40 bytes each");
        goto done;
    }
    if (offset < 0 || offset > data.len || first < 0 || first > count || longest < 1) {
        PyErr_Format(PyExc_ValueError, "offset %zd or first %zd is outside the buffer "
                     "(%zd bytes) or the records (%zd), or longest %zd is not positive",
                     offset, first, data.len, count, longest);
        goto done;
    }
    const uint8_t *buf = (const uint8_t *)data.buf, *rec = (const uint8_t *)records.buf;
    uint64_t length = (uint64_t)data.len;
    /* The records matched, grown as they come (a hostile hint of tiny chunks must not
     * make this allocate for every record up front). */
    size_t room = 256, matched = 0;
    uint8_t *out = malloc(room * RECORD_SIZE);
    if (out == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    int failed = 0;
    Py_BEGIN_ALLOW_THREADS
    uint64_t at = (uint64_t)offset;
    uint8_t expected[32];
    for (Py_ssize_t i = first; i < count; i++) {
        /* Each record read once, into locals: another thread may change the buffer. */
        const uint8_t *record = rec + i * RECORD_SIZE;
        memcpy(expected, record, 32);
        uint64_t size = get_length(record + 32);
        if (size == 0 || size > (uint64_t)longest || size > length - at)
            break;
        if (matched == room) {
            uint8_t *more = realloc(out, 2 * room * RECORD_SIZE);
            if (more == NULL) {
                failed = 1;
                break;
            }
            out = more;
            room *= 2;
        }
        uint8_t *mine = out + matched * RECORD_SIZE;
        hash_into(mine, buf + at, (size_t)size);
        if (memcmp(mine, expected, 32) != 0)
            break;
        put_length(mine + 32, size);
        matched++;
        at += size;
    }
    Py_END_ALLOW_THREADS
    if (failed)
        PyErr_NoMemory();
    else
        result = PyBytes_FromStringAndSize((const char *)out, (Py_ssize_t)(matched * RECORD_SIZE));
    free(out);
done:
    PyBuffer_Release(&data);
    PyBuffer_Release(&records);
    return result;
}

/* -- a BLAKE3 hasher fed many buffers per call ------------------------------------
 *
 * blake3's Python hasher releases the GIL for each update and takes it back after:
 * a load that hashes its file a chunk at a time (13,000 updates a GB) beside a busy
 * Python thread waited for the GIL after every one (8,000 updates of 64 KB: 0.09 s
 * alone, 3.1 s beside a thread running Python). update_many takes a run's chunks
 * in one call and releases the GIL once. */

typedef struct {
    PyObject_HEAD
    blake3_hasher state;
    int busy; /* an update runs without the GIL: the state is not to be touched */
} Hasher;

/* A new hasher is ready to use whether or not __init__ runs (Hasher.__new__(Hasher)
 * alone used to leave a zeroed state, which hashed to wrong digests). */
static PyObject *hasher_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    Hasher *self = (Hasher *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    blake3_hasher_init(&self->state);
    self->busy = 0;
    return (PyObject *)self;
}

static int hasher_claim(Hasher *self)
{
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "this hasher is being updated by another thread");
        return -1;
    }
    self->busy = 1;
    return 0;
}

static int hasher_init(Hasher *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "", kwlist))
        return -1;
    if (hasher_claim(self) < 0)
        return -1;
    blake3_hasher_init(&self->state);
    self->busy = 0;
    return 0;
}

static PyObject *hasher_update_many(Hasher *self, PyObject *pieces)
{
    PyObject *seq = PySequence_Fast(pieces, "update_many takes a sequence of buffers");
    if (seq == NULL)
        return NULL;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    Py_buffer *views = PyMem_Calloc(count > 0 ? (size_t)count : 1, sizeof(Py_buffer));
    if (views == NULL) {
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    PyObject *result = NULL;
    Py_ssize_t got = 0;
    for (; got < count; got++)
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(seq, got), &views[got], PyBUF_SIMPLE) < 0)
            goto release;
    if (hasher_claim(self) < 0)
        goto release;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < count; i++)
        blake3_hasher_update(&self->state, views[i].buf, (size_t)views[i].len);
    Py_END_ALLOW_THREADS
    self->busy = 0;
    result = Py_NewRef(Py_None);
release:
    for (Py_ssize_t i = 0; i < got; i++)
        PyBuffer_Release(&views[i]);
    PyMem_Free(views);
    Py_DECREF(seq);
    return result;
}

static PyObject *hasher_update(Hasher *self, PyObject *piece)
{
    PyObject *one = PyTuple_Pack(1, piece);
    if (one == NULL)
        return NULL;
    PyObject *result = hasher_update_many(self, one);
    Py_DECREF(one);
    return result;
}

static PyObject *hasher_digest(Hasher *self, PyObject *unused)
{
    if (hasher_claim(self) < 0)
        return NULL;
    uint8_t out[32];
    blake3_hasher_finalize(&self->state, out, 32); /* leaves the state as it was */
    self->busy = 0;
    return PyBytes_FromStringAndSize((const char *)out, 32);
}

static PyObject *hasher_hexdigest(Hasher *self, PyObject *unused)
{
    PyObject *raw = hasher_digest(self, NULL);
    if (raw == NULL)
        return NULL;
    PyObject *hex = PyObject_CallMethod(raw, "hex", NULL);
    Py_DECREF(raw);
    return hex;
}

static PyMethodDef hasher_methods[] = {
    {"update", (PyCFunction)hasher_update, METH_O, "Hash one more buffer (the GIL released)."},
    {"update_many", (PyCFunction)hasher_update_many, METH_O,
     "Hash each buffer of a sequence, in order, releasing the GIL once."},
    {"digest", (PyCFunction)hasher_digest, METH_NOARGS, "The 32-byte digest so far."},
    {"hexdigest", (PyCFunction)hasher_hexdigest, METH_NOARGS, "The digest so far, as hex."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject HasherType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tether._store._native.Hasher",
    .tp_doc = "BLAKE3 of everything given to update or update_many, in order.",
    .tp_basicsize = sizeof(Hasher),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = hasher_new,
    .tp_init = (initproc)hasher_init,
    .tp_methods = hasher_methods,
};

PyDoc_STRVAR(gather_doc,
"gather(dest, offset, pieces) -> int\n"
"\n"
"Copy the buffers of the list pieces one after another into the writable buffer\n"
"dest from offset on, in one call without the GIL (pack_file.py copies every new\n"
"chunk so); returns the bytes copied. They must fit.");

static PyObject *native_gather(PyObject *self, PyObject *args)
{
    Py_buffer dest;
    Py_ssize_t offset;
    PyObject *pieces;
    if (!PyArg_ParseTuple(args, "w*nO!", &dest, &offset, &PyList_Type, &pieces))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t count = PyList_GET_SIZE(pieces), held = 0, total = 0;
    Py_buffer *views = PyMem_Calloc(count > 0 ? (size_t)count : 1, sizeof(Py_buffer));
    if (views == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (; held < count; held++) {
        if (PyObject_GetBuffer(PyList_GET_ITEM(pieces, held), &views[held],
                               PyBUF_C_CONTIGUOUS) < 0)
            goto release;
        total += views[held].len;
    }
    if (offset < 0 || offset > dest.len || total > dest.len - offset) {
        PyErr_Format(PyExc_ValueError, "%zd bytes at %zd do not fit a buffer of %zd",
                     total, offset, dest.len);
        goto release;
    }
    Py_BEGIN_ALLOW_THREADS
    /* Pieces that follow each other in memory (a window's new chunks, back to back)
     * are copied as one: a copy of megabytes runs faster than the same bytes in
     * 64 KiB pieces (the C library streams a large one past the cache). */
    uint8_t *at = (uint8_t *)dest.buf + offset;
    Py_ssize_t i = 0;
    while (i < count) {
        const uint8_t *from = (const uint8_t *)views[i].buf;
        size_t run = (size_t)views[i].len;
        for (i++; i < count && (const uint8_t *)views[i].buf == from + run; i++)
            run += (size_t)views[i].len;
        memcpy(at, from, run);
        at += run;
    }
    Py_END_ALLOW_THREADS
    result = PyLong_FromSsize_t(total);
release:
    for (Py_ssize_t i = 0; i < held; i++)
        PyBuffer_Release(&views[i]);
    PyMem_Free(views);
done:
    PyBuffer_Release(&dest);
    return result;
}

static PyMethodDef methods[] = {
    {"cut", native_cut, METH_VARARGS, cut_doc},
    {"gather", native_gather, METH_VARARGS, gather_doc},
    {"hash_spans", native_hash_spans, METH_VARARGS, hash_spans_doc},
    {"follow", native_follow, METH_VARARGS, follow_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "tether._store._native",
    "FastCDC cutting and BLAKE3 hashing of whole buffers without the GIL (see native.py).",
    -1, methods,
};

PyMODINIT_FUNC PyInit__native(void)
{
    if (PyType_Ready(&HasherType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Hasher", (PyObject *)&HasherType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
