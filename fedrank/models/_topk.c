/* A supermask layer's masked weight and rank vector, compiled (optional:
 * fedrank/models/topk.py does the same in torch where this module was not built, or off
 * the CPU).
 *
 * masked_update(scores, weight, out, status, keep, threshold, density)
 *     -> (threshold, density, changed) | None
 *
 * scores, weight and out are C-contiguous float32 buffers of n entries, status n bytes
 * (1: kept). out and status agree on entry (out = status * weight) and are kept so: the
 * call makes them the mask of the keep highest-ranked scores, scores ranked by value
 * (-0.0 equal to +0.0), ties by index, the higher index ranking higher (the order of a
 * rank vector), rewriting only the blocks of 64 entries where a status changed. A NaN
 * score is never kept, as in the torch path.
 *
 * threshold is remembered from the last call (about keep scores lie above it) and
 * density the number of scores per unit of score near it. One pass reads the scores and
 * statuses: it counts the scores above the threshold, rewrites the blocks where one
 * crossed it, and notes the blocks holding a score within about 64 scores of it. When d
 * more (or fewer) than keep lie above, only the |d| nearest the threshold on that side
 * change status: they are found among the noted blocks (or, when those hold too few, in
 * wider bands over the layer), selected by rank and flipped. The answer never depends on
 * the threshold, only the time it takes: the call returns the next threshold and density
 * and how many entries changed, or None when no band held enough scores (the caller then
 * sorts the layer).
 *
 * rank_vector(scores, ranks): the rank of each float32 score into an int64 buffer, 0 the
 * lowest, ties by index: a radix sort of order keys.
 *
 * The GIL is released while the kernels run.
 */
#include "../_buffer.h"
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* A score's place in rank order: its order key made unsigned (high 32 bits), then its
 * index (low 32 bits; layers hold fewer than 2**32 edges). */
typedef uint64_t Entry;

static inline int32_t order_key(float score)
{
    float normal = score + 0.0f; /* -0.0 becomes +0.0 */
    int32_t bits;
    memcpy(&bits, &normal, sizeof bits);
    return bits ^ (int32_t)((uint32_t)(bits >> 31) >> 1); /* negatives: flip 31 low bits */
}

/* The order key made unsigned: the same order, as an unsigned integer (radix digits). */
static inline uint32_t unsigned_key(float score)
{
    return (uint32_t)order_key(score) ^ UINT32_C(0x80000000);
}

static inline Entry entry(float score, Py_ssize_t index)
{
    return (uint64_t)unsigned_key(score) << 32 | (uint64_t)index;
}

static inline Py_ssize_t index_of(Entry e) { return (Py_ssize_t)(e & UINT32_MAX); }

static inline float value_of(Entry e)
{
    const int32_t key = (int32_t)((uint32_t)(e >> 32) ^ UINT32_C(0x80000000));
    const int32_t bits = key ^ (int32_t)((uint32_t)(key >> 31) >> 1);
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

/* Reorder a[0..n) so that a[k] is the entry of rank k, none above it before it and none
 * below it after it (Hoare's selection, middle pivot). */
static void select_nth(Entry *a, Py_ssize_t n, Py_ssize_t k)
{
    Py_ssize_t low = 0, high = n - 1;
    while (low < high) {
        const Entry pivot = a[low + (high - low) / 2];
        Py_ssize_t i = low, j = high;
        while (i <= j) {
            while (a[i] < pivot)
                i++;
            while (a[j] > pivot)
                j--;
            if (i <= j) {
                const Entry swap = a[i];
                a[i++] = a[j];
                a[j--] = swap;
            }
        }
        if (k <= j)
            high = j;
        else if (k >= i)
            low = i;
        else
            return;
    }
}

static inline int in_band(float score, float low, float high)
{
    return (score > low) & (score <= high);
}

#define BLOCK 64

/* The hot loops are compiled for AVX2 too where the compiler and loader can pick a
 * version at load time (GCC or Clang, glibc, x86-64); elsewhere for the base target. */
#if defined(__x86_64__) && defined(__GLIBC__) && (defined(__GNUC__) || defined(__clang__))
#define HOT __attribute__((target_clones("avx2", "default")))
#else
#define HOT
#endif

/* Whether any of the len scores from p lies in (low, high], without a branch per score
 * (a branch would be mispredicted for the half of them on the band's side). */
static inline int any_in_band(const float *p, int len, float low, float high)
{
    int hit = 0;
    for (int j = 0; j < len; j++)
        hit |= in_band(p[j], low, high);
    return hit;
}

/* Scores in (low, high], as entries, into band (capacity entries at most); their count.
 * Searched: the blocks of BLOCK scores starting at blocks[0..count), or every block when
 * blocks is NULL. Few scores lie in the band: a block is read twice only when it holds
 * one. */
HOT static Py_ssize_t gather(const float *scores, Py_ssize_t n, const Py_ssize_t *blocks,
                             Py_ssize_t count, float low, float high, Entry *band,
                             Py_ssize_t capacity)
{
    Py_ssize_t size = 0;
    if (blocks == NULL)
        count = (n + BLOCK - 1) / BLOCK;
    for (Py_ssize_t b = 0; b < count; b++) {
        const Py_ssize_t start = blocks == NULL ? b * BLOCK : blocks[b];
        const int len = n - start > BLOCK ? BLOCK : (int)(n - start);
        const float *p = scores + start;
        if (!(len == BLOCK ? any_in_band(p, BLOCK, low, high) : any_in_band(p, len, low, high)))
            continue;
        for (int j = 0; j < len; j++) {
            if (in_band(p[j], low, high)) {
                if (size < capacity)
                    band[size] = entry(p[j], start + j);
                size++;
            }
        }
    }
    return size;
}

/* gather, with band grown to hold them all; -1 when out of memory. */
static Py_ssize_t gather_all(const float *scores, Py_ssize_t n, const Py_ssize_t *blocks,
                             Py_ssize_t count, float low, float high, Entry **band,
                             Py_ssize_t *capacity)
{
    Py_ssize_t size = gather(scores, n, blocks, count, low, high, *band, *capacity);
    if (size > *capacity) {
        Entry *bigger = realloc(*band, (size_t)size * sizeof(Entry));
        if (bigger == NULL)
            return -1;
        *band = bigger;
        *capacity = size;
        size = gather(scores, n, blocks, count, low, high, *band, *capacity);
    }
    return size;
}

/* The mask of len scores from s against t, beside their status (1 kept, 0 not): how many
 * lie above t; *changed set when one's status is no longer right, *hit when one lies in
 * the band (low, high]. Reads scores and status only, vectorised. */
static inline int scan_block(const float *s, const uint8_t *status, int len, float t,
                             float low, float high, int *changed, int *hit)
{
    int kept_here = 0, diff = 0, band = 0;
    for (int j = 0; j < len; j++) {
        const int kept = s[j] > t;
        kept_here += kept;
        diff |= kept ^ status[j];
        band |= in_band(s[j], low, high);
    }
    *changed = diff;
    *hit = band;
    return kept_here;
}

/* One entry's new status, and out with it: the torch path's mask * weight, bit for bit
 * (0 times a negative weight is -0.0). */
static inline void set_status(Py_ssize_t i, int kept, const float *weight, float *out,
                              uint8_t *status)
{
    status[i] = (uint8_t)kept;
    out[i] = (kept ? 1.0f : 0.0f) * weight[i];
}

/* Status and out of len entries from s set against t; the number that changed. */
static inline int rewrite_block(const float *s, const float *w, float *o, uint8_t *status,
                                int len, float t)
{
    int changed = 0;
    for (int j = 0; j < len; j++) {
        const int kept = s[j] > t;
        changed += kept ^ status[j];
        set_status(j, kept, w, o, status);
    }
    return changed;
}

/* The first pass: the count of scores above t, status and out set to match them where
 * they changed (*flips counts those), and the blocks holding a score in (low, high] (the
 * band a few changes of status usually stay in). */
HOT static Py_ssize_t scan_above(const float *scores, const float *weight, float *out,
                                 uint8_t *status, Py_ssize_t n, float t, float low, float high,
                                 Py_ssize_t *blocks, Py_ssize_t *count, Py_ssize_t *flips)
{
    Py_ssize_t above = 0;
    *count = 0;
    for (Py_ssize_t start = 0; start < n; start += BLOCK) {
        const int len = n - start > BLOCK ? BLOCK : (int)(n - start);
        const float *s = scores + start;
        int changed, hit;
        above += len == BLOCK ? scan_block(s, status + start, BLOCK, t, low, high, &changed, &hit)
                              : scan_block(s, status + start, len, t, low, high, &changed, &hit);
        if (hit)
            blocks[(*count)++] = start;
        if (changed) /* a few entries changed: rewrite the block, without a branch */
            *flips += len == BLOCK ? rewrite_block(s, weight + start, out + start, status + start,
                                                   BLOCK, t)
                                   : rewrite_block(s, weight + start, out + start, status + start,
                                                   len, t);
    }
    return above;
}

/* 1: done (threshold, density, flips updated); 0: no band held enough scores; -1: out of
 * memory. */
static int update_masked(const float *scores, const float *weight, float *out, uint8_t *status,
                         Py_ssize_t n, Py_ssize_t keep, float *threshold, double *density,
                         Py_ssize_t *flips)
{
    const float t = *threshold;
    double width = 64.0 / *density; /* each side: about 64 scores */
    Py_ssize_t *blocks = malloc((size_t)(n / BLOCK + 1) * sizeof(Py_ssize_t));
    Py_ssize_t capacity = 1024;
    Entry *band = malloc((size_t)capacity * sizeof(Entry));
    if (blocks == NULL || band == NULL) {
        free(blocks);
        free(band);
        return -1;
    }
    Py_ssize_t hits;
    *flips = 0;
    const Py_ssize_t above = scan_above(scores, weight, out, status, n, t, (float)(t - width),
                                        (float)(t + width), blocks, &hits, flips);
    const Py_ssize_t excess = above - keep, need = excess > 0 ? excess : -excess;
    Py_ssize_t size = 0;
    /* Their side of the band: from the first pass's blocks, then wider over the layer. */
    for (int attempt = 0; excess != 0 && attempt < 4; attempt++) {
        if (attempt > 0) { /* four times wider, and at least about 2 need + 64 scores */
            const double enough = (2.0 * (double)need + 64.0) / *density;
            width = attempt == 1 && enough > 4.0 * width ? enough : 4.0 * width;
        }
        const float low = excess > 0 ? t : (float)(t - width);
        const float high = excess > 0 ? (float)(t + width) : t;
        size = gather_all(scores, n, attempt == 0 ? blocks : NULL, hits, low, high, &band,
                          &capacity);
        if (size < 0) {
            free(blocks);
            free(band);
            return -1;
        }
        *density = (double)(size > 0 ? size : 1) / width;
        if (size >= need)
            break;
    }
    free(blocks);
    if (size < need) {
        free(band);
        return 0;
    }
    if (excess > 0) { /* the need lowest-ranked of the band leave the mask */
        select_nth(band, size, need - 1);
        for (Py_ssize_t j = 0; j < need; j++)
            set_status(index_of(band[j]), 0, weight, out, status);
        *threshold = value_of(band[need - 1]);
    } else if (excess < 0) { /* the need highest-ranked of the band join it */
        select_nth(band, size, size - need);
        for (Py_ssize_t j = size - need; j < size; j++)
            set_status(index_of(band[j]), 1, weight, out, status);
        Entry below = 0; /* the highest-ranked left out: the next threshold */
        for (Py_ssize_t j = 0; j < size - need; j++)
            below = band[j] > below ? band[j] : below;
        *threshold = size > need ? value_of(below) : (float)(t - width);
    }
    *flips += need;
    free(band);
    return 1;
}

/* Rank vector: an LSD radix sort of the scores' order keys, made unsigned, with their
 * indices; stable, so equal keys keep index order. Two 16-bit digits for long layers,
 * four 8-bit ones for short layers (whose 65,536 buckets would cost more than the
 * sort); digits that all keys share are skipped. ranks[index] = position. 0, or -1
 * when out of memory. */
static int rank_scores(const float *scores, int64_t *ranks, Py_ssize_t n)
{
    const int bits = n >= 65536 ? 16 : 8, digits = 32 / bits;
    const uint32_t buckets = UINT32_C(1) << bits, last = buckets - 1;
    uint32_t *keys = malloc((size_t)n * 2 * sizeof(uint32_t));
    uint32_t *index = malloc((size_t)n * 2 * sizeof(uint32_t));
    uint32_t *counts = calloc((size_t)digits * buckets, sizeof(uint32_t));
    if (keys == NULL || index == NULL || counts == NULL) {
        free(keys);
        free(index);
        free(counts);
        return -1;
    }
    uint32_t *key_in = keys, *key_out = keys + n, *index_in = index, *index_out = index + n;
    for (Py_ssize_t i = 0; i < n; i++) {
        const uint32_t key = unsigned_key(scores[i]);
        key_in[i] = key;
        index_in[i] = (uint32_t)i;
        for (int d = 0; d < digits; d++)
            counts[(uint32_t)d * buckets + ((key >> (d * bits)) & last)]++;
    }
    for (int d = 0; d < digits; d++) {
        const int shift = d * bits;
        uint32_t *count = counts + (uint32_t)d * buckets;
        if (count[(key_in[0] >> shift) & last] == (uint32_t)n)
            continue; /* one bucket holds every key: this digit orders nothing */
        uint32_t start = 0;
        for (uint32_t b = 0; b < buckets; b++) {
            const uint32_t here = count[b];
            count[b] = start;
            start += here;
        }
        for (Py_ssize_t i = 0; i < n; i++) {
            const uint32_t to = count[(key_in[i] >> shift) & last]++;
            key_out[to] = key_in[i];
            index_out[to] = index_in[i];
        }
        uint32_t *swap = key_in;
        key_in = key_out;
        key_out = swap;
        swap = index_in;
        index_in = index_out;
        index_out = swap;
    }
    for (Py_ssize_t p = 0; p < n; p++)
        ranks[index_in[p]] = p;
    free(keys);
    free(index);
    free(counts);
    return 0;
}

static PyObject *rank_vector(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *scores_object, *ranks_object;
    if (!PyArg_ParseTuple(args, "OO:rank_vector", &scores_object, &ranks_object))
        return NULL;
    Py_buffer scores, ranks;
    if (typed_buffer(scores_object, &scores, "scores", "float32", "f", 4, 0, 0) != 0)
        return NULL;
    if (typed_buffer(ranks_object, &ranks, "ranks", "int64", "ql", 8, 0, 1) != 0) {
        PyBuffer_Release(&scores);
        return NULL;
    }
    const Py_ssize_t n = scores.len / 4;
    int done = 0;
    if (ranks.len / 8 != n || n < 1 || (uint64_t)n > UINT32_MAX) {
        PyErr_Format(PyExc_ValueError, "scores and ranks: expected the same size in [1, 2**32), "
                     "got %zd and %zd entries", n, ranks.len / 8);
        done = -1;
    } else {
        Py_BEGIN_ALLOW_THREADS
        done = rank_scores(scores.buf, ranks.buf, n);
        Py_END_ALLOW_THREADS
        if (done < 0)
            PyErr_NoMemory();
    }
    PyBuffer_Release(&scores);
    PyBuffer_Release(&ranks);
    if (done < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *masked_update(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *objects[4];
    Py_ssize_t keep;
    double threshold, density;
    if (!PyArg_ParseTuple(args, "OOOOndd:masked_update", &objects[0], &objects[1], &objects[2],
                          &objects[3], &keep, &threshold, &density))
        return NULL;
    static const char *names[4] = {"scores", "weight", "out", "status"};
    Py_buffer views[4];
    int held = 0;
    for (; held < 4; held++) {
        const int floats = held < 3, writable = held >= 2;
        if (typed_buffer(objects[held], &views[held], names[held], floats ? "float32" : "uint8",
                         floats ? "f" : "B?", floats ? 4 : 1, 0, writable) != 0)
            break;
    }
    PyObject *result = NULL;
    const Py_ssize_t n = held == 4 ? views[0].len / 4 : 0;
    if (held < 4) {
        /* the buffer error is set */
    } else if (views[1].len / 4 != n || views[2].len / 4 != n || views[3].len != n) {
        PyErr_Format(PyExc_ValueError, "scores, weight, out and status must have the same "
                     "number of entries, got %zd, %zd, %zd and %zd bytes", views[0].len,
                     views[1].len, views[2].len, views[3].len);
    } else if (keep < 1 || keep > n || !(density > 0.0) || (uint64_t)n > UINT32_MAX) {
        PyErr_Format(PyExc_ValueError, "keep must lie in [1, %zd] and density be positive, for "
                     "fewer than 2**32 scores, got %zd and %g", n, keep, density);
    } else {
        float t = (float)threshold;
        Py_ssize_t flips = 0;
        int done;
        Py_BEGIN_ALLOW_THREADS
        done = update_masked(views[0].buf, views[1].buf, views[2].buf, views[3].buf, n, keep,
                             &t, &density, &flips);
        Py_END_ALLOW_THREADS
        if (done < 0)
            PyErr_NoMemory();
        else if (done == 0)
            result = Py_NewRef(Py_None);
        else
            result = Py_BuildValue("(ddn)", (double)t, density, flips);
    }
    for (int i = 0; i < held; i++)
        PyBuffer_Release(&views[i]);
    return result;
}

static PyMethodDef methods[] = {
    {"rank_vector", rank_vector, METH_VARARGS,
     "rank_vector(scores, ranks, /)\n--\n\nWrite into the int64 buffer ranks the rank of each "
     "float32 score, 0 the lowest, ties by index (a stable sort's positions)."},
    {"masked_update", masked_update, METH_VARARGS,
     "masked_update(scores, weight, out, status, keep, threshold, density, /)\n--\n\nUpdate "
     "status (one byte an entry: 1 kept) and out (weight where kept, 0 elsewhere) where the "
     "keep highest-ranked scores changed; return the next (threshold, density) and the "
     "number of entries changed, or None when no band held enough scores."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_topk",
    "A supermask layer's masked weight and rank vector, compiled.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__topk(void) { return PyModule_Create(&module); }
